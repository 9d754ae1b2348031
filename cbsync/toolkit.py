"""Building blocks for writing integrations, stores and reporters.

What cbsync's own integrations use besides the public breaker API
(``breaker.acquire()``, ``breaker.rejection()``, :mod:`cbsync.stores`):

* :class:`ForkGuard` -- rebuild locks and forget threads in a forked child
  (gunicorn ``preload_app``, uWSGI, Celery prefork); see its docstring.
* :func:`parse_duration` -- ``"250ms"``, ``"30s"``, a ``timedelta`` or a
  number of seconds, as positive float seconds, or a
  :class:`~cbsync.ConfigError` naming the option.
* :func:`did_you_mean` -- the spelling hint of every cbsync error message.
"""

from ._config import did_you_mean, parse_duration
from ._fork import ForkGuard

__all__ = ["ForkGuard", "did_you_mean", "parse_duration"]
