"""The requests adapter, against a real threaded HTTP server on loopback."""

import builtins
import collections
import doctest
import email.utils
import inspect
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3
from urllib3.util.retry import Retry

import cbsync
from cbsync._registry import set_default_registry
from cbsync.integrations import requests as cb_requests
from cbsync.integrations.requests import (
    CircuitBreakerAdapter,
    HTTPCircuitOpenError,
    HTTPHalfOpenLimitReached,
    install,
    origin,
)

#: Seconds a test waits at most for a thread or the server (never reached when all is well).
WAIT = 10.0
#: The OPEN period of the test profile.
TIMEOUT = 30.0
#: The test profile: three consecutive failures open; two trial successes close.
PROFILE = {
    "failure_threshold": 3,
    "failure_rate_threshold": None,
    "timeout": TIMEOUT,
    "max_timeout": 300,
    "success_threshold": 2,
    "half_open_max_calls": 1,
}


class Backend:
    """What the loopback server answers, and how many requests it received."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.status = 200
        self.headers = {}
        self.hang = False
        #: (status, headers) answers to give first, in order.
        self.script = collections.deque()
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.authorization = []

    def next_answer(self, authorization):
        with self.lock:
            self.count += 1
            self.authorization.append(authorization)
            if self.script:
                status, headers = self.script.popleft()
                return status, headers, False
            return self.status, dict(self.headers), self.hang


class Handler(BaseHTTPRequestHandler):
    """Answers as its server's Backend says; a hanging answer waits for release."""

    def do_GET(self):
        backend = self.server.backend
        status, headers, hang = backend.next_answer(self.headers.get("Authorization"))
        if hang:
            backend.arrived.set()
            backend.release.wait(WAIT)
        body = b"status %d" % status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        """Quiet: the tests read the Backend, not the access log."""


class Server(ThreadingHTTPServer):
    """A threaded HTTP server that takes many connections at once."""

    request_queue_size = 64

    def handle_error(self, request, client_address):
        # A client that gave up (read timeout) closed its socket before the
        # hanging answer was written: expected, not a test failure.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


@pytest.fixture
def make_backend():
    """Start loopback HTTP servers on demand; stop them (bounded) afterwards."""
    started = []

    def start():
        backend = Backend()
        server = Server(("127.0.0.1", 0), Handler)
        server.backend = backend
        # A short poll interval: shutdown() waits for the serving loop to notice.
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        backend.url = "http://127.0.0.1:{}".format(server.server_address[1])
        started.append((backend, server, thread))
        return backend

    yield start
    for backend, server, thread in started:
        backend.release.set()
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


