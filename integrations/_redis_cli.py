"""``cbsync status|trip|reset|watch``: operate breakers shared through Redis.

Each command opens a :class:`cbsync.integrations.redis.RedisStore` on
``--redis URL`` (default: the ``CBSYNC_REDIS_URL`` environment variable) and
``--prefix``; ``redis`` is imported by the command, never by ``import
cbsync``.  Exit status 0 on success, 2 for a usage error or when Redis cannot
be reached (the message names the server, never its password).
"""

import argparse
import datetime
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, TextIO, Tuple

from cbsync import ConfigError

if TYPE_CHECKING:
    # Imported by each command instead: cbsync.integrations.redis imports redis,
    # and the command line lists these commands without it installed.
    from .redis import FleetStatus, RedisStore

#: Exit status of a command that did what it was asked.
EXIT_OK = 0
#: Exit status for a usage error, or when Redis cannot be reached.
EXIT_USAGE = 2

#: Environment variable giving the default of ``--redis``.
REDIS_URL_ENV = "CBSYNC_REDIS_URL"

SubParsers = Any  # argparse's _SubParsersAction is private


def _connection_options(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(REDIS_URL_ENV)
    parser.add_argument(
        "--redis",
        metavar="URL",
        default=default,
        required=default is None,
        help="the Redis server, e.g. redis://localhost:6379/0 (default: ${})".format(
            REDIS_URL_ENV
        ),
    )
    parser.add_argument(
        "--prefix",
        default="cbsync:",
        help="the key prefix the applications' RedisStore uses (default: %(default)s)",
    )


def add_status(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="list the breakers shared through Redis, with their fleet-wide state",
        description=(
            "List every breaker that processes share under the prefix: its state, the "
            "fleet's failure rate and calls in the window, the time left before a trial "
            "call, and why it is in that state."
        ),
    )
    _connection_options(parser)
    parser.set_defaults(run=run_status)


def add_trip(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "trip",
        help="force a shared breaker open in every process (FORCED_OPEN until reset)",
        description=(
            "Force breaker NAME open in every process sharing it: calls are rejected "
            "until 'cbsync reset NAME'.  Processes learn of it within their sync_interval."
        ),
    )
    parser.add_argument("name", help="the breaker's name")
    parser.add_argument("--reason", default="manual", help="shown in errors and logs")
    _connection_options(parser)
    parser.set_defaults(run=run_trip)


def add_reset(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "reset",
        help="close a shared breaker in every process and clear its window",
        description=(
            "Close breaker NAME in every process sharing it, clearing the fleet's window "
            "and backoff (also ends a trip)."
        ),
    )
    parser.add_argument("name", help="the breaker's name")
    _connection_options(parser)
    parser.set_defaults(run=run_reset)


def add_watch(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="show 'status' again and again until interrupted",
        description="Refresh the 'status' table every INTERVAL seconds until Ctrl-C.",
    )
    _connection_options(parser)
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes (default: %(default)s)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="stop after N refreshes (default: 0, until interrupted)",
    )
    parser.set_defaults(run=run_watch)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number of seconds".format(text)) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("{!r} must be more than 0 seconds".format(text))
    return value


# -- running ---------------------------------------------------------------------


