"""A ``requests`` transport adapter that gives every HTTP origin its own breaker.

Mount :class:`CircuitBreakerAdapter` on a ``requests.Session`` (or call
:func:`install`) and every origin the session talks to --
``scheme://host:port`` -- gets a breaker from a :class:`~cbsync.Registry`,
configured by a profile (``"http_service"`` by default)::

    import requests
    from cbsync.integrations.requests import HTTPCircuitOpenError, install

    session = requests.Session()
    install(session)
    try:
        session.get("https://api.example.com/rates", timeout=5)
    except HTTPCircuitOpenError as err:
        print("api.example.com is failing; retry in", err.retry_after, "s")

How a request counts:

* a failure: a connection error, a connect or read timeout, a
  ``RetryError`` (urllib3 gave up retrying), or a response whose status is in
  ``failure_statuses`` (429 and 500-599 by default; that response is still
  returned to the caller);
* a success: any other response;
* ignored (neither): a caller mistake -- an invalid URL, schema or proxy, a
  bad ``timeout`` value, a missing CA bundle or client certificate file.
* Any other exception is classified by the breaker's own ``failure_on`` and
  ``ignore`` settings, and a profile's ``failure_result`` predicate is applied
  to responses that the status did not already make failures.

One ``send()`` is one protected call: urllib3's ``Retry`` (``max_retries``),
including its ``Retry-After`` sleeps, runs inside it, so a request retried
twice is still one call for the breaker.  A call lasts until the response
headers arrive; reading the body (what ``stream=False`` does after
``send()`` returns) is not part of it.

When a failing response carries ``Retry-After`` and its failure opens the
circuit, the OPEN period lasts at least that long (capped at the breaker's
``max_timeout``).  A malformed or negative ``Retry-After`` is ignored.

A rejected request raises :class:`HTTPCircuitOpenError`, which is both a
:class:`cbsync.CircuitOpenError` and a ``requests.exceptions.ConnectionError``:
``except requests.RequestException`` (and ``except OSError``) catch it, the
builtin ``ConnectionError`` does not -- it never did catch requests' own
``ConnectionError`` either.

Breaker names never contain credentials: the default key drops the userinfo
of the URL, and nothing this module logs or raises shows the URL.
"""

import logging
import threading
import uuid
import weakref
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Mapping,
    Optional,
    Tuple,
    Union,
    cast,
)
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, DEFAULT_RETRIES, HTTPAdapter
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import (
    InvalidHeader,
    InvalidURL,
    RequestException,
    RetryError,
    Timeout,
    URLRequired,
)
from requests.models import PreparedRequest, Response
from urllib3.exceptions import HTTPError as _Urllib3Error
from urllib3.exceptions import InvalidHeader as _Urllib3InvalidHeader
from urllib3.exceptions import LocationValueError as _Urllib3LocationValueError
from urllib3.util.retry import Retry

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

__all__ = [
    "CircuitBreakerAdapter",
    "HTTPCircuitOpenError",
    "HTTPHalfOpenLimitReached",
    "install",
    "origin",
]

logger = logging.getLogger("cbsync")

#: The profile the adapter's breakers are configured from.
DEFAULT_PROFILE = "http_service"
#: Response statuses that count as failures: Too Many Requests and every 5xx.
DEFAULT_FAILURE_STATUSES: FrozenSet[int] = frozenset({429, *range(500, 600)})

#: Ports a URL without one uses, made explicit in breaker names.
_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Exceptions from ``HTTPAdapter.send`` that mean the origin is failing.
_FAILURES = (RequestsConnectionError, Timeout, RetryError)
#: Exceptions from ``HTTPAdapter.send`` that mean the caller asked for
#: something impossible (requests' ``InvalidURL``, ``InvalidSchema``,
#: ``InvalidProxyURL``... are ``ValueError``s); the origin was not judged.
_CALLER_MISTAKES = (URLRequired, ValueError, TypeError)

# Used only for its parse_retry_after(), which reads no state of the instance.
_RETRY_AFTER_PARSER = Retry(0)

# Explicit registries of adapters that were pickled, by token, so that an
# adapter unpickled in the same process (or a forked child) finds its
# registry again.  Weak: an adapter keeps its registry alive, a pickle does not.
_REGISTRIES: "weakref.WeakValueDictionary[str, Registry]" = weakref.WeakValueDictionary()
_REGISTRIES_LOCK = threading.Lock()