@pytest.fixture
def backend(make_backend):
    """One loopback HTTP server."""
    return make_backend()


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections (bound, never listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def full_port():
    """A loopback port whose accept queue is full: connecting to it times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


@pytest.fixture
def registry(clock):
    """A registry on the test clock, with the test profile as ``http_service``."""
    return cbsync.Registry({"http_service": PROFILE}, clock=clock)


@pytest.fixture
def session(registry):
    """A Session with the adapter installed, ignoring proxy environment variables."""
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry)
        yield session


@pytest.fixture
def default_registry(clock):
    """A fresh registry installed as the process default for the test."""
    fresh = cbsync.Registry({"http_service": PROFILE}, clock=clock)
    previous = set_default_registry(fresh)
    yield fresh
    set_default_registry(previous)


def fail_until_open(session, backend, status=500):
    """Make the backend fail until the circuit opens (three failures)."""
    backend.status = status
    for _ in range(PROFILE["failure_threshold"]):
        assert session.get(backend.url).status_code == status


def shared_key(request):
    """A key putting every request on one breaker (module level: picklable)."""
    return "api"


# -- opening and rejecting ---------------------------------------------------


def test_opens_and_rejects_without_reaching_the_server(session, registry, backend):
    """Three failing responses open the circuit; the next request never reaches the server."""
    fail_until_open(session, backend)
    breaker = registry.get(backend.url, profile="http_service")
    assert breaker.state is cbsync.State.OPEN
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(backend.url + "/rates?currency=EUR")
    assert backend.count == 3
    err = caught.value
    assert err.breaker == backend.url
    assert err.state is cbsync.State.OPEN
    assert err.reason == cbsync.OpenReason("consecutive_failures", 3)
    assert err.retry_after == pytest.approx(TIMEOUT)
    assert err.request.url == backend.url + "/rates?currency=EUR"
    assert err.response is None
    snapshot = breaker.snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.calls_rejected) == (3, 0, 1)


def test_breaker_is_named_after_the_origin(session, registry, backend):
    """One breaker per origin, named scheme://host:port, whatever the path."""
    session.get(backend.url + "/a")
    session.get(backend.url + "/b?x=1")
    assert list(registry) == [backend.url]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://example.com/path", "http://example.com:80"),
        ("HTTPS://API.Example.COM/v1?q=1", "https://api.example.com:443"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("https://user:secret@example.com/", "https://example.com:443"),
        ("http://user@example.com:81/", "http://example.com:81"),
        ("http://[::1]/", "http://[::1]:80"),
        ("https://[2001:DB8::1]:8443/x", "https://[2001:db8::1]:8443"),
        ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ],
)
def test_origin_key(url, name):
    """The default key is the lower-cased origin with an explicit port and no userinfo."""
    assert origin(requests.Request("GET", url).prepare()) == name


@pytest.mark.parametrize("url", ["http:///path", "http://[::1/", None])
def test_origin_of_a_url_without_host_is_invalid_url(url):
    """A request whose URL has no usable host raises InvalidURL without repeating it."""
    request = requests.PreparedRequest()
    request.url = url
    with pytest.raises(requests.exceptions.InvalidURL) as caught:
        origin(request)
    assert "origin" in str(caught.value)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 599])
def test_failing_statuses_are_returned_and_counted(session, registry, backend, status):
    """A 429 or 5xx response reaches the caller and counts as a failure."""
    backend.status = status
    response = session.get(backend.url)
    assert response.status_code == status
    assert response.text == "status {}".format(status)
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes) == (1, 0)


@pytest.mark.parametrize("status", [200, 201, 301, 404, 428, 499])
def test_other_statuses_are_successes(session, registry, backend, status):
    """Any response outside failure_statuses counts as a success."""
    backend.status = status
    backend.headers = {"Location": "/elsewhere"} if status == 301 else {}
    response = session.get(backend.url, allow_redirects=False)
    assert response.status_code == status
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes) == (0, 1)


def test_failure_statuses_option(registry, backend):
    """failure_statuses replaces the default set."""
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry, failure_statuses={404})
        backend.status = 500
        session.get(backend.url)
        backend.status = 404
        session.get(backend.url)
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes) == (1, 1)


def test_profile_failure_result_judges_responses(clock, backend):
    """A profile's failure_result predicate also makes a response a failure."""
    registry = cbsync.Registry(
        {"http_service": {"failure_result": lambda response: "status 200" in response.text}},
        clock=clock,
    )
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry)
        session.get(backend.url)
        backend.status = 201
        session.get(backend.url)
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes) == (1, 1)


def test_connection_refused_is_a_failure(session, registry, closed_port):
    """Refused connections count as failures and open the circuit."""
    url = "http://127.0.0.1:{}/".format(closed_port)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError) as caught:
            session.get(url)
        assert not isinstance(caught.value, cbsync.CircuitOpenError)
    with pytest.raises(HTTPCircuitOpenError):
        session.get(url)
    snapshot = registry.get(url.rstrip("/"), profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.calls_rejected) == (3, 1)


