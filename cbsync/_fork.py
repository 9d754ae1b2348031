"""Fork safety: rebuild per-process resources in a forked child.

Pre-fork servers (gunicorn with ``preload_app``, uWSGI without ``lazy-apps``,
Celery prefork, ``multiprocessing`` with the fork start method) copy every
object into each child.  Two things do not survive the copy: a lock held by a
thread of the parent stays locked forever in the child (that thread does not
exist there), and background threads are not copied at all.

An object owning such resources keeps a :class:`ForkGuard` and calls
``guard.check()`` at the top of each path that takes its lock or relies on its
threads.  ``check()`` costs one ``os.getpid()``; in a forked child it calls the
owner's rebuild function once (exactly once even when several threads of the
child race to it), which replaces locks with fresh ones and forgets the
parent's threads so that they are started again lazily::

    class Registry:
        def __init__(self):
            self._lock = threading.Lock()
            self._fork = ForkGuard(self._after_fork)

        def _after_fork(self):
            self._lock = threading.Lock()

        def get(self, name):
            self._fork.check()
            with self._lock:
                ...

Two ways of noticing a fork:

* ``os.register_at_fork(after_in_child=...)`` runs right after ``os.fork()``
  while the child has a single thread: every live guard is checked there, so
  the child is rebuilt before it runs anything else.  This is only a fast
  path.
* uWSGI forks from C and does not run those hooks unless told to
  (``py-call-osafterfork``), and neither does any C extension calling
  ``fork()``; ``check()``'s pid comparison catches those on first use.

Never call ``check()`` on a path that must stay lock-free and cheap (a
breaker's CLOSED success): a path that takes no lock cannot deadlock on a
copied lock in the first place.

What a child keeps is its owner's business; a breaker keeps its state and
counts (see ``CircuitBreaker._after_fork``).
"""

import logging
import os
import threading
import weakref
from typing import Callable, Dict, Optional

logger = logging.getLogger("cbsync")

_getpid = os.getpid

#: Every live guard, checked by the at-fork hook.
_guards: "weakref.WeakSet[ForkGuard]" = weakref.WeakSet()
#: One rebuild lock per process.  ``dict.setdefault`` is atomic, so the threads
#: of a child that race to rebuild all get the same lock without needing a lock
#: of their own (which could itself be a copy held by a vanished thread).
_rebuild_locks: Dict[int, "threading.RLock"] = {}


def _rebuild_lock(pid: int) -> "threading.RLock":
    lock = _rebuild_locks.get(pid)
    if lock is None:
        lock = _rebuild_locks.setdefault(pid, threading.RLock())
        for other in list(_rebuild_locks):
            if other != pid:
                _rebuild_locks.pop(other, None)
    return lock


class ForkGuard:
    """Calls ``rebuild()`` once in each forked child before the owner's next use.

    ``rebuild`` is usually a bound method of the owner; the guard keeps only a
    weak reference to the owner, so it never keeps it alive.  ``pid`` is the
    process the owner's resources belong to (read it to inline the check on a
    path where a method call is too costly).
    """

    __slots__ = ("__weakref__", "_rebuild", "pid")

    def __init__(self, rebuild: Callable[[], None]) -> None:
        self.pid = _getpid()
        if hasattr(rebuild, "__self__") and hasattr(rebuild, "__func__"):
            method = weakref.WeakMethod(rebuild)
            self._rebuild: Callable[[], Optional[Callable[[], None]]] = method
        else:
            self._rebuild = lambda: rebuild
        _guards.add(self)

    def check(self) -> bool:
        """Rebuild the owner if this is a forked child; return whether it did."""
        if self.pid == _getpid():
            return False
        return self._run()

    def _run(self) -> bool:
        pid = _getpid()
        # Reentrant: one owner's rebuild may use another guarded object.
        with _rebuild_lock(pid):
            if self.pid == pid:
                return False
            rebuild = self._rebuild()
            if rebuild is not None:
                rebuild()
            # Set last: a thread that sees the new pid also sees what was rebuilt.
            self.pid = pid
        return True


def _after_fork_in_child() -> None:
    for guard in list(_guards):
        try:
            guard.check()
        except Exception:
            # The lazy path will try again on first use; never break the fork.
            logger.exception("cbsync could not rebuild %r after fork", guard)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
