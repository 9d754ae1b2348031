"""SQLAlchemy: a circuit breaker in front of an engine's database.

:func:`attach` hooks a breaker into an :class:`~sqlalchemy.engine.Engine`
(SQLAlchemy 1.4 and 2.x) through its events; no query code changes::

    import sqlalchemy
    from cbsync.integrations.sqlalchemy import DatabaseCircuitOpenError, attach

    engine = sqlalchemy.create_engine("postgresql+psycopg2://app@db.internal/orders")
    attach(engine)  # breaker "postgresql://db.internal:5432/orders", profile "database"

    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    except DatabaseCircuitOpenError as exc:  # also an OperationalError
        ...  # the database is known to be down: degrade, or retry after exc.retry_after

What is a call
--------------
Each connection attempt and each statement execution is one call.

* A connection attempt (the dialect's ``do_connect`` event, the only hook that
  runs before the database is contacted) fails when the driver raises one of
  its errors or an ``OSError``; it succeeds when it returns a connection.
  When the circuit is open the attempt is rejected there: the database is not
  contacted.
* A statement (from ``before_cursor_execute`` to ``after_cursor_execute``, or
  to ``handle_error``) fails only when SQLAlchemy sees a disconnect
  (``is_disconnect``).  Any other error raised by the driver --
  ``IntegrityError``, ``ProgrammingError``, ``DataError``, SQLite's
  ``OperationalError`` for bad SQL -- proves that the database answered and
  counts as a *success*, as an exception outside ``failure_on`` does in the
  core.  An error raised outside the driver (a ``TypeError`` in parameter
  processing, an exception from another event listener) is *ignored*: the
  database may not have been asked.  ``KeyboardInterrupt`` and other
  ``BaseException``\\ s count nothing.  ``is_failure(exc)``, given the
  exception the driver raised, replaces the "is it a failure" decision for
  connection attempts and statements alike.  The breaker's own
  ``failure_on``/``ignore`` settings do not apply to these calls.
* Failed pool pre-pings (``pool_pre_ping=True``) are not counted: the pool
  reconnects, and that connection attempt is the call that counts.

What is rejected
----------------
When the circuit is open (or half-open with every trial call in flight),
``engine.connect()``, ``engine.begin()`` and ORM sessions fail fast with
:class:`DatabaseCircuitOpenError` (:class:`DatabaseHalfOpenLimitReached` in
the second case), whether the pool has an idle connection (rejected in
``engine_connect``; the pooled connection goes back to the pool untouched) or
has to open one (rejected in ``do_connect``).  With ``pool_pre_ping=True``
the pool pings an idle connection before ``engine_connect`` runs; while the
circuit rejects, that ping is skipped (the dialect's ``do_ping`` is wrapped),
so a rejected checkout sends nothing to the database.  The pool's
``checkout`` event is never used: an exception raised there discards a
healthy connection.

Connections already checked out are not interrupted: their statements run,
uncounted while the circuit rejects; once the OPEN period is over, such a
statement may be the trial call.  ``engine.raw_connection()`` bypasses
``engine_connect``: with a warm pool it is not rejected (new connections
still are), and while the circuit rejects it gets its idle connection
unpinged.

The breaker
-----------
With ``breaker=None`` the breaker is ``registry.get(name, profile)``.  Without
``registry=`` the *current* process default registry is looked up at every
connection attempt, checkout and statement, not once at ``attach()``, so that
swapping the default (as the pytest fixture ``breaker_registry`` does) takes
effect for an engine created at import time.  The breaker is also created at
``attach()``, so that configuration errors surface there.

The default name is ``<backend>://<host>:<port>/<database>`` from the engine's
URL, lower-cased host, default port filled in for PostgreSQL (5432),
MySQL/MariaDB (3306), SQL Server (1433), Oracle (1521) and CockroachDB (26257)
and left out for other backends when the URL has none; a URL without a host
(a Unix socket) gives ``localhost``.  SQLite gives ``sqlite:///<path>``
(``sqlite:///:memory:`` for an in-memory database).  The user name, the
password and the query string (which may hold secrets) are never part of it.

Listener order, and why every call is completed once
----------------------------------------------------
A statement's permit is kept on its execution context from
``before_cursor_execute`` until ``after_cursor_execute`` or ``handle_error``
takes it, so no statement is counted twice.  On SQLAlchemy 2.x cbsync's
``after_cursor_execute`` and ``handle_error`` listeners are put in front of
the engine's others (``insert=True``, which 1.4 does not offer for these
events); cbsync therefore reads ``is_disconnect`` as the dialect decided it,
before another ``handle_error`` listener changes it (use ``is_failure`` to
decide differently).

A statement ended by ``KeyboardInterrupt`` counts nothing and gives its
half-open trial permit back at once.  A statement whose outcome never
reaches cbsync -- another listener raised first; a class-level
``handle_error`` listener always runs before the engine's own -- counts
nothing either, and its trial permit is given back once SQLAlchemy drops
the statement's execution context (often only when the garbage collector
frees the exception's traceback), at the next connection attempt, checkout
or statement.  :meth:`Attachment.detach` gives back the trial permits of
statements still running.  Statements run with the
``skip_user_error_events`` execution option (internal queries of some
dialects, which ``handle_error`` never sees) are not counted.

cbsync's ``do_connect`` listener makes the connection itself (SQLAlchemy
stops at the first ``do_connect`` listener that returns one), after running
the ``do_connect`` listeners registered after it -- those that set
``cparams``, such as token providers -- so the order of ``attach()`` and
``event.listen()`` does not matter.
"""