def test_read_timeout_is_a_failure(session, registry, backend):
    """A read timeout counts as a failure."""
    backend.hang = True
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(backend.url, timeout=(WAIT, 0.05))  # real time: a read timeout must elapse
    assert backend.arrived.is_set()
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.ignored) == (1, 0, 0)


def test_connect_timeout_is_a_failure(session, registry, full_port):
    """A connect timeout counts as a failure."""
    url = "http://127.0.0.1:{}".format(full_port)
    with pytest.raises(requests.exceptions.ConnectTimeout):
        session.get(url, timeout=(0.05, WAIT))  # real time: a connect timeout must elapse
    snapshot = registry.get(url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.ignored) == (1, 0, 0)


def test_transport_failures_do_not_depend_on_the_profile(clock, backend, closed_port):
    """Timeouts and connection errors are failures even when failure_on says otherwise."""
    registry = cbsync.Registry({"http_service": {"failure_on": (KeyError,)}}, clock=clock)
    refused = "http://127.0.0.1:{}".format(closed_port)
    backend.hang = True
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry)
        with pytest.raises(requests.exceptions.ReadTimeout):
            session.get(backend.url, timeout=(WAIT, 0.05))  # real time: a read timeout must elapse
        with pytest.raises(requests.ConnectionError):
            session.get(refused)
    for name in (backend.url, refused):
        snapshot = registry.get(name, profile="http_service").snapshot()
        assert (snapshot.failures, snapshot.successes) == (1, 0)


class InterruptingRetry(Retry):
    """A Retry whose first retry is interrupted, as by Ctrl-C during urllib3's retry loop."""

    def increment(self, *args, **kwargs):
        raise KeyboardInterrupt


def test_interrupted_trial_returns_its_permit(session, registry, backend, clock):
    """A KeyboardInterrupt inside send() counts nothing and frees the half-open permit."""
    fail_until_open(session, backend, 503)
    clock.advance(TIMEOUT)
    with requests.Session() as interrupted:
        interrupted.trust_env = False
        install(
            interrupted,
            registry=registry,
            max_retries=InterruptingRetry(1, status_forcelist=[503]),
        )
        with pytest.raises(KeyboardInterrupt):
            interrupted.get(backend.url)
    backend.status = 200
    assert session.get(backend.url).status_code == 200
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.ignored) == (3, 1, 0)
    assert snapshot.state is cbsync.State.HALF_OPEN
    assert backend.count == 5


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"timeout": (1, 2, 3)}, ValueError),
        ({"timeout": "soon"}, ValueError),
        ({"proxies": {"http": "http://"}}, requests.exceptions.InvalidProxyURL),
        ({"cert": "/nonexistent/client.pem"}, OSError),
    ],
)
def test_caller_mistakes_are_ignored(session, registry, backend, options, error):
    """A mistake of the caller counts as neither success nor failure."""
    with pytest.raises(error):
        session.get(backend.url, **options)
    assert backend.count == 0
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.successes, snapshot.ignored) == (0, 0, 1)


def test_malformed_retry_after_while_retrying_is_a_failure(registry, backend):
    """A server's malformed Retry-After that breaks urllib3's retry counts as a failure."""
    backend.status = 503
    backend.headers = {"Retry-After": "soon"}
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry, max_retries=Retry(total=2, status_forcelist=[503]))
        # requests >= 2.28 wraps urllib3's InvalidHeader; 2.25 lets it through.
        with pytest.raises((requests.exceptions.InvalidHeader, urllib3.exceptions.InvalidHeader)):
            session.get(backend.url)
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.failures, snapshot.ignored) == (1, 0)


# -- the open error -----------------------------------------------------------


def caught_by(handler, call):
    """Whether ``except handler`` catches what ``call()`` raises."""
    try:
        call()
    except handler:
        return True
    except Exception:
        return False
    return False


