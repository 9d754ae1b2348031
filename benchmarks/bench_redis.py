"""Breakers shared through Redis: what a call costs, what Redis sees, how fast news travels.

Run ``python benchmarks/bench_redis.py`` where cbsync, redis and pybreaker are
installed.  Without ``--redis URL`` it starts a private ``redis-server`` on a
free port (so that ``INFO commandstats`` counts this benchmark's commands
only); with ``--redis`` it uses that server's database and a unique prefix,
and deletes its keys afterwards.

Printed, as Markdown:

* the cost of a CLOSED ``call()`` (ns/call, and its overhead over a bare
  function call) for a local breaker, a breaker on a ``RedisStore``, and
  pybreaker with ``CircuitRedisStorage`` on the same server; the target is a
  Redis-backed overhead at most 1.5x the local one;
* Redis commands per CLOSED call, from ``INFO commandstats`` (target 0;
  pybreaker makes about 2), and the background cost of a store: commands and
  round trips per second;
* how long a trip takes to reach other processes (4 worker processes by
  default, ``sync_interval`` 0.25 s): from ``store.trip()`` as the CLI does
  it, and from ``breaker.trip()`` in another process, against the target
  ``sync_interval`` + one round trip.
"""

import argparse
import logging
import multiprocessing
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pybreaker
import redis
from run import per_call_ns, work  # benchmarks/run.py, beside this script

import cbsync
from cbsync.integrations.redis import RedisStore

SYNC_INTERVAL = 0.25


def commands(client: "redis.Redis[Any]") -> Dict[str, int]:
    return {name: entry["calls"] for name, entry in client.info("commandstats").items()}


def commands_between(before: Dict[str, int], after: Dict[str, int]) -> int:
    """Commands run between two readings, not counting the INFO that read them."""
    changed = {name: after[name] - before.get(name, 0) for name in after}
    changed["cmdstat_info"] = changed.get("cmdstat_info", 0) - 1
    return sum(n for n in changed.values() if n > 0)


# -- the server --------------------------------------------------------------------


class PrivateServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not on PATH: give --redis URL")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = "redis://127.0.0.1:{}/0".format(self.port)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)  # real time: waiting for redis-server to listen
        client.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


# -- trip propagation ----------------------------------------------------------------


def watcher(url: str, prefix: str, index: int, commands: Any, results: Any) -> None:
    """A worker process: reports the wall-clock time at which it sees each change."""
    logging.getLogger("cbsync").addHandler(logging.NullHandler())  # no state-change lines
    store = RedisStore(url, prefix=prefix, sync_interval=SYNC_INTERVAL)
    breaker = cbsync.CircuitBreaker("bench", store=store)
    breaker.call(work)  # the first call starts the store's background thread
    while not breaker._binding.shared:  # type: ignore[union-attr]
        time.sleep(0.001)  # real time: waiting for the first sync
    results.put((index, "ready", 0.0))
    while True:
        command = commands.get()
        if command == "stop":
            break
        wanted = cbsync.State(command)
        while breaker.state is not wanted:
            time.sleep(0.0005)  # real time: polling, as a caller would see it
        results.put((index, command, time.time()))
    store.close()


