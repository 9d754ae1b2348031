"""``cbsync status|trip|reset|watch --redis URL [--prefix P]`` against a real Redis."""

import datetime
import subprocess
import sys
import time

import pytest
from _redis_support import free_port
from _support import failures, ok

import cbsync
from cbsync import OpenReason, State
from cbsync._cli import main
from cbsync.integrations._redis_cli import REDIS_URL_ENV, format_table
from cbsync.integrations.redis import FleetStatus

pytestmark = pytest.mark.redis


def where(stores):
    return ["--redis", stores.url, "--prefix", stores.prefix]


def test_status_prints_a_table_of_the_shared_breakers(stores, capsys):
    """status: one line per breaker with state, fleet failure rate, calls, retry-after."""
    store = stores(60)
    payments = cbsync.CircuitBreaker("payments", store=store, failure_threshold=3, timeout=30)
    search = cbsync.CircuitBreaker("search", store=store)
    assert store.sync()
    failures(payments, 3)
    for _ in range(4):
        search.call(ok)
    failures(search, 1)
    assert store.sync()
    assert main(["status", *where(stores)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "FAILURE",
        "RATE",
        "CALLS",
        "RETRY",
        "AFTER",
        "REASON",
    ]
    assert lines[1].split()[:4] == ["payments", "open", "100.0%", "3"]
    assert lines[1].split()[4].endswith("s")
    assert 29.0 < float(lines[1].split()[4][:-1]) <= 30.0
    assert lines[1].split()[5] == "consecutive_failures=3"
    assert lines[2].split()[:5] == ["search", "closed", "20.0%", "5", "-"]
    assert len(lines) == 3


def test_status_of_an_empty_prefix_says_so(stores, capsys):
    """status with no breakers under the prefix prints a line saying so, exit 0."""
    assert main(["status", *where(stores)]) == 0
    assert "no shared breakers under prefix" in capsys.readouterr().out


def test_trip_and_reset_act_on_every_process(stores, capsys):
    """trip forces the breaker open where it runs (kind "manual"); reset closes it."""
    store = stores(60)
    breaker = cbsync.CircuitBreaker("payments", store=store)
    assert store.sync()
    assert main(["trip", "payments", "--reason", "deploy", *where(stores)]) == 0
    assert capsys.readouterr().out == "payments: forced_open in every process (manual=deploy)\n"
    store.sync()
    assert breaker.state is State.FORCED_OPEN
    assert breaker.snapshot().transitions[-1].reason == OpenReason("manual", "deploy")
    assert main(["reset", "payments", *where(stores)]) == 0
    assert capsys.readouterr().out == "payments: closed in every process (reset)\n"
    store.sync()
    assert breaker.state is State.CLOSED
    assert breaker.call(ok) == "ok"


def test_trip_of_a_name_no_process_reported_says_so(stores, capsys):
    """Tripping a breaker before any process used it works, and the output says so."""
    assert main(["trip", "not-yet-deployed", *where(stores)]) == 0
    assert "no process has reported this breaker yet" in capsys.readouterr().out
    store = stores(60)
    breaker = cbsync.CircuitBreaker("not-yet-deployed", store=store)
    assert store.sync()
    assert breaker.state is State.FORCED_OPEN


def test_watch_refreshes_the_table(stores, capsys):
    """watch prints the status again every --interval, --count times."""
    store = stores(60)
    breaker = cbsync.CircuitBreaker("payments", store=store)
    breaker.call(ok)
    assert store.sync()
    assert main(["watch", "--interval", "0.01", "--count", "3", *where(stores)]) == 0
    out = capsys.readouterr().out
    assert out.count("cbsync watch:") == 3
    assert out.count("payments") == 3


@pytest.mark.parametrize(
    "command", [["status"], ["trip", "payments"], ["reset", "payments"], ["watch"]]
)
def test_an_unreachable_redis_exits_2_with_a_clear_message(command, capsys):
    """Every command exits 2 naming the server (never its password) when Redis is down."""
    port = free_port()
    url = "redis://:hunter2@127.0.0.1:{}/0".format(port)
    started = time.monotonic()
    assert main([*command, "--redis", url]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://127.0.0.1:{}/0".format(port) in err
    assert "hunter2" not in err


def test_the_url_comes_from_the_environment_or_is_required(stores, monkeypatch, capsys):
    """--redis defaults to $CBSYNC_REDIS_URL; without either it is a usage error."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["status", "--prefix", stores.prefix])
    assert info.value.code == 2
    assert "--redis" in capsys.readouterr().err
    monkeypatch.setenv(REDIS_URL_ENV, stores.url)
    assert main(["status", "--prefix", stores.prefix]) == 0


def test_a_bad_url_is_a_usage_error(capsys):
    """A URL that is not redis:// exits 2 with the configuration error."""
    assert main(["status", "--redis", "http://example.com"]) == 2
    assert "expected a redis://" in capsys.readouterr().err


def test_names_that_could_break_the_table_are_escaped():
    """A name with a newline or escape sequence is shown as its repr, on one line."""
    row = FleetStatus(
        name="evil\n\x1b[2Jname",
        state=State.OPEN,
        reason=OpenReason("remote", "x\ny"),
        retry_after=1.25,
        window_calls=4,
        window_failure_rate=0.5,
        window_slow_call_rate=0.0,
        consecutive_failures=2,
        trial_calls=0,
        changed_at=datetime.datetime.now(datetime.timezone.utc),
        changed_by="host:1:abc",
    )
    table = format_table([row])
    assert table.count("\n") == 2
    assert "\x1b" not in table
    assert "'evil\\n\\x1b[2Jname'" in table
    assert "1.2s" in table or "1.3s" in table


def test_import_cbsync_and_its_command_line_do_not_import_redis(tmp_path):
    """The Redis commands import redis when they run, not when cbsync is imported."""
    code = (
        "import sys, cbsync, cbsync._cli, cbsync.__main__\n"
        "assert not [m for m in sys.modules if m == 'redis' or m.startswith('redis.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)


def test_python_dash_m_cbsync_status(stores, tmp_path):
    """The commands run as ``python -m cbsync`` too."""
    store = stores(60)
    breaker = cbsync.CircuitBreaker("payments", store=store)
    breaker.call(ok)
    assert store.sync()
    result = subprocess.run(
        [sys.executable, "-m", "cbsync", "status", *where(stores)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # the installed cbsync, not the source tree's
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["payments", "closed"]