def run_status(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """``cbsync status``."""
    out = out if out is not None else sys.stdout
    stream = out
    return _with_store(args, lambda store: _print_status(store, args, stream))


def _fleet_change(
    args: argparse.Namespace, out: Optional[TextIO], change: Callable[["RedisStore"], Any]
) -> int:
    """Apply ``change`` (a trip or a reset) to the breaker ``args.name`` and say so."""
    stream = out if out is not None else sys.stdout

    def run(store: "RedisStore") -> int:
        known = _known(store, args.name)
        row = change(store)
        stream.write(
            "{}: {} in every process ({}){}\n".format(
                _show(args.name), row.state.value, row.reason, _unseen(known)
            )
        )
        return EXIT_OK

    return _with_store(args, run)


def run_trip(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """``cbsync trip NAME [--reason R]``."""
    return _fleet_change(args, out, lambda store: store.trip(args.name, args.reason))


def run_reset(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """``cbsync reset NAME``."""
    return _fleet_change(args, out, lambda store: store.reset(args.name))


def run_watch(args: argparse.Namespace, out: Optional[TextIO] = None) -> int:
    """``cbsync watch``: ``status`` every ``--interval`` seconds, until interrupted."""
    out = out if out is not None else sys.stdout

    def watch(store: "RedisStore") -> int:
        refreshes = 0
        try:
            while True:
                if out.isatty():
                    out.write("\x1b[H\x1b[2J")  # clear the terminal
                out.write(
                    "cbsync watch: {} prefix {!r} at {} (Ctrl-C to stop)\n".format(
                        store, args.prefix, _utc_now()
                    )
                )
                _print_status(store, args, out)
                out.flush()
                refreshes += 1
                if args.count and refreshes >= args.count:
                    return EXIT_OK
                time.sleep(args.interval)  # real time: the operator's refresh period
        except KeyboardInterrupt:
            return EXIT_OK

    return _with_store(args, watch)


def _with_store(args: argparse.Namespace, command: Callable[["RedisStore"], int]) -> int:
    try:
        from redis.exceptions import RedisError
    except ImportError as exc:
        raise ConfigError(
            "the Redis commands need the redis package: pip install 'cbsync[redis]' ({})".format(
                exc
            )
        ) from exc
    from .redis import RedisStore

    store = RedisStore(args.redis, prefix=args.prefix)
    try:
        return command(store)
    except (RedisError, OSError) as exc:
        sys.stderr.write(
            "cbsync {}: error: cannot reach Redis at {} ({}: {})\n".format(
                args.command, store.server, type(exc).__name__, exc
            )
        )
        return EXIT_USAGE
    finally:
        store.close()


def _known(store: "RedisStore", name: str) -> bool:
    return any(row.name == name for row in store.fleet_status())


def _unseen(known: bool) -> str:
    return "" if known else "; no process has reported this breaker yet"


def _print_status(store: "RedisStore", args: argparse.Namespace, out: TextIO) -> int:
    rows = store.fleet_status()
    if not rows:
        out.write("no shared breakers under prefix {!r} on {}\n".format(args.prefix, store))
        return EXIT_OK
    out.write(format_table(rows))
    return EXIT_OK


#: Columns of the status table: heading, and how a row shows in it.
_COLUMNS: Sequence[Tuple[str, Callable[["FleetStatus"], str]]] = (
    ("NAME", lambda row: _show(row.name)),
    ("STATE", lambda row: row.state.value),
    (
        "FAILURE RATE",
        lambda row: (
            "-" if row.window_failure_rate is None else "{:.1%}".format(row.window_failure_rate)
        ),
    ),
    ("CALLS", lambda row: str(row.window_calls)),
    (
        "RETRY AFTER",
        lambda row: "-" if row.retry_after is None else "{:.1f}s".format(row.retry_after),
    ),
    ("REASON", lambda row: "-" if row.reason.kind == "unknown" else _show(str(row.reason))),
)
_RIGHT = frozenset(("FAILURE RATE", "CALLS", "RETRY AFTER"))


def format_table(rows: Sequence["FleetStatus"]) -> str:
    """The status table: one line per breaker, columns aligned."""
    cells: List[List[str]] = [[heading for heading, _ in _COLUMNS]]
    cells.extend([show(row) for _, show in _COLUMNS] for row in rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = []
    for line in cells:
        parts = []
        for (heading, _), width, cell in zip(_COLUMNS, widths, line):
            parts.append(cell.rjust(width) if heading in _RIGHT else cell.ljust(width))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def _show(text: str) -> str:
    # A breaker name is data: never let it move the cursor or split a line.
    return text if text.isprintable() else repr(text)


def _utc_now(now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%d %H:%M:%S UTC")
