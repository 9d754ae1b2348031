"""What StatsD reporting costs a call, with the StatsD server unreachable.

Run ``python benchmarks/bench_statsd.py [--calls N] [--repeat R] [--threads T]``.
Each case runs ``breaker.call(f)`` on a successful ``f`` N times (split over
T threads, 1 by default), R times over, and keeps the fastest round (the
least disturbed by the rest of the machine); it prints wall-clock
nanoseconds per call, the ratio to a breaker with no listener, and how many
of the listener's events were dropped (``dropped_events``, which also counts
latency values dropped while their calls were counted).

``StatsdListener`` appends each event to a buffer; a background thread
sends.  In a loop of calls that never release the GIL the thread gets the
GIL only now and then, falls behind, and calls past the buffer's high-water
mark (half of ``max_buffer``) fold the buffer into counter sums and send the
latency values over UDP themselves, a packet per call.  The cases show:

* no listener -- the baseline;
* an empty ``cbsync.Listener`` -- what delivering events costs by itself;
* ``StatsdListener`` as configured by default, over UDP to a closed loopback
  port (nothing listens; the kernel answers with ICMP port unreachable), to
  a bound port nobody reads, and with ``sample_rate=0.1``: the thread sends
  while the loop runs;
* "buffer only": the thread is kept idle during the round (an hour's flush
  interval, a buffer larger than the round, so calls never take over) -- what
  the call itself waits for;
* "buffer + flush() in the round": the same with the flush of the whole round
  timed too -- every cost of reporting, sending included, per call.

``--io`` makes ``f`` a small system call (``os.stat``) that releases the GIL,
as the I/O a breaker protects does: then the thread sends while calls wait.
"""

import argparse
import os
import platform
import socket
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

import statsd

import cbsync
from cbsync.integrations.statsd import StatsdListener


def noop() -> int:
    return 1


def small_io() -> int:
    return os.stat(".").st_mode


def closed_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


#: (label, make the listener, flush inside the timed region)
Case = Tuple[str, Callable[[], Optional[cbsync.Listener]], bool]


def per_call_ns(
    listener: Optional[cbsync.Listener],
    work: Callable[[], int],
    calls: int,
    repeat: int,
    flush_in_round: bool,
    threads: int,
) -> float:
    listeners = [] if listener is None else [listener]
    breaker = cbsync.CircuitBreaker("bench", listeners=listeners)
    call = breaker.call
    flush = listener.flush if isinstance(listener, StatsdListener) else None
    for _ in range(min(calls, 10000)):  # warm up
        call(work)
    if flush is not None:
        flush()

    def loop(count: int, barrier: Optional[threading.Barrier] = None) -> None:
        if barrier is not None:
            barrier.wait()
        for _ in range(count):
            call(work)

    best = float("inf")
    for _ in range(repeat):
        if threads == 1:
            start = time.perf_counter_ns()
            loop(calls)
        else:
            barrier = threading.Barrier(threads + 1)
            workers = [
                threading.Thread(target=loop, args=(calls // threads, barrier))
                for _ in range(threads)
            ]
            for worker in workers:
                worker.start()
            barrier.wait()
            start = time.perf_counter_ns()
            for worker in workers:
                worker.join()
        if flush is not None and flush_in_round:
            flush()
        best = min(best, (time.perf_counter_ns() - start) / calls)
        if flush is not None:
            flush()  # an untimed round ends empty
    return best


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per case (best kept)")
    parser.add_argument("--io", action="store_true", help="protect a small system call")
    parser.add_argument("--threads", type=int, default=1, help="threads sharing the calls")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.calls % args.threads:
        parser.error("--threads must be at least 1 and divide --calls")
    work = small_io if args.io else noop

    unread = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unread.bind(("127.0.0.1", 0))
    closed = closed_udp_port()
    clients: List[statsd.StatsClient] = []

    def udp(port: int) -> statsd.StatsClient:
        client = statsd.StatsClient("127.0.0.1", port)
        clients.append(client)
        return client

    # The thread wakes early at a tenth of max_buffer: keep that past a round.
    idle = {"flush_interval": "1h", "max_buffer": 10 * (args.calls + 10000)}
    cases: List[Case] = [
        ("no listener", lambda: None, False),
        ("empty cbsync.Listener", cbsync.Listener, False),
        ("StatsdListener, UDP to a closed port", lambda: StatsdListener(udp(closed)), False),
        (
            "StatsdListener, UDP to a bound, unread port",
            lambda: StatsdListener(udp(unread.getsockname()[1])),
            False,
        ),
        (
            "StatsdListener, closed port, sample_rate=0.1",
            lambda: StatsdListener(udp(closed), sample_rate=0.1),
            False,
        ),
        (
            "StatsdListener, closed port, buffer only",
            lambda: StatsdListener(udp(closed), **idle),
            False,
        ),
        (
            "StatsdListener, closed port, buffer + flush()",
            lambda: StatsdListener(udp(closed), **idle),
            True,
        ),
    ]
    print(
        "Python {} on {}; statsd {}; {} calls x {} rounds in {} thread(s), best round; "
        "f = {}".format(
            platform.python_version(),
            platform.machine(),
            statsd.__version__,
            args.calls,
            args.repeat,
            args.threads,
            "os.stat('.')" if args.io else "return 1",
        )
    )
    baseline = None
    for label, make, flush_in_round in cases:
        listener = make()
        ns = per_call_ns(listener, work, args.calls, args.repeat, flush_in_round, args.threads)
        if baseline is None:
            baseline = ns
        dropped = ""
        if isinstance(listener, StatsdListener):
            listener.close()
            # Each success is one event; rounds plus warm-up.
            events = args.calls * args.repeat + min(args.calls, 10000) + 1
            dropped = "  dropped {:5.1%}".format(listener.dropped_events / events)
        print("{:<48} {:>9.0f} ns/call  x{:.2f}{}".format(label, ns, ns / baseline, dropped))
    for client in clients:
        client._sock.close()  # statsd 3.3's StatsClient has no close()
    unread.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
