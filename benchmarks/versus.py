"""Compare this checkout's cbsync with another revision's, in one run.

``python benchmarks/versus.py [--baseline REF] [--rounds N] [--quick]``

Both revisions are installed (``pip install --no-deps --target``) into
temporary folders, then measured in alternating subprocesses -- baseline,
checkout, baseline, checkout... -- so that both see the same machine at the
same moments; each figure is the median of the rounds.  Measured, per
revision:

* ``call()`` overhead over a bare function call, CLOSED;
* ``@breaker`` overhead over a bare function call;
* the cost of a rejection by an OPEN breaker;
* the requests adapter's overhead per request over a plain ``HTTPAdapter``,
  on a keep-alive loopback HTTP server (medians of interleaved batches).

Printed as a Markdown table with the checkout's figure as a ratio of the
baseline's (below 1.0: faster).  Needs requests; the baseline defaults to
``origin/main`` if it exists, else ``main``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import fails, per_call_ns, per_rejection_ns, work  # noqa: E402 -- beside this file

FIGURES = (
    ("call_ns", "call() overhead, ns"),
    ("decorated_ns", "@breaker overhead, ns"),
    ("rejection_ns", "OPEN rejection, ns"),
    ("adapter_us", "requests adapter overhead per request, µs"),
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def adapter_overhead_us(requests_per_batch: int, batches: int) -> float:
    """Median over interleaved batches of (adapter - plain) µs per request."""
    import requests
    from requests.adapters import HTTPAdapter

    import cbsync
    from cbsync.integrations.requests import CircuitBreakerAdapter

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = "http://127.0.0.1:{}/".format(server.server_address[1])
    sessions = {}
    for kind, adapter in (
        ("plain", HTTPAdapter()),
        ("cbsync", CircuitBreakerAdapter(registry=cbsync.Registry())),
    ):
        session = requests.Session()
        session.trust_env = False
        session.mount("http://", adapter)
        session.get(url).close()  # connect once: keep-alive from here on
        sessions[kind] = session

    def batch(session: "requests.Session") -> float:
        start = time.perf_counter()
        for _ in range(requests_per_batch):
            session.get(url).close()
        return (time.perf_counter() - start) / requests_per_batch * 1e6

    differences = []
    for _ in range(batches):
        plain = batch(sessions["plain"])
        through = batch(sessions["cbsync"])
        differences.append(through - plain)
    for session in sessions.values():
        session.close()
    server.shutdown()
    server.server_close()
    return statistics.median(differences)


def measure(quick: bool) -> Dict[str, float]:
    """One revision's figures (run in a subprocess with that revision importable)."""
    import cbsync

    loops, repeats = (20_000, 3) if quick else (200_000, 5)
    bare = per_call_ns(work, loops, repeats)
    breaker = cbsync.CircuitBreaker("bench")
    decorated = breaker(work)
    opened = cbsync.CircuitBreaker("bench-open", failure_threshold=1, timeout="1h")
    try:
        opened.call(fails)
    except OSError:
        pass
    return {
        "call_ns": per_call_ns(lambda: breaker.call(work), loops, repeats) - bare,
        "decorated_ns": per_call_ns(decorated, loops, repeats) - bare,
        "rejection_ns": per_rejection_ns(lambda: opened.call(work), loops, repeats),
        "adapter_us": adapter_overhead_us(200 if quick else 500, 5 if quick else 15),
    }


def install(source: str, target: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", target, source],
        check=True,
    )  # fmt: skip


def export(ref: str, folder: str) -> str:
    """The tree of ``ref`` in ``folder`` (``git archive``)."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def default_baseline() -> str:
    for ref in ("origin/main", "main"):
        found = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--verify", "--quiet", ref], capture_output=True
        )
        if found.returncode == 0:
            return ref
    raise SystemExit("versus.py: give --baseline REF (no origin/main or main here)")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="git revision to compare with (default: main)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations (default 5)")
    parser.add_argument("--quick", action="store_true", help="fewer loops (a smoke run)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        print(json.dumps(measure(options.quick)))
        return 0
    baseline = options.baseline or default_baseline()
    work_dir = tempfile.mkdtemp(prefix="cbsync-versus-")
    try:
        sites = {
            "baseline": os.path.join(work_dir, "baseline"),
            "checkout": os.path.join(work_dir, "checkout"),
        }
        install(export(baseline, tempfile.mkdtemp(dir=work_dir)), sites["baseline"])
        install(ROOT, sites["checkout"])
        results: Dict[str, List[Dict[str, float]]] = {"baseline": [], "checkout": []}
        for _ in range(options.rounds):
            for name, site in sites.items():
                command = [sys.executable, os.path.abspath(__file__), "--measure"]
                if options.quick:
                    command.append("--quick")
                out = subprocess.run(
                    command,
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=work_dir,  # neither source tree on the path
                    env=dict(os.environ, PYTHONPATH=site),
                ).stdout
                results[name].append(json.loads(out))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(
        "cbsync {} (baseline) vs this checkout, Python {}, {} alternating rounds, "
        "medians:\n".format(baseline, sys.version.split()[0], options.rounds)
    )
    print("| figure | baseline | checkout | checkout / baseline |")
    print("|---|---:|---:|---:|")
    for key, label in FIGURES:
        old = statistics.median(r[key] for r in results["baseline"])
        new = statistics.median(r[key] for r in results["checkout"])
        print("| {} | {:.1f} | {:.1f} | {:.3f} |".format(label, old, new, new / old))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