import logging
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from cbsync import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigError,
    HalfOpenLimitReached,
    Outcome,
    Permit,
    Registry,
    State,
    TransitionReason,
    default_registry,
)

__all__ = ["Attachment", "DatabaseCircuitOpenError", "DatabaseHalfOpenLimitReached", "attach"]

logger = logging.getLogger("cbsync")

#: Default ports filled into breaker names when the URL gives none.
DEFAULT_PORTS: Dict[str, int] = {
    "cockroachdb": 26257,
    "mariadb": 3306,
    "mssql": 1433,
    "mysql": 3306,
    "oracle": 1521,
    "postgresql": 5432,
}

#: Attribute of an execution context holding its statement's call.
_CALL = "_cbsync_call"
#: Listener options putting a listener in front of the others.  SQLAlchemy 1.4
#: supports ``insert=True`` only for some events (not these).
_FIRST: Dict[str, bool] = {} if sqlalchemy.__version__.startswith("1.") else {"insert": True}
#: Attachments by dialect: an engine and the engines derived from it by
#: ``execution_options()`` share their dialect (and the dialect's events).
#: Weak both ways: an attachment lives as long as the engine's listeners do.
_attached: "weakref.WeakKeyDictionary[Any, weakref.ref[Attachment]]" = weakref.WeakKeyDictionary()
_attached_lock = threading.Lock()