def test_open_error_is_a_requests_error_not_a_builtin_connection_error(session, backend):
    """except requests.RequestException catches the open error; ConnectionError does not."""
    fail_until_open(session, backend)
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(backend.url)
    err = caught.value
    assert isinstance(err, requests.exceptions.ConnectionError)
    assert isinstance(err, cbsync.CircuitOpenError)
    assert caught_by(requests.RequestException, lambda: session.get(backend.url))
    assert not caught_by(builtins.ConnectionError, lambda: session.get(backend.url))
    assert backend.count == 3
    assert str(err) == "circuit {!r} is open (consecutive_failures=3); retry after 30.000s".format(
        backend.url
    )


def test_open_error_pickles(session, backend):
    """The open error survives pickling with its fields, message and request."""
    fail_until_open(session, backend)
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(backend.url + "/x", headers={"X-Trace": "1"})
    err = caught.value
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is HTTPCircuitOpenError
    assert (copy.breaker, copy.state, copy.reason, copy.retry_after) == (
        err.breaker,
        err.state,
        err.reason,
        err.retry_after,
    )
    assert str(copy) == str(err)
    assert copy.request.url == backend.url + "/x"
    assert copy.request.headers["X-Trace"] == "1"
    assert copy.response is None


def test_forced_open_rejects_with_no_retry_after(session, registry, backend):
    """A tripped breaker rejects with retry_after None."""
    session.get(backend.url)
    registry.get(backend.url, profile="http_service").trip("maintenance")
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(backend.url)
    assert caught.value.state is cbsync.State.FORCED_OPEN
    assert caught.value.retry_after is None
    assert backend.count == 1


# -- recovery -----------------------------------------------------------------


def test_recovers_through_half_open_to_closed(session, registry, backend, clock):
    """After the OPEN period, trial requests to a healthy server close the circuit."""
    fail_until_open(session, backend)
    breaker = registry.get(backend.url, profile="http_service")
    clock.advance(TIMEOUT - 1)
    with pytest.raises(HTTPCircuitOpenError):
        session.get(backend.url)
    clock.advance(1)
    backend.status = 200
    assert session.get(backend.url).status_code == 200
    assert breaker.state is cbsync.State.HALF_OPEN
    assert session.get(backend.url).status_code == 200
    assert breaker.state is cbsync.State.CLOSED
    assert backend.count == 5
    assert [(t.old, t.new) for t in breaker.snapshot().transitions] == [
        (cbsync.State.CLOSED, cbsync.State.OPEN),
        (cbsync.State.OPEN, cbsync.State.HALF_OPEN),
        (cbsync.State.HALF_OPEN, cbsync.State.CLOSED),
    ]


def test_half_open_with_every_permit_in_use_rejects(session, registry, backend, clock):
    """While the only trial request runs, another is rejected with HTTPHalfOpenLimitReached."""
    fail_until_open(session, backend)
    clock.advance(TIMEOUT)
    backend.status = 200
    backend.hang = True
    results = []
    trial = threading.Thread(target=lambda: results.append(session.get(backend.url, timeout=WAIT)))
    trial.start()
    try:
        assert backend.arrived.wait(WAIT)
        with pytest.raises(HTTPHalfOpenLimitReached) as caught:
            session.get(backend.url)
    finally:
        backend.release.set()
        trial.join(WAIT)
    assert isinstance(caught.value, HTTPCircuitOpenError)
    assert isinstance(caught.value, cbsync.HalfOpenLimitReached)
    assert caught.value.state is cbsync.State.HALF_OPEN
    assert caught.value.request.url == backend.url + "/"
    assert [response.status_code for response in results] == [200]
    assert backend.count == 4
    breaker = registry.get(backend.url, profile="http_service")
    assert breaker.state is cbsync.State.HALF_OPEN
    assert breaker.snapshot().successes == 1


