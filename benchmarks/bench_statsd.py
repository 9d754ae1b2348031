"""What StatsD reporting costs a call, with the StatsD server unreachable.

Run ``python benchmarks/bench_statsd.py [--calls N] [--repeat R]``.  Each
case runs ``breaker.call(f)`` on a successful ``f`` N times, R times over,
and keeps the fastest round (the least disturbed by the rest of the machine);
it prints nanoseconds per call and the ratio to a breaker with no listener.

Cases:

* no listener -- the baseline;
* an empty ``cbsync.Listener`` -- what delivering events costs by itself;
* ``StatsdListener`` sending over UDP to a closed loopback port (nothing
  listens; the kernel answers with ICMP port unreachable);
* the same to a bound port nobody reads (a reachable server that is slow);
* the unreachable one with ``sample_rate=0.1``.

A success sends two metrics (the ``success`` counter and the ``latency``
timer): two ``sendto`` system calls, which is most of the cost.  An
unreachable server costs what a reachable one does: UDP does not wait.
"""

import argparse
import platform
import socket
import sys
import time
from typing import Callable, List, Optional, Tuple

import statsd

import cbsync
from cbsync.integrations.statsd import StatsdListener


def work() -> int:
    return 1


def closed_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def per_call_ns(listener: Optional[cbsync.Listener], calls: int, repeat: int) -> float:
    listeners = [] if listener is None else [listener]
    breaker = cbsync.CircuitBreaker("bench", listeners=listeners)
    call = breaker.call
    for _ in range(min(calls, 10000)):  # warm up
        call(work)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(calls):
            call(work)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per case (best kept)")
    args = parser.parse_args(argv)

    unread = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unread.bind(("127.0.0.1", 0))
    closed = closed_udp_port()
    clients = [
        statsd.StatsClient("127.0.0.1", closed),
        statsd.StatsClient("127.0.0.1", unread.getsockname()[1]),
        statsd.StatsClient("127.0.0.1", closed),
    ]
    cases: List[Tuple[str, Callable[[], Optional[cbsync.Listener]]]] = [
        ("no listener", lambda: None),
        ("empty cbsync.Listener", cbsync.Listener),
        ("StatsdListener, UDP to a closed port", lambda: StatsdListener(clients[0])),
        ("StatsdListener, UDP to a bound, unread port", lambda: StatsdListener(clients[1])),
        (
            "StatsdListener, closed port, sample_rate=0.1",
            lambda: StatsdListener(clients[2], sample_rate=0.1),
        ),
    ]
    print(
        "Python {} on {}; statsd {}; {} calls x {} rounds, best round".format(
            platform.python_version(),
            platform.machine(),
            statsd.__version__,
            args.calls,
            args.repeat,
        )
    )
    baseline = None
    for label, make in cases:
        ns = per_call_ns(make(), args.calls, args.repeat)
        if baseline is None:
            baseline = ns
        print("{:<48} {:>9.0f} ns/call  x{:.2f}".format(label, ns, ns / baseline))
    for client in clients:
        client._sock.close()  # statsd 3.3's StatsClient has no close()
    unread.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
