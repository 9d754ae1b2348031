"""The ``cbsync`` command line (also ``python -m cbsync``).

Each subcommand is one ``_add_<name>(subparsers)`` function that adds its
parser and sets ``run`` to a function ``args -> exit status``; to add a
subcommand, write such a pair and list the first in :data:`SUBCOMMANDS`.
Exit status: 0 on success, 2 for a usage or configuration error.
"""

import argparse
import sys
from typing import Any, Callable, List, Optional, Sequence

from ._cli_redis import add_reset, add_status, add_trip, add_watch
from ._config import FIELD_NAMES, CircuitBreakerConfig
from ._errors import ConfigError
from ._loader import load_config
from ._registry import DEFAULT_PROFILE, Registry

#: Exit status of a run that found nothing wrong.
EXIT_OK = 0
#: Exit status for a usage error or an invalid configuration.
EXIT_USAGE = 2

_DURATIONS = frozenset(("failure_window", "slow_call_duration", "timeout", "max_timeout"))

SubParsers = Any  # argparse's _SubParsersAction is private


# -- check-config ----------------------------------------------------------------


def _add_check_config(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a configuration file and print each resolved profile",
        description=(
            "Validate a YAML configuration file (top key 'circuit_breaker') and print "
            "every profile as breakers will get it: the built-in defaults, overlaid "
            "with 'default', overlaid with the profile.  Each value is followed by "
            "where it comes from.  Exit status 0 when valid, 2 when not."
        ),
    )
    parser.add_argument("file", help="the YAML file to check")
    parser.set_defaults(run=run_check_config)


def run_check_config(args: argparse.Namespace) -> int:
    """``cbsync check-config FILE``."""
    out = sys.stdout
    registry = load_config(args.file, registry=Registry())
    profiles = registry.profiles
    names = [DEFAULT_PROFILE] + [name for name in profiles if name != DEFAULT_PROFILE]
    out.write(
        "# {}: valid, {} profile{}\n".format(
            args.file, len(profiles), "" if len(profiles) == 1 else "s"
        )
    )
    default_settings = registry.profile_settings(DEFAULT_PROFILE)
    for name in names:
        config = registry.config_for(name, profile=name)
        own = registry.profile_settings(name) if name != DEFAULT_PROFILE else {}
        out.write("{}:\n".format(name))
        for field in FIELD_NAMES:
            if field in own:
                origin = name
            elif field in default_settings:
                origin = DEFAULT_PROFILE
            else:
                origin = "built-in"
            out.write("  {}: {}  # {}\n".format(field, format_value(config, field), origin))
    return EXIT_OK


def format_value(config: CircuitBreakerConfig, field: str) -> str:
    """One field of ``config`` as a person would write it in the YAML file."""
    value = getattr(config, field)
    if value is None:
        return "null"
    if field in _DURATIONS:
        return "{:g}s".format(value)
    if isinstance(value, tuple):
        names = [getattr(item, "__qualname__", repr(item)) for item in value]
        return "[{}]".format(", ".join(names))
    if callable(value):
        return "<{}>".format(getattr(value, "__qualname__", repr(value)))
    return str(value)


# -- demo ------------------------------------------------------------------------

#: ``cbsync demo``: how long the scenario runs by default, and at least, in seconds.
DEMO_DURATION = 20.0
DEMO_MIN_DURATION = 4.0


def _add_demo(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="watch breakers protect a program from a failing service (about 20s)",
        description=(
            "Start a flaky HTTP service, a SQLite database and a StatsD receiver in this "
            "process, call them from worker threads through the requests adapter, a "
            "SQLAlchemy engine and a function decorated with @cbsync.circuit, and play "
            "a script: healthy, outage, recovery.  Shows each breaker live, then a "
            'summary.  Needs the extras: pip install "cbsync[all]".  Exit status 0 '
            "when the script has run, 130 when stopped with Ctrl-C, 2 when the extras "
            "are missing."
        ),
    )
    parser.add_argument(
        "--duration",
        type=_demo_duration,
        default=DEMO_DURATION,
        metavar="SECONDS",
        help="how long the script runs (default {:g}, at least {:g}); the breakers' "
        "timings scale with it".format(DEMO_DURATION, DEMO_MIN_DURATION),
    )
    parser.set_defaults(run=run_demo)


def _demo_duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number of seconds".format(text)) from None
    if not value >= DEMO_MIN_DURATION or value == float("inf"):
        raise argparse.ArgumentTypeError(
            "{!r}: give at least {:g} seconds, for the breakers to open and close again".format(
                text, DEMO_MIN_DURATION
            )
        )
    return value


def run_demo(args: argparse.Namespace) -> int:
    """``cbsync demo [--duration SECONDS]``."""
    from . import _demo

    try:
        _demo.check_extras()
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] == "cbsync":
            raise  # a bug in cbsync, not a missing extra
        sys.stderr.write(
            "cbsync demo: error: the demo needs requests, SQLAlchemy and statsd ({}); "
            'install them with: pip install "cbsync[all]"\n'.format(exc)
        )
        return EXIT_USAGE
    return _demo.run(args.duration)


# -- the parser ------------------------------------------------------------------

#: Functions adding one subcommand each, in the order ``--help`` lists them.
SUBCOMMANDS: List[Callable[[SubParsers], None]] = [
    _add_demo,
    _add_check_config,
    add_status,
    add_trip,
    add_reset,
    add_watch,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``cbsync`` argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cbsync",
        description="Circuit breakers for synchronous Python code.",
    )
    parser.add_argument("--version", action="version", version="cbsync " + __version__)
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except ConfigError as exc:
        sys.stderr.write("cbsync {}: error: {}\n".format(args.command, exc))
        return EXIT_USAGE
