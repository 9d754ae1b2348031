"""Tests for ``cbsync demo``, run as a user runs it: a subprocess of ``python -m cbsync``."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest

from cbsync._cli import main

#: Seconds of the short scenario the tests play (about 7 s of wall time).
DURATION = 6
#: ``   3.6s  phase recovery: ...``
PHASE = re.compile(r"^ *(\d+\.\d)s  phase (\w+): ", re.MULTILINE)
#: ``   1.6s  http://127.0.0.1:40817  closed -> open  (consecutive_failures=5)``
TRANSITION = re.compile(r"^ *(\d+\.\d)s  (\S+)  (\w+) -> (\w+)  \(", re.MULTILINE)
#: A row of the table printed at the end: name, then state.
FINAL_ROW = re.compile(r"^ +(\S+) +(closed|open|half_open) +\d+", re.MULTILINE)
STATSD = re.compile(r"^StatsD: (\d+) lines received", re.MULTILINE)
#: ``  cbsync.demo.rates_fetch_rate.transition: closed.open 1, open.half_open 3, ...``
STATSD_TRANSITIONS = re.compile(r"^  cbsync\.demo\.(\S+)\.transition: (.*)$", re.MULTILINE)
DATABASE = re.compile(r"SELECT from (\S+)$", re.MULTILINE)
PROMETHEUS = re.compile(
    r"^Prometheus: (\S+) scraped (\d+) times while the demo ran; a last scrape read:$",
    re.MULTILINE,
)
#: ``  {breaker="rates.fetch_rate"}  state closed, rejected_total 569, transitions_total 9``
SERVED = re.compile(
    r'^  \{breaker="(\S+)"\}  state (\w+), rejected_total (\d+), transitions_total (\d+)$',
    re.MULTILINE,
)


def demo_command(duration):
    # Run with cwd=tmp_path: from the project root, `python -m` would import the
    # source tree's cbsync instead of the installed one that tox tests.
    return [sys.executable, "-m", "cbsync", "demo", "--duration", str(duration)]


def default_sigint():
    # A child inherits an ignored SIGINT (as under `nohup` or `&` in a script),
    # and Python then never raises KeyboardInterrupt: give it the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_opens_every_breaker_in_the_outage_and_closes_it_after(tmp_path):
    """A short run exits 0; each breaker opens in the outage only and ends closed; StatsD hears."""
    result = subprocess.run(
        demo_command(DURATION),
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert result.stderr == ""
    assert "worker error" not in output, output
    assert "log " not in output, output  # nothing logged by cbsync but state changes

    phases = {name: float(at) for at, name in PHASE.findall(output)}
    assert list(phases) == ["healthy", "outage", "recovery"]
    outage, recovery = phases["outage"], phases["recovery"]
    assert 0 < outage < recovery < DURATION

    transitions = [
        (float(at), name, old, new) for at, name, old, new in TRANSITION.findall(output)
    ]
    names = {name for _, name, _, _ in transitions}
    assert len(names) == 3
    assert any(re.fullmatch(r"http://127\.0\.0\.1:\d+", name) for name in names)
    assert {"sqlite:///orders.db", "rates.fetch_rate"} < names
    assert all(at >= outage for at, _, _, _ in transitions), "a state change before the outage"
    for name in names:
        mine = [(at, old, new) for at, n, old, new in transitions if n == name]
        opened = [at for at, old, new in mine if (old, new) == ("closed", "open")]
        assert opened, name + " never opened"
        assert all(outage <= at < recovery for at in opened), (name, opened)
        closed = [at for at, _, new in mine if new == "closed"]
        assert closed, name + " never closed"
        assert all(at >= recovery for at in closed), (name, closed)

    final_table = output[output.index("at the end:") : output.index("Summary after")]
    final = dict(FINAL_ROW.findall(final_table))
    assert final == dict.fromkeys(names, "closed")

    match = STATSD.search(output)
    assert match is not None
    assert int(match.group(1)) > 0
    reported = dict(STATSD_TRANSITIONS.findall(output))
    assert len(reported) == 3
    for moves in reported.values():
        assert re.search(r"\bclosed\.open [1-9]", moves), moves
        assert re.search(r"\bhalf_open\.closed [1-9]", moves), moves
    prometheus = PROMETHEUS.search(output)
    assert prometheus is not None, output
    assert prometheus.group(1).startswith("http://127.0.0.1:")
    served = {name: rest for name, *rest in SERVED.findall(output)}
    assert set(served) == names
    for name, (state, rejected, moves) in served.items():
        assert state == "closed"
        assert int(rejected) > 0
        assert int(moves) == sum(1 for _, n, _, _ in transitions if n == name), name
    assert output.rstrip().endswith("Done.")
    database = DATABASE.search(output)
    assert database is not None
    assert not os.path.exists(os.path.dirname(database.group(1)))  # temp dir removed


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process needs POSIX")
def test_ctrl_c_in_the_outage_stops_the_demo_cleanly(tmp_path):
    """SIGINT once a breaker has opened: exit 130, a summary, no traceback, temp files removed."""
    proc = subprocess.Popen(
        demo_command(8),
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    lines = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=15)
            assert line is not None, "the demo ended before a breaker opened:\n" + "".join(seen)
            seen.append(line)
            if " -> open  (" in line:
                break
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=10)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
    while True:
        line = lines.get(timeout=1)
        if line is None:
            break
        seen.append(line)
    output = "".join(seen)
    assert status == 130, output
    assert "Traceback" not in output
    assert "Interrupted at " in output
    assert " in the outage phase: workers stopped, embedded services closed." in output
    assert "Summary after" in output
    assert "Done." not in output
    database = DATABASE.search(output)
    assert database is not None
    assert not os.path.exists(os.path.dirname(database.group(1)))


def test_demo_without_its_extras_names_the_pip_command(tmp_path):
    """Without statsd importable, the demo exits 2 and says to install cbsync[all]."""
    code = (
        "import sys; sys.modules['statsd'] = None; "
        "from cbsync._cli import main; sys.exit(main(['demo']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert 'pip install "cbsync[all]"' in result.stderr
    assert "statsd" in result.stderr


@pytest.mark.parametrize("duration", ["3.5", "0", "-1", "nan", "inf", "soon"])
def test_demo_refuses_a_duration_too_short_for_the_story(duration, capsys):
    """--duration below 4 s, or not a finite number, is a usage error (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--duration", duration])
    assert exit_info.value.code == 2
    assert "--duration" in capsys.readouterr().err