class DatabaseCircuitOpenError(
    CircuitOpenError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.DontWrapMixin
):
    """The database's circuit is open: the connection was not attempted.

    A :class:`cbsync.CircuitOpenError` (``breaker``, ``state``, ``reason``,
    ``retry_after``) and a :class:`sqlalchemy.exc.OperationalError`, so code
    that catches ``OperationalError`` or ``DBAPIError`` keeps working.  As a
    ``DBAPIError`` its ``statement`` and ``params`` are ``None``,
    ``connection_invalidated`` is ``False`` and ``orig`` is the plain
    :class:`cbsync.CircuitOpenError` the breaker raised (no driver error
    exists).  ``str()`` is the cbsync message.  SQLAlchemy never wraps it in a
    ``StatementError`` (it is a ``DontWrapMixin``), and it pickles.
    """

    def __init__(
        self,
        breaker: str,
        state: State,
        reason: TransitionReason,
        retry_after: Optional[float],
        statement: Optional[str] = None,
        params: Any = None,
        orig: Optional[BaseException] = None,
    ) -> None:
        # CircuitOpenError passes the extra arguments on to DBAPIError.
        super().__init__(breaker, state, reason, retry_after, statement, params, orig)

    @staticmethod
    def _from(error: CircuitOpenError) -> "DatabaseCircuitOpenError":
        """The error to raise for the breaker's rejection ``error``."""
        if isinstance(error, DatabaseCircuitOpenError):
            return error
        cls = (
            DatabaseHalfOpenLimitReached
            if isinstance(error, HalfOpenLimitReached)
            else DatabaseCircuitOpenError
        )
        return cls(error.breaker, error.state, error.reason, error.retry_after, None, None, error)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            type(self),
            (
                self.breaker,
                self.state,
                self.reason,
                self.retry_after,
                self.statement,
                self.params,
                self.orig,
            ),
        )


class DatabaseHalfOpenLimitReached(HalfOpenLimitReached, DatabaseCircuitOpenError):
    """Rejected in HALF_OPEN: every trial permit of the database is in use.

    Both a :class:`cbsync.HalfOpenLimitReached` and a
    :class:`DatabaseCircuitOpenError`.
    """


class _Call:
    """One admitted statement: the breaker and permit it must be completed on."""

    __slots__ = ("breaker", "permit", "ref")

    def __init__(self, breaker: CircuitBreaker, permit: Permit) -> None:
        self.breaker = breaker
        self.permit = permit
        #: A weak reference to the statement's execution context (trial calls only).
        self.ref: Optional[weakref.ref[Any]] = None