# -- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "open_for"),
    [
        (503, "120", 120.0),
        (429, "120", 120.0),
        (503, "100000", 300.0),  # capped at max_timeout
        (503, "10", TIMEOUT),  # shorter than the timeout: the timeout wins
        (503, "soon", TIMEOUT),  # malformed: ignored
        (503, "-5", TIMEOUT),  # negative: ignored
        (503, "", TIMEOUT),
        (500, "120", 120.0),  # any failing status's Retry-After is honoured
    ],
)
def test_retry_after_lengthens_the_open_period(
    session, registry, backend, clock, status, retry_after, open_for
):
    """A Retry-After on the response that opens the circuit sets the OPEN period's floor."""
    backend.status = status
    backend.headers = {"Retry-After": retry_after}
    fail_until_open(session, backend, status)
    breaker = registry.get(backend.url, profile="http_service")
    assert breaker.retry_after == pytest.approx(open_for)
    clock.advance(open_for - 0.5)
    with pytest.raises(HTTPCircuitOpenError):
        session.get(backend.url)
    clock.advance(0.5)
    backend.status = 200
    session.get(backend.url)
    assert breaker.state is cbsync.State.HALF_OPEN
    assert backend.count == 4


def test_retry_after_as_http_date(session, registry, backend):
    """A Retry-After HTTP date counts from now."""
    backend.headers = {"Retry-After": email.utils.formatdate(time.time() + 200, usegmt=True)}
    fail_until_open(session, backend, 503)
    retry_after = registry.get(backend.url, profile="http_service").retry_after
    assert 195 < retry_after <= 200


def test_retry_after_only_counts_on_the_opening_response(session, registry, backend):
    """A Retry-After on an earlier failure that did not open the circuit changes nothing."""
    backend.status = 503
    backend.script.append((503, {"Retry-After": "200"}))
    fail_until_open(session, backend, 503)
    assert registry.get(backend.url, profile="http_service").retry_after == pytest.approx(TIMEOUT)


# -- urllib3 retries ----------------------------------------------------------


def retrying_session(registry, **retry):
    session = requests.Session()
    session.trust_env = False
    install(session, registry=registry, max_retries=Retry(backoff_factor=0, **retry))
    return session


def test_retries_run_inside_one_protected_call(registry, backend):
    """Retry(total=2, status_forcelist=[503]) sends three requests, recorded as one failure."""
    backend.status = 503
    session = retrying_session(registry, total=2, status_forcelist=[503])
    with session, pytest.raises(requests.exceptions.RetryError):
        session.get(backend.url)
    assert backend.count == 3
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.calls_allowed, snapshot.failures, snapshot.successes) == (1, 1, 0)


def test_exhausted_retries_returning_the_response_are_one_failure(registry, backend):
    """With raise_on_status=False the last 503 is returned and recorded once."""
    backend.status = 503
    with retrying_session(
        registry, total=2, status_forcelist=[503], raise_on_status=False
    ) as session:
        assert session.get(backend.url).status_code == 503
    assert backend.count == 3
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.calls_allowed, snapshot.failures) == (1, 1)


def test_a_retry_that_succeeds_is_one_success(registry, backend):
    """Two 503s then a 200, retried by urllib3, are one successful call."""
    backend.script.extend([(503, {}), (503, {})])
    with retrying_session(registry, total=2, status_forcelist=[503]) as session:
        assert session.get(backend.url).status_code == 200
    assert backend.count == 3
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.calls_allowed, snapshot.failures, snapshot.successes) == (1, 0, 1)


def test_retry_after_of_a_retried_response_opens_for_longer(clock, backend):
    """The final response's Retry-After still sets the OPEN period after urllib3's retries."""
    registry = cbsync.Registry({"http_service": dict(PROFILE, failure_threshold=1)}, clock=clock)
    backend.status = 503
    backend.headers = {"Retry-After": "90"}
    retry = {"respect_retry_after_header": False, "raise_on_status": False}
    with retrying_session(registry, total=1, status_forcelist=[503], **retry) as session:
        assert session.get(backend.url).status_code == 503
    assert backend.count == 2
    assert registry.get(backend.url, profile="http_service").retry_after == pytest.approx(90)


