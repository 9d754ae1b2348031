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

``--instructions`` counts CPU instructions instead of timing (valgrind's
callgrind, run twice per figure with different loop counts; the difference
divided by the extra loops is one call's cost).  Counts do not depend on what
else the machine does, so small differences are real; the HTTP server then
runs in a process of its own, outside the count.
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


def count_loop(kind: str, loops: int, port: int) -> None:
    """Run ``loops`` operations of ``kind`` (for an instruction count)."""
    import cbsync

    if kind.startswith("adapter"):
        import requests
        from requests.adapters import HTTPAdapter

        from cbsync.integrations.requests import CircuitBreakerAdapter

        session = requests.Session()
        session.trust_env = False
        plain = kind == "adapter-plain"
        session.mount("http://", HTTPAdapter() if plain else CircuitBreakerAdapter())
        url = "http://127.0.0.1:{}/".format(port)
        for _ in range(loops):
            session.get(url).close()
        return
    breaker = cbsync.CircuitBreaker("bench", failure_threshold=1, timeout="1h")
    if kind == "call":
        for _ in range(loops):
            breaker.call(work)
    elif kind == "decorated":
        decorated = breaker(work)
        for _ in range(loops):
            decorated()
    elif kind == "rejection":
        try:
            breaker.call(fails)
        except OSError:
            pass
        for _ in range(loops):
            try:
                breaker.call(work)
            except Exception:
                pass


def instructions(site: str, kind: str, port: int, quick: bool) -> float:
    """Instructions of one operation of ``kind`` with the cbsync installed in ``site``."""
    few, many = (200, 2200) if kind.startswith("adapter") else (2000, 22000)
    if quick:
        many = few + (many - few) // 4
    totals = []
    for loops in (few, many):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, os.path.abspath(__file__), "--count", kind, str(loops), str(port)],
            check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=site),
        ).stderr  # fmt: skip
        totals.append(int(out.rsplit("refs:", 1)[1].split()[0].replace(",", "")))
    return (totals[1] - totals[0]) / (many - few)


def serve_forever() -> None:
    """The HTTP server of the instruction counts, in its own process: prints its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def count_instructions(sites: Dict[str, str], quick: bool) -> Dict[str, Dict[str, float]]:
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        counts: Dict[str, Dict[str, float]] = {}
        for name, site in sites.items():
            each = {k: instructions(site, k, port, quick) for k in COUNTED}
            counts[name] = {
                "call_ns": each["call"],
                "decorated_ns": each["decorated"],
                "rejection_ns": each["rejection"],
                "adapter_us": each["adapter-cbsync"] - each["adapter-plain"],
            }
        return counts
    finally:
        server.terminate()
        server.wait(10)


COUNTED = ("call", "decorated", "rejection", "adapter-plain", "adapter-cbsync")
INSTRUCTION_LABELS = {
    "call_ns": "call() of a CLOSED breaker, instructions",
    "decorated_ns": "@breaker call, instructions",
    "rejection_ns": "OPEN rejection, instructions",
    "adapter_us": "requests adapter overhead per request, instructions",
}


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
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions (valgrind) instead"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.measure:
        print(json.dumps(measure(options.quick)))
        return 0
    if options.serve:
        serve_forever()
        return 0
    if options.count:
        kind, loops, port = options.count
        count_loop(kind, int(loops), int(port))
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
        if options.instructions:
            for name, counts in count_instructions(sites, options.quick).items():
                results[name].append(counts)
        for _ in range(0 if options.instructions else options.rounds):
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
    if options.instructions:
        print(
            "cbsync {} (baseline) vs this checkout, Python {}, CPU instructions per "
            "operation (callgrind):\n".format(baseline, sys.version.split()[0])
        )
    else:
        print(
            "cbsync {} (baseline) vs this checkout, Python {}, {} alternating rounds, "
            "medians:\n".format(baseline, sys.version.split()[0], options.rounds)
        )
    print("| figure | baseline | checkout | checkout / baseline |")
    print("|---|---:|---:|---:|")
    for key, label in FIGURES:
        if options.instructions:
            label = INSTRUCTION_LABELS[key]
        old = statistics.median(r[key] for r in results["baseline"])
        new = statistics.median(r[key] for r in results["checkout"])
        print("| {} | {:.1f} | {:.1f} | {:.3f} |".format(label, old, new, new / old))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
