"""The dashboard's WSGI application, JSON document, actions, fleet view and command,
over real HTTP on loopback (the browser tests are in test_dashboard_browser.py)."""

import argparse
import datetime
import json
import logging
import threading
import urllib.error
import urllib.request

import pytest
from freezegun import freeze_time

import cbsync
from cbsync import ConfigError, State
from cbsync.integrations.dashboard import (
    API_VERSION,
    Dashboard,
    add_dashboard,
    mount,
    run_dashboard,
    start_server,
)

TOKEN = "test-token-0123456789abcdef"

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url, data=None, headers=None, method=None):
    """``(status, headers, body)`` of a request; an HTTP error is an answer too."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def post(url, document, token=None, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    return fetch(url, json.dumps(document).encode("utf-8"), headers, "POST")


def api(server, query=""):
    status, headers, body = fetch(server.url + "api/breakers" + query)
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    return json.loads(body)


def failures(breaker, count):
    for _ in range(count):
        with pytest.raises(OSError):
            breaker.call(_fail)


def _fail():
    raise OSError("dependency down")


@pytest.fixture
def serve():
    """Start dashboards on free loopback ports; stop them afterwards."""
    started = []

    def start(app):
        server = start_server(app, port=0)
        started.append((server, app))
        return server

    yield start
    for server, app in started:
        server.close()
        if isinstance(app, Dashboard):
            app.close()


# -- the JSON document ------------------------------------------------------------

OPTIONAL_NUMBER = (int, float, type(None))
OPTIONAL_TEXT = (str, type(None))
DOCUMENT_FIELDS = {
    "version": int,
    "view": str,
    "source": str,
    "generated_at": str,
    "read_at": OPTIONAL_TEXT,
    "available": bool,
    "unavailable_since": OPTIONAL_TEXT,
    "error": OPTIONAL_TEXT,
    "actions": bool,
    "interval": OPTIONAL_NUMBER,
    "history_size": int,
    "breakers": list,
}
BREAKER_FIELDS = {
    "name": str,
    "state": str,
    "state_code": int,
    "reason": OPTIONAL_TEXT,
    "reason_kind": OPTIONAL_TEXT,
    "since": OPTIONAL_TEXT,
    "seconds_in_state": OPTIONAL_NUMBER,
    "retry_after": OPTIONAL_NUMBER,
    "calls_per_second": OPTIONAL_NUMBER,
    "rejected_per_second": OPTIONAL_NUMBER,
    "failure_rate": OPTIONAL_NUMBER,
    "slow_call_rate": OPTIONAL_NUMBER,
    "window_calls": int,
    "consecutive_failures": int,
    "p99_latency": OPTIONAL_NUMBER,
    "transitions": list,
    "history": dict,
}
TRANSITION_FIELDS = {"at": str, "old": str, "new": str, "reason": str}
STATES = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 4}


def check_schema(document, history=True):
    """Fail unless ``document`` has exactly the documented fields, of the documented types."""
    assert set(document) == set(DOCUMENT_FIELDS)
    for field, kind in DOCUMENT_FIELDS.items():
        assert isinstance(document[field], kind), (field, document[field])
    assert document["version"] == API_VERSION == 1
    assert document["view"] in ("local", "fleet")
    datetime.datetime.fromisoformat(document["generated_at"])
    for entry in document["breakers"]:
        expected = dict(BREAKER_FIELDS)
        if not history:
            del expected["history"]
        assert set(entry) == set(expected), entry["name"]
        for field, kind in expected.items():
            assert isinstance(entry[field], kind), (entry["name"], field, entry[field])
        assert STATES[entry["state"]] == entry["state_code"]
        for transition in entry["transitions"]:
            assert set(transition) == set(TRANSITION_FIELDS)
            assert transition["old"] in STATES
            assert transition["new"] in STATES
            assert datetime.datetime.fromisoformat(transition["at"]).tzinfo is not None
        if history:
            assert set(entry["history"]) == {"calls_per_second", "failure_rate"}
            for series in entry["history"].values():
                assert len(series) <= document["history_size"]
                assert all(isinstance(v, OPTIONAL_NUMBER) for v in series)


def test_api_breakers_has_the_documented_fields_and_types(serve):
    """/api/breakers: every documented field, with its type, for breakers in every state."""
    registry = cbsync.Registry()
    failures(registry.get("open-one", failure_threshold=1), 1)
    registry.get("tripped").trip("deploy")
    registry.get("off").disable()
    registry.get("fine").call(lambda: "ok")
    server = serve(Dashboard(registry, interval=None))
    document = api(server)
    check_schema(document)
    assert document["view"] == "local"
    assert document["actions"] is False
    assert document["available"] is True
    assert {entry["name"]: entry["state"] for entry in document["breakers"]} == {
        "open-one": "open",
        "tripped": "forced_open",
        "off": "disabled",
        "fine": "closed",
    }
    tripped = next(entry for entry in document["breakers"] if entry["name"] == "tripped")
    assert tripped["reason"] == "manual=deploy"
    assert tripped["reason_kind"] == "manual"
    assert tripped["transitions"][0]["new"] == "forced_open"
    opened = next(entry for entry in document["breakers"] if entry["name"] == "open-one")
    assert 0 < opened["retry_after"] <= 30
    assert opened["failure_rate"] == 1.0
    assert opened["p99_latency"] > 0
    without = api(server, "?history=0")
    check_schema(without, history=False)


def test_breakers_are_sorted_open_and_half_open_first(serve, clock):
    """Open and forced-open first, then half-open, disabled, closed; by name within a rank."""
    registry = cbsync.Registry(clock=clock)
    for name in ("b-closed", "a-closed"):
        registry.get(name)
    half = registry.get("h-half", failure_threshold=1, timeout=10)
    failures(half, 1)
    clock.advance(10)
    permit = half.acquire()  # the trial call, in flight: HALF_OPEN
    failures(registry.get("z-open", failure_threshold=1), 1)
    registry.get("m-forced").trip()
    registry.get("d-disabled").disable()
    server = serve(Dashboard(registry, interval=None))
    names = [entry["name"] for entry in api(server)["breakers"]]
    permit.success()
    assert names == ["m-forced", "z-open", "h-half", "d-disabled", "a-closed", "b-closed"]


def test_rates_and_sparkline_come_from_samples_in_a_bounded_ring():
    """calls/s and rejected/s are per sample interval; history keeps the last N samples."""
    registry = cbsync.Registry()
    breaker = registry.get("payments", failure_threshold=3)
    dashboard = Dashboard(registry, interval=None, history=3)
    with freeze_time("2026-12-01 09:00:00") as frozen:
        dashboard.sample()  # the baseline: no rate yet
        for calls in (10, 20, 30, 40):
            for _ in range(calls):
                breaker.call(lambda: None)
            frozen.tick(2.0)
            dashboard.sample()
        (entry,) = dashboard.document()["breakers"]
        assert entry["calls_per_second"] == 20.0
        assert entry["rejected_per_second"] == 0.0
        assert entry["history"]["calls_per_second"] == [10.0, 15.0, 20.0]
        assert entry["history"]["failure_rate"] == [0.0, 0.0, 0.0]
        failures(breaker, 3)
        for _ in range(6):
            with pytest.raises(cbsync.CircuitOpenError):
                breaker.call(lambda: None)
        frozen.tick(2.0)
        dashboard.sample()
        (entry,) = dashboard.document()["breakers"]
    assert entry["calls_per_second"] == 1.5  # the 3 failures
    assert entry["rejected_per_second"] == 3.0
    assert entry["history"]["calls_per_second"] == [15.0, 20.0, 1.5]
    assert entry["history"]["failure_rate"][-1] == round(3 / 103, 6)  # JSON keeps 6 digits


def test_a_breaker_gone_from_the_source_is_forgotten(breaker_registry):
    """History is kept only for breakers still in the source: memory follows the registry."""
    from cbsync._registry import set_default_registry

    breaker_registry.get("first")
    dashboard = Dashboard(interval=None)  # cbsync.registry: follows the default
    dashboard.sample()
    dashboard.sample()
    assert dashboard._history.series("first")[0] == (None, 0.0)
    previous = set_default_registry(cbsync.Registry())
    try:
        cbsync.registry.get("second")
        dashboard.sample()
        assert dashboard._history.series("first") == ((), ())
        assert dashboard._history.series("second")[0] == (None,)
        assert [e["name"] for e in dashboard.document()["breakers"]] == ["second"]
    finally:
        set_default_registry(previous)


def test_the_sampling_thread_fills_the_history_and_stops_on_close(serve):
    """With an interval, the first request starts a daemon thread sampling; close() stops it."""
    registry = cbsync.Registry()
    registry.get("payments").call(lambda: None)
    dashboard = Dashboard(registry, interval=0.05)
    assert dashboard._reporter is None  # nothing runs before the first request
    server = serve(dashboard)
    api(server)
    thread = dashboard._reporter._thread
    assert thread.daemon
    assert thread.is_alive()
    deadline = threading.Event()
    for _ in range(200):
        if len(dashboard._history.series("payments")[0]) >= 3:
            break
        deadline.wait(0.02)  # real time: the sampler's interval
    assert len(dashboard._history.series("payments")[0]) >= 3
    dashboard.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_filter_by_name_in_the_page_and_the_document(serve):
    """?q= keeps the breakers whose name contains it, case-insensitively."""
    registry = cbsync.Registry()
    for name in ("payments", "Payouts", "search"):
        registry.get(name)
    server = serve(Dashboard(registry, interval=None))
    assert [e["name"] for e in api(server, "?q=PAY")["breakers"]] == ["Payouts", "payments"]
    status, _, body = fetch(server.url + "?q=pay")
    page = body.decode("utf-8")
    assert status == 200
    tiles = page.split("<template")[0]
    assert tiles.count("<article ") == 3  # all rendered, the others hidden for the script
    assert '<article class="tile state-closed" data-name="search" hidden>' in tiles
    assert 'value="pay"' in page


# -- the page -------------------------------------------------------------------


def test_page_escapes_hostile_names_and_reasons(serve):
    """A breaker name or trip reason with markup is shown as text, never as markup."""
    registry = cbsync.Registry()
    registry.get("<script>alert(1)</script>").trip('"><img src=x onerror=alert(2)>')
    server = serve(Dashboard(registry, interval=None))
    status, headers, body = fetch(server.url)
    page = body.decode("utf-8")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<script>alert" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_page_shows_state_as_a_word_and_an_icon_not_only_a_colour(serve):
    """Each tile carries its state as a word and an icon beside its colour class."""
    registry = cbsync.Registry()
    registry.get("tripped").trip()
    registry.get("fine")
    server = serve(Dashboard(registry, interval=None))
    page = fetch(server.url)[2].decode("utf-8")
    assert '<span class="icon" aria-hidden="true">\u2298</span> forced open' in page
    assert '<span class="icon" aria-hidden="true">\u2714</span> closed' in page
    assert page.index('data-name="tripped"') < page.index('data-name="fine"')


def test_everything_is_served_by_the_app_under_its_mount_point(serve):
    """Mounted under a prefix, every URL of the page starts with SCRIPT_NAME; assets load."""

    def host_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"host app at " + environ["PATH_INFO"].encode()]

    registry = cbsync.Registry()
    registry.get("payments")
    dashboard = Dashboard(registry, interval=None)
    server = serve(mount(host_app, "/ops/breakers", dashboard))
    assert fetch(server.url + "orders")[2] == b"host app at /orders"
    status, _, body = fetch(server.url + "ops/breakers/")
    page = body.decode("utf-8")
    assert status == 200
    assert 'src="/ops/breakers/static/dashboard.js"' in page
    assert 'href="/ops/breakers/static/dashboard.css"' in page
    assert 'href="/ops/breakers/static/icon.svg"' in page
    assert 'data-api="/ops/breakers/api"' in page
    assert "http" not in page.replace("http://www.w3.org", "")  # nothing from elsewhere
    for asset, kind in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        status, headers, body = fetch(server.url + "ops/breakers/static/" + asset)
        assert status == 200
        assert headers["Content-Type"].startswith(kind)
        assert body
    assert fetch(server.url + "ops/breakers")[0] == 200  # without the trailing slash too
    document = json.loads(fetch(server.url + "ops/breakers/api/breakers")[2])
    assert [entry["name"] for entry in document["breakers"]] == ["payments"]
    assert fetch(server.url + "ops/breakers/static/../dashboard.py")[0] == 404
    assert fetch(server.url + "ops/breakers/nothing")[0] == 404


def test_mount_refuses_a_prefix_that_is_not_a_path():
    """mount() needs a prefix such as "/ops": anything else is a ConfigError."""
    for prefix in ("ops", "/", ""):
        with pytest.raises(ConfigError, match="prefix"):
            mount(lambda environ, start_response: [], prefix, Dashboard(interval=None))


def test_head_and_other_methods(serve):
    """HEAD answers without a body; a method the route does not take is 405 with Allow."""
    server = serve(Dashboard(cbsync.Registry(), interval=None))
    status, headers, body = fetch(server.url + "api/breakers", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    status, headers, _ = fetch(server.url + "api/breakers", data=b"{}", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    status, headers, _ = fetch(server.url + "api/reset")
    assert status == 405
    assert headers["Allow"] == "POST"


# -- actions --------------------------------------------------------------------


def test_read_only_dashboard_refuses_every_action_and_changes_nothing(serve, caplog):
    """Without a token: no buttons, and a POST (even with a token) is 403; the breaker stays."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    server = serve(Dashboard(registry, interval=None))
    page = fetch(server.url)[2].decode("utf-8")
    assert "<button" not in page
    assert 'name="token"' not in page
    caplog.set_level(logging.WARNING, logger="cbsync")
    for action in ("trip", "reset"):
        status, _, body = post(server.url + "api/" + action, {"name": "payments"}, TOKEN)
        assert status == 403
        assert "read-only" in json.loads(body)["error"]
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().transitions == ()
    assert "refused a trip from someone from 127.0.0.1" in caplog.text


