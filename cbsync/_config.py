"""``CircuitBreakerConfig``: every setting of a breaker, validated once."""

import dataclasses
import datetime
import difflib
import re
from typing import Any, Callable, Iterable, Optional, Tuple, Type, Union

from ._errors import ConfigError

#: Exception types, or a predicate ``exc -> bool``.
ExceptionMatcher = Union[
    Type[BaseException], Tuple[Type[BaseException], ...], Callable[[BaseException], bool]
]
#: Seconds as a number, a ``timedelta`` or a string such as ``"250ms"``.
Duration = Union[int, float, datetime.timedelta, str]

#: Consecutive failures that open the circuit.
DEFAULT_FAILURE_THRESHOLD = 5
#: Failure rate in the window that opens the circuit.
DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
#: Calls the window must hold before a rate is judged.
DEFAULT_MINIMUM_CALLS = 10
#: Window kind: ``"time_based"`` or ``"count_based"``.
DEFAULT_WINDOW_TYPE = "time_based"
#: Span of a time-based window, in seconds.
DEFAULT_FAILURE_WINDOW = 60.0
#: Calls held by a count-based window.
DEFAULT_WINDOW_SIZE = 100
#: Slow-call rate in the window that opens the circuit.
DEFAULT_SLOW_CALL_RATE_THRESHOLD = 1.0
#: Seconds an OPEN circuit waits before admitting a trial call.
DEFAULT_TIMEOUT = 30.0
#: Growth of the OPEN period at each reopen from HALF_OPEN (1.0: no growth).
DEFAULT_BACKOFF_MULTIPLIER = 1.0
#: Floor of the default cap on the grown OPEN period, in seconds.
DEFAULT_MAX_TIMEOUT_FLOOR = 300.0
#: Trial successes that close the circuit.
DEFAULT_SUCCESS_THRESHOLD = 3
#: Trial calls in flight at once in HALF_OPEN.
DEFAULT_HALF_OPEN_MAX_CALLS = 3