def propagation(url: str, prefix: str, processes: int, rounds: int) -> Dict[str, List[float]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    queues = [context.Queue() for _ in range(processes)]
    workers = [
        context.Process(target=watcher, args=(url, prefix, i, queues[i], results), daemon=True)
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    for _ in workers:
        results.get(timeout=60)
    operator = RedisStore(url, prefix=prefix)
    origin = RedisStore(url, prefix=prefix, sync_interval=SYNC_INTERVAL)
    breaker = cbsync.CircuitBreaker("bench", store=origin)
    breaker.call(work)
    origin.sync()

    def measure(state: str, act: Callable[[], None]) -> float:
        for queue in queues:
            queue.put(state)
        # real time: let every watcher start polling, and act at a random point
        # of the sync period (a fixed one would measure one phase only).
        time.sleep(0.05 + random.uniform(0, SYNC_INTERVAL))
        started = time.time()
        act()
        seen = [results.get(timeout=30)[2] for _ in workers]
        return max(seen) - started

    delays: Dict[str, List[float]] = {"store.trip() (CLI)": [], "breaker.trip() elsewhere": []}
    for _ in range(rounds):
        delays["store.trip() (CLI)"].append(
            measure("forced_open", lambda: operator.trip("bench", "bench"))
        )
        measure("closed", lambda: operator.reset("bench"))
        origin.sync()
        delays["breaker.trip() elsewhere"].append(
            measure("forced_open", lambda: breaker.trip("bench"))
        )
        measure("closed", breaker.reset)
    for queue in queues:
        queue.put("stop")
    for worker in workers:
        worker.join(30)
    operator.close()
    origin.close()
    return delays


# -- main ------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="use this server (default: a private one)")
    parser.add_argument("--loops", type=int, default=200_000, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings, best kept")
    parser.add_argument("--processes", type=int, default=4, help="watcher processes")
    parser.add_argument("--rounds", type=int, default=10, help="trips measured")
    args = parser.parse_args(argv)
    logging.getLogger("cbsync").addHandler(logging.NullHandler())  # no state-change lines

    server = None if args.redis else PrivateServer()
    url = args.redis or server.url  # type: ignore[union-attr]
    prefix = "cbsync-bench:{}:".format(uuid.uuid4().hex[:8])
    client = redis.Redis.from_url(url)
    try:
        return run(args, url, prefix, client, private=server is not None)
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        keys += list(client.scan_iter(match="pybreaker:" + prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
        if server is not None:
            server.stop()


def run(args: Any, url: str, prefix: str, client: "redis.Redis[Any]", private: bool) -> int:
    loops, repeats = args.loops, args.repeats
    rtt = per_call_ns(client.ping, 2000, 3) / 1e9

    local = cbsync.CircuitBreaker("bench")
    store = RedisStore(url, prefix=prefix, sync_interval=SYNC_INTERVAL)
    shared = cbsync.CircuitBreaker("bench", store=store)
    shared.call(work)
    store.sync()
    quiet_store = RedisStore(url, prefix=prefix + "quiet:", sync_interval=60)
    quiet = cbsync.CircuitBreaker("bench", store=quiet_store)
    quiet.call(work)
    quiet_store.sync()
    py_loops = max(1000, loops // 100)
    py = pybreaker.CircuitBreaker(
        fail_max=5,
        reset_timeout=30,
        state_storage=pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, redis.Redis.from_url(url), namespace=prefix + "py"
        ),
    )

    bare = per_call_ns(work, loops, repeats)
    times: List[Tuple[str, float]] = [
        ("local breaker", per_call_ns(lambda: local.call(work), loops, repeats)),
        (
            "RedisStore breaker (syncing every {}s)".format(SYNC_INTERVAL),
            per_call_ns(lambda: shared.call(work), loops, repeats),
        ),
        ("pybreaker + CircuitRedisStorage", per_call_ns(lambda: py.call(work), py_loops, 3)),
    ]

    # Commands per CLOSED call: a store that is not due to sync during the calls.
    before = commands(client)
    for _ in range(loops):
        quiet.call(work)
    cbsync_per_call = commands_between(before, commands(client)) / loops
    before = commands(client)
    for _ in range(py_loops):
        py.call(work)
    py_per_call = commands_between(before, commands(client)) / py_loops
    # The background cost of a store with one busy breaker, over 2 s.
    before = commands(client)
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < 2.0:
        for _ in range(1000):
            shared.call(work)
        calls += 1000
    elapsed = time.monotonic() - started
    background = commands_between(before, commands(client))

    delays = propagation(url, prefix + "prop:", args.processes, args.rounds)
    store.close()
    quiet_store.close()

    print("## cbsync with a RedisStore\n")
    print(
        "Python {} on {}, redis-py {}, Redis server {} ({}); RTT (PING) {:.0f} µs\n".format(
            platform.python_version(),
            platform.machine(),
            redis.__version__,
            client.info("server")["redis_version"],
            "private redis-server" if private else url,
            rtt * 1e6,
        )
    )
    print("| closed call | ns/call | overhead ns | overhead vs local |")
    print("| --- | ---: | ---: | ---: |")
    print("| bare function | {:.0f} | - | - |".format(bare))
    local_overhead = times[0][1] - bare
    for name, ns in times:
        print(
            "| {} | {:.0f} | {:.0f} | {:.2f}x |".format(
                name, ns, ns - bare, (ns - bare) / local_overhead
            )
        )
    print(
        "\nRedis-backed / local, whole call: {:.2f}x (target <= 1.5x)".format(
            times[1][1] / times[0][1]
        )
    )
    print("\n| Redis commands | per CLOSED call |")
    print("| --- | ---: |")
    print("| cbsync RedisStore | {:.4f} |".format(cbsync_per_call))
    print("| pybreaker CircuitRedisStorage | {:.2f} |".format(py_per_call))
    print(
        "\nBackground, one busy breaker: {:.0f} commands/s (Lua scripts count their inner "
        "commands) for {:.0f} calls/s, i.e. {:.5f} commands per call.".format(
            background / elapsed, calls / elapsed, background / calls
        )
    )
    target = SYNC_INTERVAL + rtt
    print(
        "\n| trip reaches {} processes (sync_interval {}s) | median s | max s | target s |".format(
            args.processes, SYNC_INTERVAL
        )
    )
    print("| --- | ---: | ---: | ---: |")
    for name, values in delays.items():
        print(
            "| {} | {:.3f} | {:.3f} | {:.3f} |".format(
                name, statistics.median(values), max(values), target
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