Timeouts = Union[None, float, Tuple[Optional[float], Optional[float]], urllib3.util.Timeout]
Cert = Union[None, bytes, str, Tuple[Union[bytes, str], Union[bytes, str]]]


class HTTPCircuitOpenError(CircuitOpenError, RequestsConnectionError):
    """A request was rejected because its origin's circuit is open.

    It is a :class:`cbsync.CircuitOpenError` (``breaker``, ``state``,
    ``reason``, ``retry_after``) and a ``requests.exceptions.ConnectionError``
    (``request`` is the rejected request, ``response`` is ``None``), so code
    written for requests -- ``except requests.RequestException`` -- keeps
    handling it.  The builtin ``ConnectionError`` does not catch it.  Its
    message is cbsync's, naming the breaker, never the URL.

    It pickles with its request (as requests' own errors do); a request whose
    body cannot be pickled (a generator, an open file) makes the error
    unpicklable too.
    """

    def __init__(
        self,
        breaker: str,
        state: State,
        reason: TransitionReason,
        retry_after: Optional[float],
        *,
        request: Optional[PreparedRequest] = None,
    ) -> None:
        super().__init__(breaker, state, reason, retry_after, request=request)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            type(self),
            (self.breaker, self.state, self.reason, self.retry_after),
            {"request": self.request, "response": self.response},
        )


class HTTPHalfOpenLimitReached(HalfOpenLimitReached, HTTPCircuitOpenError):
    """Rejected in HALF_OPEN: every trial permit of the origin is in use.

    Both a :class:`cbsync.HalfOpenLimitReached` and an
    :class:`HTTPCircuitOpenError`.
    """


def origin(request: PreparedRequest) -> str:
    """The default breaker key: the request's origin, ``scheme://host:port``.

    Lower-cased, the default port made explicit, the userinfo dropped and an
    IPv6 host in brackets.  Raises ``requests.exceptions.InvalidURL`` (without
    repeating the URL, which may hold credentials) when the URL has no host.

    >>> import requests
    >>> origin(requests.Request("GET", "HTTPS://user:secret@API.Example.com/v1").prepare())
    'https://api.example.com:443'
    >>> origin(requests.Request("GET", "http://[::1]:8080/").prepare())
    'http://[::1]:8080'
    """
    url = request.url
    try:
        if not url:
            raise ValueError("no URL")
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        # The URL and urlsplit's message about it may hold credentials.
        raise InvalidURL(
            "cannot find the origin (scheme://host:port) of the request URL: malformed",
            request=request,
        ) from None
    if not host:
        raise InvalidURL(
            "cannot find the origin (scheme://host:port) of the request URL: no host",
            request=request,
        )
    scheme = parts.scheme
    if ":" in host:
        host = "[{}]".format(host)
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    if port is None:
        return "{}://{}".format(scheme, host)
    return "{}://{}:{}".format(scheme, host, port)


class CircuitBreakerAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that protects every origin with its own breaker.

    ``registry`` holds the breakers (default: the process default registry,
    ``cbsync.registry``, looked up at each request so that swapping it takes
    effect); ``profile`` configures them (default ``"http_service"``; an
    unconfigured profile means the registry's ``default`` one, and ``None`` a
    profile named like the breaker, if there is one).  ``key`` maps
    a ``PreparedRequest`` to a breaker name (default :func:`origin`).
    ``failure_statuses`` are the response statuses that count as failures
    (default 429 and 500-599).  ``pool_connections``, ``pool_maxsize``,
    ``max_retries`` and ``pool_block`` are ``HTTPAdapter``'s, in its order,
    by position or by keyword (``CircuitBreakerAdapter(10, 20)`` works like
    ``HTTPAdapter(10, 20)``); the cbsync options are keyword-only.

    Safe to share between threads, like the ``Session`` it is mounted on.

    Pickling (a ``Session`` pickles its adapters) keeps the profile, the key,
    the statuses and the ``HTTPAdapter`` settings.  ``key`` must then be
    picklable itself (a module-level function, not a lambda).  The default
    registry is not pickled: it is looked up again at each request after
    unpickling.  An explicit registry holds the live breakers of one process
    and is not pickled either: an adapter unpickled in the same process, or in
    a child forked after pickling, uses that same registry; elsewhere it uses
    the default registry and logs a warning.

    >>> import requests
    >>> session = requests.Session()
    >>> adapter = CircuitBreakerAdapter(failure_statuses={500, 502, 503, 504}, max_retries=2)
    >>> session.mount("https://", adapter)
    >>> session.mount("http://", adapter)
    """

    #: What pickling keeps (``HTTPAdapter``'s protocol); see the class docstring.
    __attrs__ = [  # noqa: RUF012 -- a list, as in HTTPAdapter, so subclasses can extend it
        *HTTPAdapter.__attrs__,
        "_profile",
        "_key",
        "_failure_statuses",
    ]

    def __init__(
        self,
        pool_connections: int = DEFAULT_POOLSIZE,
        pool_maxsize: int = DEFAULT_POOLSIZE,
        max_retries: Union[Retry, int, None] = DEFAULT_RETRIES,
        pool_block: bool = DEFAULT_POOLBLOCK,
        *,
        registry: Optional[Registry] = None,
        profile: Optional[str] = DEFAULT_PROFILE,
        key: Optional[Callable[[PreparedRequest], str]] = None,
        failure_statuses: Iterable[int] = DEFAULT_FAILURE_STATUSES,
    ) -> None:
        if registry is not None and not isinstance(registry, Registry):
            raise ConfigError("registry={!r} must be a cbsync.Registry or None".format(registry))
        if profile is not None and (not isinstance(profile, str) or not profile):
            raise ConfigError("profile={!r} must be a non-empty string or None".format(profile))
        if key is not None and not callable(key):
            raise ConfigError(
                "key={!r} must be a callable taking the PreparedRequest and returning "
                "the breaker name".format(key)
            )
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=max_retries,
            pool_block=pool_block,
        )
        self._registry = registry
        self._registry_token: Optional[str] = None
        self._profile = profile
        self._key = key
        self._failure_statuses = _statuses(failure_statuses)

    @property
    def registry(self) -> Registry:
        """The registry the next request takes its breaker from."""
        return self._registry if self._registry is not None else default_registry()

    @property
    def profile(self) -> Optional[str]:
        """The profile the breakers are configured from."""
        return self._profile

    @property
    def failure_statuses(self) -> FrozenSet[int]:
        """Response statuses that count as failures."""
        return self._failure_statuses

    def breaker_for(self, request: PreparedRequest) -> CircuitBreaker:
        """The breaker that protects ``request`` (created on first use)."""
        return self.registry.get(self._name_for(request), profile=self._profile)

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Timeouts = None,
        verify: Union[bool, str] = True,
        cert: Cert = None,
        proxies: Optional[Mapping[str, str]] = None,
    ) -> Response:
        """Send ``request`` through its origin's breaker.

        Raises :class:`HTTPCircuitOpenError` without sending anything when
        the circuit rejects the request; otherwise what ``HTTPAdapter.send``
        returns or raises.
        """
        breaker = self.breaker_for(request)
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            error_type = (
                HTTPHalfOpenLimitReached
                if isinstance(exc, HalfOpenLimitReached)
                else HTTPCircuitOpenError
            )
            raise error_type(
                exc.breaker, exc.state, exc.reason, exc.retry_after, request=request
            ) from None
        try:
            response = super().send(
                request,
                stream=stream,
                timeout=timeout,  # type: ignore[arg-type]
                verify=verify,
                cert=cert,
                proxies=proxies,
            )
        except Exception as exc:
            _record_exception(permit, exc)
            raise
        except BaseException:
            permit.release()
            raise
        if response.status_code in self._failure_statuses:
            permit.failure(retry_after=_retry_after(response))
        else:
            permit.result(response)  # the profile's failure_result, if any, decides
        return response

    def __getstate__(self) -> Dict[str, Any]:
        state = cast(Dict[str, Any], super().__getstate__())
        if self._registry is not None:
            with _REGISTRIES_LOCK:
                if self._registry_token is None:
                    self._registry_token = uuid.uuid4().hex
                _REGISTRIES[self._registry_token] = self._registry
            state["_registry_token"] = self._registry_token
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        token = state.pop("_registry_token", None)
        self._registry = None
        self._registry_token = None
        self._profile = DEFAULT_PROFILE
        self._key = None
        self._failure_statuses = DEFAULT_FAILURE_STATUSES
        # HTTPAdapter defines __setstate__; the type stubs do not say so.
        super().__setstate__(state)  # type: ignore[misc]
        if token is not None:
            registry = _REGISTRIES.get(token)
            if registry is None:
                logger.warning(
                    "cbsync: an unpickled CircuitBreakerAdapter's registry belongs to "
                    "another process; it uses this process's default registry"
                )
            else:
                self._registry = registry
                self._registry_token = token

    def __repr__(self) -> str:
        return "<{} profile={!r} registry={}>".format(
            type(self).__name__,
            self._profile,
            "default" if self._registry is None else repr(self._registry),
        )

    # -- internals ----------------------------------------------------------

    def _name_for(self, request: PreparedRequest) -> str:
        if self._key is None:
            return origin(request)
        name = self._key(request)
        if not isinstance(name, str) or not name:
            # The value itself is not shown: it may hold credentials.
            raise ConfigError(
                "key={!r} must return a non-empty str breaker name, got {}".format(
                    self._key, "an empty string" if name == "" else type(name).__name__
                )
            )
        return name


def install(session: requests.Session, **options: Any) -> CircuitBreakerAdapter:
    """Mount a :class:`CircuitBreakerAdapter` on ``session`` for ``http://`` and
    ``https://``, and return it.

    ``options`` are the adapter's keyword arguments.

    >>> import requests
    >>> session = requests.Session()
    >>> adapter = install(session, profile="payments_api", max_retries=2)
    >>> session.get_adapter("https://api.example.com/") is adapter
    True
    """
    if not callable(getattr(session, "mount", None)):
        raise ConfigError("session={!r} must be a requests.Session".format(session))
    adapter = CircuitBreakerAdapter(**options)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return adapter


def _record_exception(permit: Permit, exc: Exception) -> None:
    """Give ``permit`` the outcome ``exc``, raised by ``HTTPAdapter.send``, stands for."""
    outcome = _outcome(exc)
    if outcome is None:
        permit.outcome(exc)  # the breaker's failure_on / ignore decide
    else:
        permit.record(outcome, exc)


def _outcome(exc: Exception) -> Optional[Outcome]:
    """What ``exc``, raised by ``HTTPAdapter.send``, says about the origin:
    ``FAILURE``, ``IGNORED``, or ``None`` to let the breaker's config decide."""
    if _server_failure(exc):
        return Outcome.FAILURE
    if isinstance(exc, _CALLER_MISTAKES):
        return Outcome.IGNORED
    if isinstance(exc, OSError) and not isinstance(exc, RequestException):
        # requests wraps every network OSError in its ConnectionError; a raw
        # one comes from a local file (the CA bundle, the client certificate).
        return Outcome.IGNORED
    return None