# -- several origins, keys, options --------------------------------------------


def test_two_origins_are_independent(session, registry, make_backend):
    """One origin's open circuit does not affect another's."""
    failing, healthy = make_backend(), make_backend()
    fail_until_open(session, failing)
    with pytest.raises(HTTPCircuitOpenError):
        session.get(failing.url)
    for _ in range(5):
        assert session.get(healthy.url).status_code == 200
    assert registry.get(healthy.url, profile="http_service").state is cbsync.State.CLOSED
    assert registry.get(failing.url, profile="http_service").state is cbsync.State.OPEN
    assert (failing.count, healthy.count) == (3, 5)


def test_custom_key(registry, make_backend):
    """key= maps requests to breaker names of the caller's choosing."""
    first, second = make_backend(), make_backend()
    first.status = second.status = 500
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry, key=shared_key)
        for backend in (first, second, first):
            session.get(backend.url)
        with pytest.raises(HTTPCircuitOpenError) as caught:
            session.get(second.url)
    assert caught.value.breaker == "api"
    assert list(registry) == ["api"]


@pytest.mark.parametrize("returned", [None, "", b"api", 42])
def test_key_must_return_a_name(registry, backend, returned):
    """A key returning anything but a non-empty str raises ConfigError, before any request."""
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry, key=lambda request: returned)
        with pytest.raises(cbsync.ConfigError, match="key="):
            session.get(backend.url)
    assert backend.count == 0


def test_profile_option(clock, backend):
    """profile= chooses the profile the breakers are built from."""
    registry = cbsync.Registry({"payments": {"failure_threshold": 1}}, clock=clock)
    with requests.Session() as session:
        session.trust_env = False
        adapter = install(session, registry=registry, profile="payments")
        backend.status = 502
        session.get(backend.url)
        with pytest.raises(HTTPCircuitOpenError):
            session.get(backend.url)
    assert adapter.profile == "payments"
    assert registry.get(backend.url, profile="payments").config.failure_threshold == 1


def test_default_registry_is_looked_up_at_each_request(clock, backend):
    """Without registry=, each request uses the process default registry of that moment."""
    first = cbsync.Registry(clock=clock)
    second = cbsync.Registry(clock=clock)
    previous = set_default_registry(first)
    try:
        with requests.Session() as session:
            session.trust_env = False
            adapter = install(session)
            session.get(backend.url)
            set_default_registry(second)
            session.get(backend.url)
            assert adapter.registry is second
    finally:
        set_default_registry(previous)
    assert [s.successes for r in (first, second) for s in r.snapshot().values()] == [1, 1]


def test_install_mounts_for_http_and_https():
    """install() mounts one adapter for both schemes and returns it."""
    with requests.Session() as session:
        adapter = install(session, pool_maxsize=4)
        assert isinstance(adapter, CircuitBreakerAdapter)
        assert session.get_adapter("http://example.com/") is adapter
        assert session.get_adapter("https://example.com/") is adapter


def test_http_adapter_arguments_still_work():
    """pool_connections, pool_maxsize, max_retries and pool_block reach HTTPAdapter."""
    retry = Retry(total=4, status_forcelist=[502])
    adapter = CircuitBreakerAdapter(
        pool_connections=3, pool_maxsize=7, max_retries=retry, pool_block=True
    )
    assert adapter.max_retries is retry
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 7
    assert adapter.poolmanager.connection_pool_kw["block"] is True
    assert adapter.poolmanager.pools._maxsize == 3
    assert CircuitBreakerAdapter(max_retries=2).max_retries.total == 2
    assert CircuitBreakerAdapter().max_retries.total == 0


