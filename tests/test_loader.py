"""Tests for cbsync.load_config: YAML files and mappings of profiles."""

import inspect
import subprocess
import sys
import textwrap

import pytest
from _support import SEED_YAML

import cbsync

#: What every field of the seed's three profiles resolves to.
SEED_EXPECTED = {
    "default": {
        "failure_threshold": 5,
        "failure_rate_threshold": 0.5,
        "minimum_calls": 10,
        "window_type": "time_based",
        "failure_window": 60.0,
        "window_size": 100,
        "slow_call_duration": None,
        "slow_call_rate_threshold": 1.0,
        "timeout": 30.0,
        "backoff_multiplier": 1.0,
        "max_timeout": 300.0,
        "success_threshold": 3,
        "half_open_max_calls": 3,
        "failure_on": (Exception,),
        "ignore": (),
        "failure_result": None,
    },
}
SEED_EXPECTED["database"] = dict(
    SEED_EXPECTED["default"], failure_threshold=3, timeout=10.0, failure_rate_threshold=0.3
)
SEED_EXPECTED["http_service"] = dict(
    SEED_EXPECTED["default"], failure_window=30.0, minimum_calls=20
)


def write(tmp_path, text, name="cbsync.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("profile", sorted(SEED_EXPECTED))
def test_seed_yaml_loads_exactly(tmp_path, profile):
    """The seed document's YAML gives the expected value for every field."""
    registry = cbsync.load_config(write(tmp_path, SEED_YAML), registry=cbsync.Registry())
    config = registry.get("svc-" + profile, profile=profile).config
    assert config == cbsync.CircuitBreakerConfig(**SEED_EXPECTED[profile])
    assert {field: getattr(config, field) for field in SEED_EXPECTED[profile]} == (
        SEED_EXPECTED[profile]
    )


def test_seed_profiles_in_file_order(tmp_path):
    """The registry knows the file's profiles, in order."""
    registry = cbsync.load_config(str(write(tmp_path, SEED_YAML)), registry=cbsync.Registry())
    assert registry.profiles == ("default", "database", "http_service")


def test_mapping_of_the_same_shape_loads():
    """A mapping works like a file."""
    registry = cbsync.load_config(
        {"circuit_breaker": {"database": {"failure_threshold": 3, "timeout": "10s"}}},
        registry=cbsync.Registry(),
    )
    config = registry.get("database").config
    assert (config.failure_threshold, config.timeout) == (3, 10.0)


def test_other_top_level_keys_are_left_alone(tmp_path):
    """The section may live in an application's own config file."""
    path = write(
        tmp_path,
        """\
        logging: {level: INFO}
        circuit_breaker:
          default: {failure_threshold: 2}
        """,
    )
    registry = cbsync.load_config(path, registry=cbsync.Registry())
    assert registry.get("x").config.failure_threshold == 2


def test_configures_the_default_registry(tmp_path, breaker_registry):
    """Without registry=, cbsync.registry (the current default) is configured."""
    returned = cbsync.load_config(write(tmp_path, SEED_YAML))
    assert returned is breaker_registry
    assert cbsync.registry.get("database").config.timeout == 10.0


BAD_FILES = [
    pytest.param(
        "", "{path} is empty; expected a mapping with the top key 'circuit_breaker'", id="empty"
    ),
    pytest.param(
        "# only a comment\n",
        "{path} is empty; expected a mapping with the top key 'circuit_breaker'",
        id="comment-only",
    ),
    pytest.param(
        "circuit_breaker: [oops\n",
        "{path}: not valid YAML: line 2, column 1: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence)",
        id="not-yaml",
    ),
    pytest.param(
        "- default\n- database\n",
        "{path}: expected a mapping with the top key 'circuit_breaker', "
        "got list ['default', 'database']",
        id="not-a-mapping",
    ),
    pytest.param(
        "circuit-breaker:\n  default: {timeout: 5s}\n",
        "{path}: no 'circuit_breaker' key (top-level keys: 'circuit-breaker'); "
        "did you mean 'circuit-breaker'?",
        id="no-top-key",
    ),
    pytest.param(
        "circuit_breaker:\n",
        "{path}: 'circuit_breaker' is empty; expected a mapping of profile names to settings",
        id="empty-section",
    ),
    pytest.param(
        "circuit_breaker: [default]\n",
        "{path}: 'circuit_breaker' must map profile names to settings, got list ['default']",
        id="section-not-a-mapping",
    ),
    pytest.param(
        "circuit_breaker:\n  database:\n",
        "{path}: profile 'database' is empty; give it settings or remove it",
        id="empty-profile",
    ),
    pytest.param(
        "circuit_breaker:\n  database: 3\n",
        "{path}: profile 'database': expected a mapping of settings, got int 3",
        id="profile-not-a-mapping",
    ),
    pytest.param(
        "circuit_breaker:\n  database:\n    failure_treshold: 3\n",
        "{path}: profile 'database': unknown setting 'failure_treshold' (value 3); "
        "did you mean 'failure_threshold'?",
        id="misspelt-key",
    ),
    pytest.param(
        "circuit_breaker:\n  database:\n    colour: blue\n",
        "{path}: profile 'database': unknown setting 'colour' (value 'blue')",
        id="unknown-key",
    ),
    pytest.param(
        "circuit_breaker:\n  database:\n    timeout: 10 seconds\n",
        "{path}: profile 'database': timeout='10 seconds' is not a duration: use "
        "seconds or a string such as '250ms', '30s', '2m', '1h'",
        id="bad-duration",
    ),
    pytest.param(
        "circuit_breaker:\n  database:\n    failure_threshold: 0\n",
        "{path}: profile 'database': failure_threshold=0 must be a whole number of at least 1",
        id="zero-count",
    ),
    pytest.param(
        "circuit_breaker:\n  default:\n    failure_rate_threshold: 1.5\n",
        "{path}: profile 'default': failure_rate_threshold=1.5 must be a rate in (0, 1]",
        id="bad-rate-in-default",
    ),
    pytest.param(
        "circuit_breaker:\n  db:\n    window_type: sliding\n",
        "{path}: profile 'db': window_type='sliding' must be 'time_based' or 'count_based'",
        id="bad-window-type",
    ),
    pytest.param(
        "circuit_breaker:\n  default: {timeout: 2m}\n  db: {max_timeout: 1m}\n",
        "{path}: profile 'db': max_timeout='1m' is below timeout='2m'",
        id="max-timeout-below-default-timeout",
    ),
    pytest.param(
        "circuit_breaker:\n  http_service:\n    window_duration: 30s\n    failure_window: 60s\n",
        "{path}: profile 'http_service': 'failure_window' and 'window_duration' are "
        "the same setting; give only one (failure_window='60s', window_duration='30s')",
        id="both-window-spellings",
    ),
    pytest.param(
        "circuit_breaker:\n  db: {timeout: 5s}\n  db: {timeout: 6s}\n",
        "{path}: key 'db' appears twice in one mapping (lines 2 and 3)",
        id="duplicate-profile",
    ),
    pytest.param(
        "circuit_breaker:\n  db:\n    failure_on: ValueError\n",
        "{path}: profile 'db': failure_on='ValueError' must be an exception type, a "
        "tuple of them, or a predicate exc -> bool",
        id="exception-name-string",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_files_raise_config_error_with_exact_text(tmp_path, text, message):
    """Each bad file raises ConfigError naming file, profile, key and value."""
    path = write(tmp_path, text)
    registry = cbsync.Registry()
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(path, registry=registry)
    assert str(info.value) == message.format(path=path)
    assert registry.profiles == ()


def test_missing_file(tmp_path):
    """A missing file is a ConfigError naming it."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(path, registry=cbsync.Registry())
    assert str(info.value) == "{}: no such configuration file".format(path)


def test_directory_instead_of_file(tmp_path):
    """A path that cannot be read is a ConfigError naming it."""
    with pytest.raises(cbsync.ConfigError, match="cannot read it"):
        cbsync.load_config(tmp_path, registry=cbsync.Registry())


def test_not_utf8(tmp_path):
    """Bytes that are not UTF-8 are a ConfigError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("circuit_breaker: {caf\xe9: {}}\n".encode("latin-1"))
    with pytest.raises(cbsync.ConfigError, match="not UTF-8 text"):
        cbsync.load_config(path, registry=cbsync.Registry())


def test_mapping_errors_name_the_mapping():
    """Errors for mapping input say it came from a mapping."""
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(
            {"circuit_breaker": {"db": {"timeout": -1}}}, registry=cbsync.Registry()
        )
    assert str(info.value) == (
        "configuration mapping: profile 'db': timeout=-1 must be a positive, finite duration"
    )


def test_first_argument_is_path_or_mapping(tmp_path):
    """The first parameter is named path_or_mapping, as the contract says."""
    assert list(inspect.signature(cbsync.load_config).parameters) == [
        "path_or_mapping",
        "registry",
    ]
    registry = cbsync.load_config(
        path_or_mapping={"circuit_breaker": {"database": {"failure_threshold": 3}}},
        registry=cbsync.Registry(),
    )
    assert registry.get("database").config.failure_threshold == 3
    from_file = cbsync.load_config(
        path_or_mapping=write(tmp_path, SEED_YAML), registry=cbsync.Registry()
    )
    assert from_file.profiles == ("default", "database", "http_service")


def test_wrong_argument_type():
    """Something neither a path nor a mapping is a ConfigError."""
    with pytest.raises(cbsync.ConfigError, match="needs a file path or a mapping, got int 3"):
        cbsync.load_config(3)  # type: ignore[arg-type]


def test_a_failed_load_changes_nothing(tmp_path):
    """A file with one bad profile configures none of them."""
    registry = cbsync.Registry({"default": {"failure_threshold": 9}})
    path = write(
        tmp_path, "circuit_breaker:\n  default: {failure_threshold: 2}\n  db: {timeout: x}\n"
    )
    with pytest.raises(cbsync.ConfigError):
        cbsync.load_config(path, registry=registry)
    assert registry.profiles == ("default",)
    assert registry.get("x").config.failure_threshold == 9


def test_changing_an_existing_breaker_is_refused(tmp_path):
    """Loading a file that would change a live breaker names the file and breaker."""
    registry = cbsync.Registry()
    registry.get("database")
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(write(tmp_path, SEED_YAML), registry=registry)
    assert str(info.value).startswith(
        "{}: breaker 'database' already exists and this configuration would change it".format(
            tmp_path / "cbsync.yaml"
        )
    )


def test_yaml_tags_are_not_executed(tmp_path):
    """Only a safe loader is used: Python object tags are refused, never run."""
    made = tmp_path / "made"
    path = write(tmp_path, "circuit_breaker: !!python/object/apply:os.mkdir ['{}']\n".format(made))
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(path, registry=cbsync.Registry())
    assert str(info.value) == (
        "{}: not valid YAML: line 1, column 18: could not determine a constructor for the "
        "tag 'tag:yaml.org,2002:python/object/apply:os.mkdir'".format(path)
    )
    assert not made.exists()


def test_missing_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    """Without PyYAML installed, reading a file says which extra to install."""
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    path = write(tmp_path, SEED_YAML)
    with pytest.raises(cbsync.ConfigError) as info:
        cbsync.load_config(path, registry=cbsync.Registry())
    assert str(info.value) == (
        "{}: reading YAML needs PyYAML; install it with: pip install 'cbsync[yaml]'".format(path)
    )


def test_mappings_need_no_pyyaml(monkeypatch):
    """A mapping loads without PyYAML."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    registry = cbsync.load_config(
        {"circuit_breaker": {"default": {"timeout": 5}}}, registry=cbsync.Registry()
    )
    assert registry.get("x").config.timeout == 5.0


def test_import_cbsync_does_not_import_yaml():
    """`import cbsync` leaves PyYAML unimported until a file is read."""
    code = "import sys, cbsync; print('yaml' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