def _server_failure(exc: Exception) -> bool:
    if isinstance(exc, _FAILURES):
        return True
    # A malformed header *in the response* (Retry-After, Content-Length) is the
    # server's fault.  Newer requests wrap urllib3's error in their own
    # InvalidHeader; requests 2.25 lets it through as it is.  Invalid headers
    # of the request itself are rejected while it is prepared, before send().
    if isinstance(exc, InvalidHeader) and any(
        isinstance(arg, _Urllib3InvalidHeader) for arg in exc.args
    ):
        return True
    return isinstance(exc, _Urllib3Error) and not isinstance(
        exc, (_Urllib3LocationValueError, RequestException)
    )


def _retry_after(response: Response) -> Optional[float]:
    """The seconds ``Retry-After`` asks for, or ``None`` if absent or unusable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(_RETRY_AFTER_PARSER.parse_retry_after(value))
    except Exception:
        # Malformed, or a date out of range: the server's header is advice,
        # never a reason to fail the caller's request.
        return None
    if not seconds > 0 or seconds == float("inf"):
        return None
    return seconds


def _statuses(values: Iterable[int]) -> FrozenSet[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(
            "failure_statuses={!r} must be a collection of HTTP status codes".format(values)
        )
    statuses = frozenset(values)
    for status in statuses:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ConfigError(
                "failure_statuses: {!r} is not an HTTP status code (an int from 100 to "
                "599)".format(status)
            )
    return statuses