def test_http_adapter_arguments_work_by_position():
    """HTTPAdapter's arguments are accepted in its order; cbsync's are keyword-only."""
    retry = Retry(total=4)
    adapter = CircuitBreakerAdapter(3, 7, retry, True, profile="payments")
    assert adapter.max_retries is retry
    assert adapter.poolmanager.connection_pool_kw["maxsize"] == 7
    assert adapter.poolmanager.connection_pool_kw["block"] is True
    assert adapter.poolmanager.pools._maxsize == 3
    assert adapter.profile == "payments"
    two = CircuitBreakerAdapter(10, 20)
    assert two.poolmanager.connection_pool_kw["maxsize"] == 20
    assert two.poolmanager.pools._maxsize == 10
    positional = list(inspect.signature(CircuitBreakerAdapter).parameters)[:4]
    assert positional == list(inspect.signature(requests.adapters.HTTPAdapter).parameters)
    with pytest.raises(TypeError):
        CircuitBreakerAdapter(3, 7, retry, True, None)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"registry": "default"}, "registry="),
        ({"profile": ""}, "profile="),
        ({"profile": 3}, "profile="),
        ({"key": "origin"}, "key="),
        ({"failure_statuses": [500, 600]}, "600"),
        ({"failure_statuses": ["500"]}, "'500'"),
        ({"failure_statuses": "500"}, "failure_statuses="),
        ({"failure_statuses": 500}, "failure_statuses="),
        ({"failure_statuses": [True]}, "True"),
    ],
)
def test_bad_options_raise_config_error(options, message):
    """A bad option raises ConfigError naming it."""
    with pytest.raises(cbsync.ConfigError, match=message):
        CircuitBreakerAdapter(**options)


def test_install_needs_a_session():
    """install() on something that is not a Session raises ConfigError."""
    with pytest.raises(cbsync.ConfigError, match=r"requests\.Session"):
        install(object())


# -- credentials --------------------------------------------------------------


def test_credentials_never_leak(session, registry, backend, closed_port, caplog):
    """user:secret@ in a URL never shows in a breaker name, a log line or an error message."""
    caplog.set_level(logging.DEBUG)
    url = backend.url.replace("http://", "http://user:secret@") + "/private"
    backend.status = 500
    errors = []
    for _ in range(3):
        session.get(url)
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(url)
    errors.append(caught.value)
    refused = "http://user:secret@127.0.0.1:{}/".format(closed_port)
    for _ in range(3):
        with pytest.raises(requests.ConnectionError) as caught:
            session.get(refused)
        errors.append(caught.value)
    with pytest.raises(HTTPCircuitOpenError) as caught:
        session.get(refused)
    errors.append(caught.value)
    assert backend.authorization[0].startswith("Basic ")  # credentials still sent
    assert len(registry) == 2
    for name in registry:
        assert "secret" not in name
        assert "user" not in name
    assert "circuit breaker" in caplog.text  # the state changes were logged
    assert "secret" not in caplog.text
    for err in errors:
        assert "secret" not in str(err)
        assert "secret" not in repr(err)


# -- pickling -----------------------------------------------------------------


def test_adapter_pickles(default_registry, backend):
    """An unpickled adapter keeps its options and uses the default registry of its new home."""
    retry = Retry(total=2, status_forcelist=[503], backoff_factor=0)
    adapter = CircuitBreakerAdapter(
        profile="http_service",
        key=shared_key,
        failure_statuses={500},
        pool_maxsize=5,
        max_retries=retry,
    )
    copy = pickle.loads(pickle.dumps(adapter))
    assert type(copy) is CircuitBreakerAdapter
    assert (copy.profile, copy.failure_statuses, copy._key) == ("http_service", {500}, shared_key)
    assert copy.max_retries.total == 2
    assert copy.max_retries.status_forcelist == [503]
    assert copy.poolmanager.connection_pool_kw["maxsize"] == 5
    other = cbsync.Registry()
    set_default_registry(other)
    with requests.Session() as session:
        session.trust_env = False
        session.mount("http://", copy)
        session.get(backend.url)
    assert list(other) == ["api"]
    assert len(default_registry) == 0