def test_actions_need_the_token_in_a_header(serve, caplog):
    """With a token: a wrong or missing one, or a form post, is refused; the right one acts."""
    registry = cbsync.Registry()
    breaker = registry.get("payments")
    server = serve(Dashboard(registry, token=TOKEN, interval=None))
    url = server.url + "api/trip"
    assert post(url, {"name": "payments"})[0] == 403
    assert post(url, {"name": "payments"}, TOKEN[:-1] + "x")[0] == 403
    assert post(url, {"name": "payments"}, TOKEN + "x")[0] == 403
    # What a cross-site form could send: no JSON, no header.
    form = fetch(
        url, b"name=payments", {"Content-Type": "application/x-www-form-urlencoded"}, "POST"
    )
    assert form[0] == 403
    assert post(url, {"name": "payments"}, TOKEN, content_type="text/plain")[0] == 415
    assert breaker.state is State.CLOSED

    caplog.set_level(logging.WARNING, logger="cbsync")
    status, _, body = post(
        url, {"name": "payments", "reason": "db migration", "operator": "ana"}, TOKEN
    )
    assert status == 200
    assert json.loads(body) == {"name": "payments", "action": "trip", "state": "forced_open"}
    assert breaker.state is State.FORCED_OPEN
    assert breaker.snapshot().transitions[-1].reason == cbsync.TransitionReason(
        "manual", "db migration"
    )
    assert (
        "cbsync dashboard: 'ana' (someone from 127.0.0.1) tripped breaker 'payments' "
        "(reason 'db migration'); now forced_open" in caplog.text
    )
    status, _, body = post(server.url + "api/reset", {"name": "payments"}, TOKEN)
    assert status == 200
    assert json.loads(body)["state"] == "closed"
    assert breaker.state is State.CLOSED
    assert "someone from 127.0.0.1 reset breaker 'payments'; now closed" in caplog.text