class Attachment:
    """A breaker attached to an engine by :func:`attach`; :meth:`detach` removes it."""

    def __init__(
        self,
        engine: Engine,
        source: Callable[[], CircuitBreaker],
        is_failure: Optional[Callable[[BaseException], object]],
    ) -> None:
        self._engine = engine
        self._source = source
        self._is_failure = is_failure
        self._dbapi_error: Tuple[type, ...] = _dbapi_error(engine.dialect)
        #: Statements holding a HALF_OPEN trial permit, so that it always comes back.
        self._in_flight: Dict[int, _Call] = {}
        #: Of those, the ones whose execution context was dropped first.
        self._orphans: List[_Call] = []
        self._lock = threading.Lock()
        self._detached = False
        self._ping_wrapper: Optional[Callable[[Any], bool]] = None
        self._ping_previous: Optional[Callable[[Any], bool]] = None
        self._listeners: List[Tuple[str, Callable[..., Any], Dict[str, bool]]] = [
            ("do_connect", self._on_do_connect, {}),
            ("engine_connect", self._on_engine_connect, {"named": True}),
            ("before_cursor_execute", self._on_before_cursor_execute, {}),
            ("after_cursor_execute", self._on_after_cursor_execute, _FIRST),
            ("handle_error", self._on_handle_error, _FIRST),
        ]

    @property
    def engine(self) -> Engine:
        """The engine the breaker is attached to."""
        return self._engine

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker in use now (with a default registry, from the current one)."""
        return self._source()

    @property
    def attached(self) -> bool:
        """``False`` once :meth:`detach` has been called."""
        return not self._detached

    def detach(self) -> None:
        """Remove every listener: the engine then behaves as if never attached.

        A HALF_OPEN trial permit held by a statement still running is given
        back (the statement counts nothing).  Calling it again does nothing.
        """
        with self._lock:
            if self._detached:
                return
            self._detached = True
        for identifier, listener, _ in self._listeners:
            if event.contains(self._engine, identifier, listener):
                event.remove(self._engine, identifier, listener)
        if self._ping_wrapper is not None:
            self._unwrap_ping()
        with _attached_lock:
            ref = _attached.get(self._engine.dialect)
            if ref is not None and ref() is self:
                del _attached[self._engine.dialect]
        for key in list(self._in_flight):
            call = self._in_flight.pop(key, None)
            if call is not None:
                call.ref = None
                call.permit.release()
        del self._orphans[:]

    def __repr__(self) -> str:
        return "<Attachment {!r} on {!r}{}>".format(
            self.breaker.name, self._engine, " (detached)" if self._detached else ""
        )

    # -- wiring ----------------------------------------------------------------

    def _listen(self) -> None:
        for identifier, listener, options in self._listeners:
            event.listen(self._engine, identifier, listener, **options)
        # The pool pings (pool_pre_ping=True) before engine_connect can refuse
        # the checkout, and no event runs before the ping: the dialect's
        # do_ping is wrapped so that an open circuit is not contacted by it.
        dialect: Any = self._engine.dialect
        self._ping_previous = vars(dialect).get("do_ping")
        original = dialect.do_ping

        def do_ping(dbapi_connection: Any) -> bool:
            if not self._detached and self._source().rejection() is not None:
                return True  # engine_connect refuses this checkout right after
            return bool(original(dbapi_connection))

        self._ping_wrapper = do_ping
        dialect.do_ping = do_ping

    def _unwrap_ping(self) -> None:
        dialect: Any = self._engine.dialect
        if vars(dialect).get("do_ping") is not self._ping_wrapper:
            return  # wrapped again over cbsync's: the wrapper now passes through
        if self._ping_previous is None:
            del dialect.do_ping
        else:
            dialect.do_ping = self._ping_previous

    # -- connection attempts and checkouts -------------------------------------

    def _on_do_connect(
        self, dialect: Any, conn_rec: Any, cargs: Tuple[Any, ...], cparams: Dict[str, Any]
    ) -> Any:
        if self._orphans:
            self._sweep()
        try:
            permit = self._source().acquire()
        except CircuitOpenError as error:
            raise DatabaseCircuitOpenError._from(error) from None
        try:
            connection = self._connect(dialect, conn_rec, cargs, cparams)
        except Exception as exc:
            permit.record(self._connect_outcome(exc), exc)
            raise
        except BaseException:
            permit.release()
            raise
        permit.success()
        return connection

    def _connect(
        self, dialect: Any, conn_rec: Any, cargs: Tuple[Any, ...], cparams: Dict[str, Any]
    ) -> Any:
        # Returning a connection ends SQLAlchemy's do_connect chain, so the
        # listeners registered after this one are run here first.
        later = False
        for listener in dialect.dispatch.do_connect:
            if later:
                connection = listener(dialect, conn_rec, cargs, cparams)
                if connection is not None:
                    return connection
            elif listener == self._on_do_connect:
                later = True
        return dialect.connect(*cargs, **cparams)

    def _on_engine_connect(self, **kwargs: Any) -> None:
        if kwargs.get("branch"):
            return  # SQLAlchemy 1.4: a branch of a connection already checked out
        if self._orphans:
            self._sweep()
        breaker = self._source()
        error = breaker.rejection()
        if error is None:
            return
        conn = kwargs["conn"]
        try:
            # Give the pooled connection back before refusing it.
            conn.close()
        except Exception:
            logger.exception("cbsync: closing a rejected connection of %r failed", breaker.name)
        raise breaker.record_rejection(DatabaseCircuitOpenError._from(error))

    # -- statements ------------------------------------------------------------

    def _on_before_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: Any,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if self._orphans:
            self._sweep()
        if context is None or context.execution_options.get("skip_user_error_events"):
            return
        leftover = _take(context)
        if leftover is not None:
            self._finish(leftover, None)
        breaker = self._source()
        # A statement on a connection already checked out is never refused:
        # while the circuit rejects, it runs uncounted.
        if breaker.rejection() is not None:
            return
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            return  # the last trial permit went to another thread meanwhile
        call = _Call(breaker, permit)
        if permit.trial:
            # A trial permit must come back even if no after_cursor_execute
            # or handle_error reaches this listener (another listener raised
            # first): when SQLAlchemy drops the context, the permit is queued
            # for _sweep().  A weakref callback may run inside the garbage
            # collector, so it only appends to a list.
            orphans = self._orphans
            call.ref = weakref.ref(context, lambda _: orphans.append(call))
            self._in_flight[id(call)] = call
        setattr(context, _CALL, call)

    def _on_after_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: Any,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        call = _take(context)
        if call is not None:
            self._finish(call, Outcome.SUCCESS)

    def _on_handle_error(self, ctx: Any) -> None:
        if getattr(ctx, "is_pre_ping", False):
            return  # a pool pre-ping: the reconnection that follows is what counts
        call = _take(ctx.execution_context)
        if call is None:
            return
        exc = ctx.original_exception
        if not isinstance(exc, Exception):
            self._finish(call, None)
        else:
            self._finish(call, self._statement_outcome(exc, ctx.is_disconnect), exc)

    def _finish(
        self, call: _Call, outcome: Optional[Outcome], exc: Optional[Exception] = None
    ) -> None:
        """Complete ``call`` with ``outcome`` (``None``: release it), unless
        its permit was given back already (by :meth:`detach` or :meth:`_sweep`)."""
        if call.permit.trial:
            if self._in_flight.pop(id(call), None) is None:
                return
            call.ref = None
        if outcome is None:
            call.permit.release()
        else:
            call.permit.record(outcome, exc)

    def _sweep(self) -> None:
        """Give back the trial permits of statements whose context was dropped
        without an outcome."""
        orphans = self._orphans
        while orphans:
            try:
                call = orphans.pop()
            except IndexError:
                return  # another thread took the last one
            if self._in_flight.pop(id(call), None) is not None:
                call.ref = None
                call.permit.release()
                logger.info(
                    "cbsync: a statement on %r ended without reaching cbsync's listeners "
                    "(another event listener raised first); its trial permit was given back",
                    call.breaker.name,
                )

    # -- classification --------------------------------------------------------

    def _failed(self, exc: Exception, default: bool) -> bool:
        if self._is_failure is None:
            return default
        try:
            return bool(self._is_failure(exc))
        except Exception:
            logger.exception(
                "cbsync: is_failure raised while classifying %r; treated as %s",
                exc,
                "a failure" if default else "not a failure",
            )
            return default

    def _connect_outcome(self, exc: Exception) -> Outcome:
        is_driver_error = isinstance(exc, self._dbapi_error)
        if self._failed(exc, is_driver_error or isinstance(exc, OSError)):
            return Outcome.FAILURE
        return Outcome.SUCCESS if is_driver_error else Outcome.IGNORED

    def _statement_outcome(self, exc: Exception, is_disconnect: bool) -> Outcome:
        if self._failed(exc, bool(is_disconnect)):
            return Outcome.FAILURE
        return Outcome.SUCCESS if isinstance(exc, self._dbapi_error) else Outcome.IGNORED


def _take(context: Any) -> Optional[_Call]:
    """Remove and return the admitted statement stored on ``context``, if any."""
    if context is None:
        return None
    call = vars(context).pop(_CALL, None)
    return call if isinstance(call, _Call) else None


def _dbapi_error(dialect: Any) -> Tuple[type, ...]:
    dbapi = getattr(dialect, "dbapi", None)
    error = getattr(dbapi, "Error", None)
    return (error,) if isinstance(error, type) else ()


def _default_name(url: URL) -> str:
    """The default breaker name of an engine whose URL is ``url``.

    >>> from sqlalchemy.engine import make_url
    >>> _default_name(make_url("postgresql+psycopg2://app:secret@DB.example.com/orders?sslmode=require"))
    'postgresql://db.example.com:5432/orders'
    >>> _default_name(make_url("sqlite:////var/lib/app.db"))
    'sqlite:////var/lib/app.db'
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        return "sqlite:///{}".format(url.database or ":memory:")
    host = (url.host or "localhost").lower()
    if ":" in host and not host.startswith("["):
        host = "[{}]".format(host)  # an IPv6 address
    port = url.port if url.port is not None else DEFAULT_PORTS.get(backend)
    netloc = host if port is None else "{}:{}".format(host, port)
    return "{}://{}/{}".format(backend, netloc, url.database or "")