def test_session_with_the_adapter_pickles(session, registry, backend):
    """A pickled Session keeps the adapter, and in this process its registry."""
    backend.status = 500
    copy = pickle.loads(pickle.dumps(session))
    copy.trust_env = False
    adapter = copy.get_adapter(backend.url)
    assert isinstance(adapter, CircuitBreakerAdapter)
    assert adapter.registry is registry
    for _ in range(2):
        session.get(backend.url)
    copy.get(backend.url)
    assert registry.get(backend.url, profile="http_service").state is cbsync.State.OPEN
    copy.close()


def test_lambda_key_does_not_pickle():
    """A lambda key cannot be pickled, and pickling says so."""
    adapter = CircuitBreakerAdapter(key=lambda request: "api")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(adapter)


CHILD = r"""
import logging, pickle, sys
import cbsync
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
adapter = pickle.loads(sys.stdin.buffer.read())
print("default" if adapter.registry is cbsync.default_registry() else "other")
print(adapter.profile)
"""


def test_explicit_registry_in_another_process_falls_back_to_the_default(registry):
    """Unpickled in another process, an adapter's explicit registry becomes the default one."""
    adapter = CircuitBreakerAdapter(registry=registry, profile="payments")
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=pickle.dumps(adapter),
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("WARNING cbsync: an unpickled CircuitBreakerAdapter's registry")
    assert lines[1:] == ["default", "payments"]


# -- threads ------------------------------------------------------------------

THREADS = 8
REQUESTS_PER_THREAD = 20


def hammer(session, url):
    """THREADS threads send REQUESTS_PER_THREAD requests each, started together."""
    barrier = threading.Barrier(THREADS, timeout=WAIT)
    lock = threading.Lock()
    outcomes = collections.Counter()

    def worker():
        barrier.wait()
        for _ in range(REQUESTS_PER_THREAD):
            try:
                outcome = session.get(url, timeout=WAIT).status_code
            except HTTPCircuitOpenError:
                outcome = "rejected"
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def hammer_a_shared_session(registry, backend, status):
    """``hammer()`` one Session adapted on ``registry``, ``backend`` answering ``status``."""
    backend.status = status
    with requests.Session() as session:
        session.trust_env = False
        install(session, registry=registry, pool_maxsize=THREADS)
        return hammer(session, backend.url)


def test_threads_sharing_a_session_count_exactly(clock, backend):
    """8 threads on one Session against a failing server: every request counted once."""
    registry = cbsync.Registry(
        {"http_service": {"failure_threshold": None, "failure_rate_threshold": None}},
        clock=clock,
    )
    outcomes = hammer_a_shared_session(registry, backend, 500)
    total = THREADS * REQUESTS_PER_THREAD
    assert outcomes == {500: total}
    assert backend.count == total
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert (snapshot.calls_allowed, snapshot.failures, snapshot.successes) == (total, total, 0)


def test_threads_open_the_circuit_once(clock, backend):
    """Under contention the circuit opens once and admitted + rejected add up exactly."""
    registry = cbsync.Registry(
        {"http_service": {"failure_threshold": 40, "failure_rate_threshold": None}},
        clock=clock,
    )
    outcomes = hammer_a_shared_session(registry, backend, 503)
    snapshot = registry.get(backend.url, profile="http_service").snapshot()
    assert sum(outcomes.values()) == THREADS * REQUESTS_PER_THREAD
    assert outcomes[503] == backend.count == snapshot.calls_allowed == snapshot.failures
    assert 40 <= backend.count < 40 + THREADS
    assert outcomes["rejected"] == snapshot.calls_rejected
    assert [(t.old, t.new) for t in snapshot.transitions] == [
        (cbsync.State.CLOSED, cbsync.State.OPEN)
    ]


# -- docs ---------------------------------------------------------------------


def test_docstring_examples():
    """The examples in the module's docstrings pass."""
    result = doctest.testmod(cb_requests, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