WINDOW_TYPES = ("time_based", "count_based")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(field: str, value: object) -> float:
    """Return ``value`` as positive float seconds, or raise ``ConfigError``."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ConfigError(
                "{}={!r} is not a duration: use seconds or a string such as "
                "'250ms', '30s', '2m', '1h'".format(field, value)
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    else:
        raise ConfigError(
            "{}={!r} is not a duration: use seconds, a timedelta or a string such as '30s'".format(
                field, value
            )
        )
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError("{}={!r} must be a positive, finite duration".format(field, value))
    return seconds


def _count(field: str, value: object, *, optional: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError("{}={!r} must be a whole number of at least 1".format(field, value))
    return value


def _rate(field: str, value: object, *, optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0.0 < float(value) <= 1.0
    ):
        raise ConfigError("{}={!r} must be a rate in (0, 1]".format(field, value))
    return float(value)


def _matcher(field: str, value: object) -> ExceptionMatcher:
    if isinstance(value, type):
        value = (value,)
    if isinstance(value, tuple):
        for item in value:
            if not (isinstance(item, type) and issubclass(item, Exception)):
                raise ConfigError(
                    "{}={!r}: {!r} is not an Exception subclass (KeyboardInterrupt, "
                    "SystemExit and other BaseExceptions are never counted)".format(
                        field, value, item
                    )
                )
        return value
    if callable(value):
        return value
    raise ConfigError(
        "{}={!r} must be an exception type, a tuple of them, or a predicate exc -> bool".format(
            field, value
        )
    )


class DerivedMaxTimeout(float):
    """A ``max_timeout`` nobody set: ``max(300 s, timeout)``, derived, not chosen.

    It reads, compares and prints as the number it is.  What it adds is that
    ``dataclasses.replace()``, which passes every field back to the
    constructor, hands the constructor a value it knows to derive again from
    the new ``timeout``: ``replace(config, timeout=600)`` raises the cap to
    600 s instead of failing on a cap of 300 s below the timeout.  A value
    given explicitly is a plain ``float`` and is kept as it is.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the candidate closest to ``word``, or ``""``.

    The one spelling hint of every cbsync error message (difflib's default
    similarity cutoff, 0.6).

    >>> did_you_mean("timeuot", ["timeout", "window_size"])
    "; did you mean 'timeout'?"
    >>> did_you_mean("zzz", ["timeout"])
    ''
    """
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return "; did you mean {!r}?".format(close[0]) if close else ""


def _unknown_field_error(name: str) -> ConfigError:
    return ConfigError(
        "unknown circuit breaker setting {!r}{}".format(name, did_you_mean(name, FIELD_NAMES))
    )


@dataclasses.dataclass(frozen=True, init=False)
class CircuitBreakerConfig:
    """Every setting of a breaker; frozen and validated on construction.

    Durations accept seconds (``int``/``float``), a ``datetime.timedelta`` or
    a string such as ``"250ms"``, ``"30s"``, ``"2m"``, ``"1h"``, and are
    stored as float seconds.  Variants come from ``dataclasses.replace``; a
    ``max_timeout`` left to its default is derived again from the variant's
    ``timeout`` (see :class:`DerivedMaxTimeout`).

    >>> config = CircuitBreakerConfig(failure_threshold=3, timeout="10s")
    >>> config.timeout, config.max_timeout
    (10.0, 300.0)
    >>> dataclasses.replace(config, timeout="10m").max_timeout
    600.0
    >>> CircuitBreakerConfig(failure_treshold=3)
    Traceback (most recent call last):
    ...
    cbsync._errors.ConfigError: unknown circuit breaker setting 'failure_treshold'; ...
    """

    failure_threshold: Optional[int]
    failure_rate_threshold: Optional[float]
    minimum_calls: int
    window_type: str
    failure_window: float
    window_size: int
    slow_call_duration: Optional[float]
    slow_call_rate_threshold: float
    timeout: float
    backoff_multiplier: float
    max_timeout: float
    success_threshold: int
    half_open_max_calls: int
    failure_on: ExceptionMatcher
    ignore: ExceptionMatcher
    failure_result: Optional[Callable[[Any], bool]]

    def __init__(
        self,
        *,
        failure_threshold: Optional[int] = DEFAULT_FAILURE_THRESHOLD,
        failure_rate_threshold: Optional[float] = DEFAULT_FAILURE_RATE_THRESHOLD,
        minimum_calls: int = DEFAULT_MINIMUM_CALLS,
        window_type: str = DEFAULT_WINDOW_TYPE,
        failure_window: Duration = DEFAULT_FAILURE_WINDOW,
        window_size: int = DEFAULT_WINDOW_SIZE,
        slow_call_duration: Optional[Duration] = None,
        slow_call_rate_threshold: float = DEFAULT_SLOW_CALL_RATE_THRESHOLD,
        timeout: Duration = DEFAULT_TIMEOUT,
        backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER,
        max_timeout: Optional[Duration] = None,
        success_threshold: int = DEFAULT_SUCCESS_THRESHOLD,
        half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS,
        failure_on: ExceptionMatcher = (Exception,),
        ignore: ExceptionMatcher = (),
        failure_result: Optional[Callable[[Any], bool]] = None,
        **unknown: object,
    ) -> None:
        for name in unknown:
            raise _unknown_field_error(name)
        if isinstance(window_type, str):
            window_type = window_type.strip().lower().replace("-", "_")
        if window_type not in WINDOW_TYPES:
            raise ConfigError(
                "window_type={!r} must be 'time_based' or 'count_based'".format(window_type)
            )
        timeout_s = parse_duration("timeout", timeout)
        max_timeout_s: float
        if max_timeout is None or isinstance(max_timeout, DerivedMaxTimeout):
            max_timeout_s = DerivedMaxTimeout(max(DEFAULT_MAX_TIMEOUT_FLOOR, timeout_s))
        else:
            max_timeout_s = parse_duration("max_timeout", max_timeout)
            if max_timeout_s < timeout_s:
                raise ConfigError(
                    "max_timeout={!r} is below timeout={!r}".format(max_timeout, timeout)
                )
        if (
            not isinstance(backoff_multiplier, (int, float))
            or isinstance(backoff_multiplier, bool)
            or not 1.0 <= backoff_multiplier < float("inf")
        ):
            raise ConfigError(
                "backoff_multiplier={!r} must be a number of at least 1".format(backoff_multiplier)
            )
        if failure_result is not None and not callable(failure_result):
            raise ConfigError(
                "failure_result={!r} must be a predicate result -> bool".format(failure_result)
            )
        values = {
            "failure_threshold": _count("failure_threshold", failure_threshold, optional=True),
            "failure_rate_threshold": _rate(
                "failure_rate_threshold", failure_rate_threshold, optional=True
            ),
            "minimum_calls": _count("minimum_calls", minimum_calls),
            "window_type": window_type,
            "failure_window": parse_duration("failure_window", failure_window),
            "window_size": _count("window_size", window_size),
            "slow_call_duration": (
                None
                if slow_call_duration is None
                else parse_duration("slow_call_duration", slow_call_duration)
            ),
            "slow_call_rate_threshold": _rate(
                "slow_call_rate_threshold", slow_call_rate_threshold
            ),
            "timeout": timeout_s,
            "backoff_multiplier": float(backoff_multiplier),
            "max_timeout": max_timeout_s,
            "success_threshold": _count("success_threshold", success_threshold),
            "half_open_max_calls": _count("half_open_max_calls", half_open_max_calls),
            "failure_on": _matcher("failure_on", failure_on),
            "ignore": _matcher("ignore", ignore),
            "failure_result": failure_result,
        }
        if window_type == "count_based" and minimum_calls > window_size:
            raise ConfigError(
                "minimum_calls={!r} is larger than window_size={!r}: a count-based "
                "window could never hold enough calls to judge a rate".format(
                    minimum_calls, window_size
                )
            )
        for name, value in values.items():
            object.__setattr__(self, name, value)


def open_period(config: CircuitBreakerConfig, reopen_count: int) -> float:
    """How long the circuit stays OPEN after ``reopen_count`` reopens in a row:
    ``min(timeout * backoff_multiplier ** reopen_count, max_timeout)``."""
    try:
        period = config.timeout * config.backoff_multiplier**reopen_count
    except OverflowError:  # a day-long outage at a large multiplier
        return config.max_timeout
    return min(period, config.max_timeout)


#: The names of every field, in declaration order.
FIELD_NAMES: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CircuitBreakerConfig))
