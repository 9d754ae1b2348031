"""``load_config``: configuration profiles from a YAML file or a mapping.

The shape is the seed document's::

    circuit_breaker:
      default:
        failure_threshold: 5
        timeout: 30s
      database:
        failure_threshold: 3

PyYAML is imported here, when a file is read, and never by ``import cbsync``.
Only a safe loader is used (plus a check for keys given twice, which a plain
YAML loader would silently resolve to the last one).
"""

import os
from typing import Any, Dict, Mapping, Optional, Union

from ._config import did_you_mean
from ._errors import ConfigError
from ._registry import Registry, resolve_registry

#: The top-level key holding the profiles.
TOP_KEY = "circuit_breaker"

PathOrMapping = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def load_config(path_or_mapping: PathOrMapping, registry: Optional[Registry] = None) -> Registry:
    """Configure ``registry`` (default: ``cbsync.registry``) from ``path_or_mapping``.

    ``path_or_mapping`` is the path of a YAML file (needs the ``yaml`` extra:
    ``pip install 'cbsync[yaml]'``) or a mapping of the same shape: a top key
    ``circuit_breaker`` mapping profile names to settings.  Other top-level
    keys are left alone, so the section may live in an application's own
    configuration file.  Returns the registry.

    Any problem -- a missing, empty or non-YAML file, no ``circuit_breaker``
    mapping, an unknown setting, a bad value, both ``window_duration`` and
    ``failure_window`` -- raises :class:`~cbsync.ConfigError` naming the file,
    the profile, the setting and the value; nothing is changed then.

    >>> import cbsync
    >>> registry = cbsync.load_config(
    ...     {"circuit_breaker": {"database": {"failure_threshold": 3, "timeout": "10s"}}},
    ...     registry=cbsync.Registry(),
    ... )
    >>> registry.get("orders", profile="database").config.timeout
    10.0
    """
    if isinstance(path_or_mapping, Mapping):
        label = "configuration mapping"
        document: object = path_or_mapping
    elif isinstance(path_or_mapping, (str, os.PathLike)):
        label = os.fspath(path_or_mapping)
        document = _read_yaml(label)
    else:
        raise ConfigError(
            "load_config() needs a file path or a mapping, got {} {!r}".format(
                type(path_or_mapping).__name__, path_or_mapping
            )
        )
    profiles = extract_profiles(document, label)
    target = resolve_registry(registry)
    try:
        target.configure(profiles)
    except ConfigError as exc:
        raise ConfigError("{}: {}".format(label, exc)) from exc
    return target


def extract_profiles(document: object, label: str) -> Dict[str, Any]:
    """The ``circuit_breaker`` mapping of a loaded document, checked."""
    expected = "a mapping with the top key {!r}".format(TOP_KEY)
    if document is None:
        raise ConfigError("{} is empty; expected {}".format(label, expected))
    if not isinstance(document, Mapping):
        raise ConfigError(
            "{}: expected {}, got {} {}".format(
                label, expected, type(document).__name__, _short(document)
            )
        )
    if TOP_KEY not in document:
        hint = did_you_mean(TOP_KEY, (key for key in document if isinstance(key, str)))
        raise ConfigError(
            "{}: no {!r} key (top-level keys: {}){}".format(
                label, TOP_KEY, ", ".join(repr(key) for key in document) or "none", hint
            )
        )
    profiles = document[TOP_KEY]
    if profiles is None:
        raise ConfigError(
            "{}: {!r} is empty; expected a mapping of profile names to settings".format(
                label, TOP_KEY
            )
        )
    if not isinstance(profiles, Mapping):
        raise ConfigError(
            "{}: {!r} must map profile names to settings, got {} {}".format(
                label, TOP_KEY, type(profiles).__name__, _short(profiles)
            )
        )
    for profile, settings in profiles.items():
        if settings is None:
            raise ConfigError(
                "{}: profile {!r} is empty; give it settings or remove it".format(label, profile)
            )
    return dict(profiles)


def _read_yaml(path: str) -> object:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            "{}: reading YAML needs PyYAML; install it with: pip install 'cbsync[yaml]'".format(
                path
            )
        ) from None
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise ConfigError("{}: no such configuration file".format(path)) from None
    except OSError as exc:
        raise ConfigError("{}: cannot read it ({})".format(path, exc)) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("{}: not UTF-8 text ({})".format(path, exc)) from exc
    try:
        # A SafeLoader subclass: no Python objects are ever constructed.
        return yaml.load(text, Loader=_strict_loader())
    except ConfigError as exc:
        raise ConfigError("{}: {}".format(path, exc)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError("{}: not valid YAML: {}".format(path, _yaml_problem(exc))) from exc


_LOADER: Any = None


def _strict_loader() -> Any:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any) -> Any:
        loader.flatten_mapping(node)
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            try:
                line = seen.get(key)
            except TypeError:
                continue  # unhashable: construct_mapping reports it
            if line is not None:
                raise ConfigError(
                    "key {!r} appears twice in one mapping (lines {} and {})".format(
                        key, line, key_node.start_mark.line + 1
                    )
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=True)

    StrictSafeLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    _LOADER = StrictSafeLoader
    return _LOADER


def _yaml_problem(exc: Any) -> str:
    """``line L, column C: problem (context)`` from a PyYAML error."""
    problem = getattr(exc, "problem", None)
    if not problem:
        return " ".join(str(exc).split())
    mark = getattr(exc, "problem_mark", None)
    where = "" if mark is None else "line {}, column {}: ".format(mark.line + 1, mark.column + 1)
    context = getattr(exc, "context", None)
    return "{}{}{}".format(where, problem, " ({})".format(context) if context else "")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