def test_bad_action_requests_get_clear_errors(serve):
    """Unknown breaker: 404 with a suggestion; a body that is not a JSON object: 400."""
    registry = cbsync.Registry()
    registry.get("payments")
    server = serve(Dashboard(registry, token=TOKEN, interval=None))
    url = server.url + "api/reset"
    status, _, body = post(url, {"name": "paymnets"}, TOKEN)
    assert status == 404
    assert json.loads(body)["error"] == "no breaker named 'paymnets'; did you mean 'payments'?"
    assert post(url, ["payments"], TOKEN)[0] == 400
    assert post(url, {"name": ""}, TOKEN)[0] == 400
    assert post(url, {"name": "payments", "reason": 3}, TOKEN)[0] == 400
    bad = fetch(
        url,
        b"{not json",
        {"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN},
        "POST",
    )
    assert bad[0] == 400
    big = {"name": "payments", "reason": "x" * 5000}
    assert post(url, big, TOKEN)[0] == 400


def test_page_has_buttons_and_token_field_only_with_a_token(serve):
    """The trip and reset buttons and the token field exist when actions are enabled."""
    registry = cbsync.Registry()
    registry.get("payments")
    page = fetch(serve(Dashboard(registry, token=TOKEN, interval=None)).url)[2].decode("utf-8")
    tiles = page.split("<template")[0]
    assert 'data-action="trip"' in tiles
    assert 'data-action="reset"' in tiles
    assert '<input type="password" name="token"' in page
    assert TOKEN not in page


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"token": "short"}, "at least 16 characters"),
        ({"token": 12345678901234567}, "token must be a string"),
        ({"history": 1}, "history=1"),
        ({"interval": 0}, "interval"),
        ({"poll": "soon"}, "poll"),
        ({"source": 42}, "source=42"),
        ({"source": cbsync.Registry(), "store": object()}, "either source="),
    ],
)
def test_bad_options_are_config_errors(options, message):
    """Every bad option is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=message):
        Dashboard(**options)


def test_default_source_follows_the_default_registry(breaker_registry):
    """Dashboard() shows cbsync.registry: the breakers of the current default registry."""
    breaker_registry.get("from-the-default")
    dashboard = Dashboard(interval=None)
    assert [e["name"] for e in dashboard.document()["breakers"]] == ["from-the-default"]


# -- the command ----------------------------------------------------------------


def parse(argv):
    parser = argparse.ArgumentParser(prog="cbsync")
    add_dashboard(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dashboard", *argv])


def run_in_thread(args, out):
    """Run ``cbsync dashboard`` in a thread; return (server, thread, result list)."""
    ready = threading.Event()
    servers = []
    result = []

    def started(server):
        servers.append(server)
        ready.set()

    thread = threading.Thread(
        target=lambda: result.append(run_dashboard(args, out=out, started=started)), daemon=True
    )
    thread.start()
    assert ready.wait(10), "the dashboard did not start"
    return servers[0], thread, result


def test_command_defaults():
    """cbsync dashboard listens on 127.0.0.1:8025, read-only, without Redis by default."""
    args = parse([])
    assert (args.host, args.port, args.token, args.prefix) == ("127.0.0.1", 8025, None, "cbsync:")


def test_command_takes_the_token_from_the_environment(monkeypatch):
    """--token defaults to $CBSYNC_DASHBOARD_TOKEN."""
    monkeypatch.setenv("CBSYNC_DASHBOARD_TOKEN", TOKEN)
    assert parse([]).token == TOKEN


def test_command_refuses_a_bad_port(capsys):
    """--port outside 0..65535 is a usage error."""
    with pytest.raises(SystemExit):
        parse(["--port", "70000"])
    assert "--port" in capsys.readouterr().err


def test_command_serves_until_closed(tmp_path, capsys):
    """The command says where it listens, serves the page and exits 0 once closed."""
    import io

    out = io.StringIO()
    server, thread, result = run_in_thread(parse(["--port", "0"]), out)
    status, _, body = fetch(server.url)
    assert status == 200
    assert b"cbsync breakers" in body
    server.close()
    thread.join(10)
    assert result == [0]
    text = out.getvalue()
    assert "on {} (read-only)".format(server.url) in text
    assert "no --redis given" in text


def test_command_reports_a_port_in_use():
    """A port already taken is a ConfigError naming the address."""
    taken = start_server(Dashboard(cbsync.Registry(), interval=None), port=0)
    try:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:{}".format(taken.port)):
            run_dashboard(parse(["--port", str(taken.port)]))
    finally:
        taken.close()


# -- the fleet view (Redis) --------------------------------------------------------


@pytest.mark.redis
def test_fleet_view_shows_the_shared_breakers_and_acts_fleet_wide(stores, serve, caplog):
    """With store=: the fleet's breakers from Redis; trip and reset act in every process."""
    from _redis_support import wait_until

    worker_store = stores(0.05)
    payments = cbsync.CircuitBreaker("payments", store=worker_store, failure_threshold=2)
    search = cbsync.CircuitBreaker("search", store=worker_store)
    search.call(lambda: None)
    failures(payments, 2)
    assert worker_store.sync()
    view_store = stores(0.05)
    server = serve(Dashboard(store=view_store, token=TOKEN, interval=None))
    document = api(server)
    check_schema(document)
    assert document["view"] == "fleet"
    assert view_store.server in document["source"]
    assert [(e["name"], e["state"]) for e in document["breakers"]] == [
        ("payments", "open"),
        ("search", "closed"),
    ]
    opened = document["breakers"][0]
    assert opened["reason"] == "consecutive_failures=2"
    assert 0 < opened["retry_after"] <= 30
    assert opened["failure_rate"] == 1.0
    assert opened["calls_per_second"] is None  # Redis keeps no per-process rates

    caplog.set_level(logging.WARNING, logger="cbsync")
    status, _, body = post(server.url + "api/trip", {"name": "search", "operator": "bo"}, TOKEN)
    assert status == 200
    assert json.loads(body)["state"] == "forced_open"
    assert "tripped breaker 'search' in every process" in caplog.text
    wait_until(lambda: search.state is State.FORCED_OPEN, message="the worker to see the trip")
    search_entry = next(e for e in api(server)["breakers"] if e["name"] == "search")
    assert search_entry["state"] == "forced_open"
    assert search_entry["transitions"][0]["old"] == "closed"
    assert search_entry["transitions"][0]["new"] == "forced_open"
    assert post(server.url + "api/reset", {"name": "search"}, TOKEN)[0] == 200
    wait_until(lambda: search.state is State.CLOSED, message="the worker to see the reset")
    assert post(server.url + "api/trip", {"name": "nobody-uses-this"}, TOKEN)[0] == 404


