"""The ``cbsync`` command line (also ``python -m cbsync``).

Each subcommand is one ``add_<name>(subparsers)`` function that adds its
parser and sets ``run`` to a function ``args -> exit status``; to add a
subcommand, write such a pair and list the first in :data:`SUBCOMMANDS`.
Exit status: 0 on success, 2 for a usage or configuration error.

The commands that drive optional libraries (the demo, the Redis commands)
live beside the integrations and are found by name when the parser is
built: the core never imports an integration, and those modules import
nothing optional at their top, so ``cbsync --help`` lists every command
whatever is installed.
"""

import argparse
import importlib
import sys
from typing import Any, Callable, List, Optional, Sequence, Union

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


# -- the parser ------------------------------------------------------------------

#: Functions adding one subcommand each, in the order ``--help`` lists them; a
#: ``"module:function"`` string names one that lives with the integrations.
SUBCOMMANDS: List[Union[str, Callable[[SubParsers], None]]] = [
    "cbsync.integrations._demo:add_demo",
    _add_check_config,
    "cbsync.integrations._redis_cli:add_status",
    "cbsync.integrations._redis_cli:add_trip",
    "cbsync.integrations._redis_cli:add_reset",
    "cbsync.integrations._redis_cli:add_watch",
    "cbsync.integrations.dashboard:add_dashboard",
]


def _adder(entry: Union[str, Callable[[SubParsers], None]]) -> Callable[[SubParsers], None]:
    if callable(entry):
        return entry
    module, _, function = entry.partition(":")
    adder: Callable[[SubParsers], None] = getattr(importlib.import_module(module), function)
    return adder


def build_parser() -> argparse.ArgumentParser:
    """The ``cbsync`` argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cbsync",
        description="Circuit breakers for synchronous Python code.",
    )
    parser.add_argument("--version", action="version", version="cbsync " + __version__)
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for entry in SUBCOMMANDS:
        _adder(entry)(subparsers)
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