def _registry_source(
    name: str, profile: Optional[str], registry: Optional[Registry]
) -> Callable[[], CircuitBreaker]:
    """The breaker ``name`` from ``registry`` -- without one, from the default
    registry as it is at each call (the pytest fixture swaps it)."""

    def source() -> CircuitBreaker:
        return (registry if registry is not None else default_registry()).get(name, profile)

    return source


def attach(
    engine: Engine,
    breaker: Optional[CircuitBreaker] = None,
    *,
    name: Optional[str] = None,
    profile: Optional[str] = "database",
    registry: Optional[Registry] = None,
    is_failure: Optional[Callable[[BaseException], object]] = None,
) -> Attachment:
    """Put a circuit breaker in front of ``engine``'s database; return the handle.

    ``breaker`` is used as given; without it the breaker is
    ``registry.get(name, profile)``, ``registry`` defaulting to the process
    default (looked up at each use) and ``name`` to the engine URL's
    ``<backend>://<host>:<port>/<database>``.  ``is_failure(exc)``, given the
    driver's exception, decides which errors are failures instead of the
    default (failed connection attempts and disconnects).  Raises
    :class:`cbsync.ConfigError` for a bad argument or when a breaker is
    already attached to the engine (or to one it was derived from with
    ``execution_options()``).

    >>> import cbsync, sqlalchemy
    >>> engine = sqlalchemy.create_engine("sqlite://")
    >>> handle = attach(engine, cbsync.CircuitBreaker("db"))
    >>> with engine.connect() as conn:
    ...     conn.execute(sqlalchemy.text("select 1")).scalar()
    1
    >>> handle.breaker.snapshot().successes  # the connection and the statement
    2
    >>> handle.detach()
    >>> engine.dispose()
    """
    if not isinstance(engine, Engine):
        raise ConfigError(
            "engine={!r} must be a sqlalchemy Engine (from sqlalchemy.create_engine())".format(
                engine
            )
        )
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigError("breaker={!r} must be a cbsync.CircuitBreaker or None".format(breaker))
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("name={!r} must be a non-empty string or None".format(name))
    if profile is not None and not isinstance(profile, str):
        raise ConfigError("profile={!r} must be a string or None".format(profile))
    if registry is not None and not isinstance(registry, Registry):
        raise ConfigError("registry={!r} must be a cbsync.Registry or None".format(registry))
    if is_failure is not None and not callable(is_failure):
        raise ConfigError(
            "is_failure={!r} must be a callable taking the driver's exception".format(is_failure)
        )
    if breaker is not None and (name is not None or registry is not None):
        raise ConfigError(
            "give either breaker= or name=/registry= (breaker={!r}, name={!r}, "
            "registry={!r})".format(breaker, name, registry)
        )
    source: Callable[[], CircuitBreaker]
    if breaker is not None:
        fixed = breaker

        def source() -> CircuitBreaker:
            return fixed

    else:
        source = _registry_source(
            name if name is not None else _default_name(engine.url), profile, registry
        )
        source()  # create it now: a configuration error surfaces here
    attachment = Attachment(engine, source, is_failure)
    with _attached_lock:
        ref = _attached.get(engine.dialect)
        current = ref() if ref is not None else None
        if current is not None and current.attached:
            raise ConfigError(
                "a circuit breaker ({!r}) is already attached to {!r} or to an engine it "
                "shares its dialect with; detach() it first".format(current.breaker.name, engine)
            )
        _attached[engine.dialect] = weakref.ref(attachment)
    try:
        attachment._listen()
    except BaseException:
        attachment.detach()
        raise
    return attachment