@pytest.mark.redis
def test_read_only_fleet_view_never_writes_to_redis(stores, serve):
    """A read-only fleet dashboard refuses actions; the shared state stays as it was."""
    worker_store = stores(0.05)
    breaker = cbsync.CircuitBreaker("payments", store=worker_store)
    breaker.call(lambda: None)
    assert worker_store.sync()
    view_store = stores(0.05)
    server = serve(Dashboard(store=view_store, interval=None))
    before = view_store.fleet_status()
    assert post(server.url + "api/trip", {"name": "payments"}, TOKEN)[0] == 403
    assert view_store.fleet_status() == before


@pytest.mark.redis
def test_fleet_view_survives_a_redis_outage_and_recovers(serve, caplog):
    """Redis killed: the page says since when the fleet state is unavailable; restarted: back."""
    from _redis_support import private_fleet, wait_until

    with private_fleet() as (redis_server, worker_store, view_store):
        breaker = cbsync.CircuitBreaker("payments", store=worker_store, failure_threshold=1)
        failures(breaker, 1)
        assert worker_store.sync()
        server = serve(Dashboard(store=view_store, token=TOKEN, interval=None))
        assert api(server)["breakers"][0]["state"] == "open"

        caplog.set_level(logging.INFO, logger="cbsync")
        redis_server.kill()
        wait_until(lambda: not api(server)["available"], message="the outage to show")
        document = api(server)
        check_schema(document)
        assert document["unavailable_since"] is not None
        assert document["error"]
        assert [(e["name"], e["state"]) for e in document["breakers"]] == [("payments", "open")]
        page = fetch(server.url)[2].decode("utf-8")
        assert "Fleet state unavailable since " in page
        assert '<p class="banner" role="alert" data-field="banner">Fleet' in page
        status, _, body = post(server.url + "api/reset", {"name": "payments"}, TOKEN)
        assert status == 503
        assert "unavailable" in json.loads(body)["error"]
        assert caplog.text.count("fleet state unavailable from") == 1  # once per outage

        redis_server.start()  # empty: the worker's store gives the state back
        wait_until(
            lambda: (
                [e["name"] for e in api(server)["breakers"]] == ["payments"]
                and api(server)["available"]
            ),
            timeout=10,
            message="the dashboard to recover",
        )
        assert "fleet state available again" in caplog.text
        page = fetch(server.url)[2].decode("utf-8")
        assert '<p class="banner" role="alert" data-field="banner" hidden></p>' in page


@pytest.mark.redis
def test_command_with_redis_serves_the_fleet(stores):
    """cbsync dashboard --redis URL --prefix P serves the fleet view of that prefix."""
    import io

    worker_store = stores(0.05)
    cbsync.CircuitBreaker("payments", store=worker_store).trip("maintenance")
    assert worker_store.sync()
    out = io.StringIO()
    args = parse(
        ["--port", "0", "--redis", stores.url, "--prefix", stores.prefix, "--token", TOKEN]
    )
    server, thread, result = run_in_thread(args, out)
    try:
        document = api(server)
        assert document["view"] == "fleet"
        assert document["actions"] is True
        assert document["breakers"][0]["reason"] == "manual=maintenance"
    finally:
        server.close()
        thread.join(10)
    assert result == [0]
    assert "trip and reset enabled with the token" in out.getvalue()
