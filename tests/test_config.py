"""CircuitBreakerConfig: defaults, durations, validation."""

import dataclasses
import datetime

import pytest

import cbsync
from cbsync import CircuitBreakerConfig, ConfigError
from cbsync._config import FIELD_NAMES, did_you_mean


def test_defaults_are_the_seeds():
    """Every field defaults to the documented value."""
    config = CircuitBreakerConfig()
    assert config.failure_threshold == 5
    assert config.failure_rate_threshold == 0.5
    assert config.minimum_calls == 10
    assert config.window_type == "time_based"
    assert config.failure_window == 60.0
    assert config.window_size == 100
    assert config.slow_call_duration is None
    assert config.slow_call_rate_threshold == 1.0
    assert config.timeout == 30.0
    assert config.backoff_multiplier == 1.0
    assert config.max_timeout == 300.0
    assert config.success_threshold == 3
    assert config.half_open_max_calls == 3
    assert config.failure_on == (Exception,)
    assert config.ignore == ()
    assert config.failure_result is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (2, 2.0),
        (0.25, 0.25),
        (datetime.timedelta(minutes=2), 120.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (" 10 S ", 10.0),
        ("45", 45.0),
    ],
)
def test_durations_are_float_seconds(value, seconds):
    """Numbers, timedeltas and unit strings become float seconds."""
    config = CircuitBreakerConfig(timeout=value, failure_window=value)
    assert config.timeout == seconds
    assert config.failure_window == seconds
    assert isinstance(config.timeout, float)


def test_max_timeout_defaults_to_at_least_timeout():
    """The default cap is max(300 s, timeout)."""
    assert CircuitBreakerConfig(timeout="10m").max_timeout == 600.0
    assert CircuitBreakerConfig(timeout=5).max_timeout == 300.0
    assert CircuitBreakerConfig(timeout=5, max_timeout=5).max_timeout == 5.0


def test_config_is_frozen():
    """A config cannot be changed after construction."""
    config = CircuitBreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timeout = 1.0  # type: ignore[misc]


def test_replace_makes_a_validated_variant():
    """dataclasses.replace gives a new, validated config."""
    config = CircuitBreakerConfig(failure_threshold=3)
    variant = dataclasses.replace(config, failure_threshold=7)
    assert (config.failure_threshold, variant.failure_threshold) == (3, 7)
    with pytest.raises(ConfigError, match="failure_threshold"):
        dataclasses.replace(config, failure_threshold=0)


def test_configs_compare_by_value():
    """Two configs with the same fields are equal."""
    assert CircuitBreakerConfig(timeout="30s") == CircuitBreakerConfig(timeout=30)
    assert CircuitBreakerConfig(timeout=1) != CircuitBreakerConfig(timeout=2)


def test_positional_arguments_are_refused():
    """Fields are keyword-only."""
    with pytest.raises(TypeError):
        CircuitBreakerConfig(5)  # type: ignore[misc]


def test_optional_rules_accept_none():
    """failure_threshold and failure_rate_threshold may be disabled."""
    config = CircuitBreakerConfig(failure_threshold=None, failure_rate_threshold=None)
    assert config.failure_threshold is None
    assert config.failure_rate_threshold is None


def test_matchers_accept_types_tuples_and_predicates():
    """failure_on and ignore take a type, a tuple of types or a predicate."""
    assert CircuitBreakerConfig(failure_on=OSError).failure_on == (OSError,)
    assert CircuitBreakerConfig(ignore=(KeyError, ValueError)).ignore == (KeyError, ValueError)
    predicate = lambda exc: True  # noqa: E731
    assert CircuitBreakerConfig(failure_on=predicate).failure_on is predicate


def test_window_type_spellings():
    """window_type accepts both names, case-insensitively."""
    assert CircuitBreakerConfig(window_type="COUNT_BASED").window_type == "count_based"
    assert CircuitBreakerConfig(window_type="time-based").window_type == "time_based"


BAD_VALUES = [
    ("failure_threshold", 0),
    ("failure_threshold", -1),
    ("failure_threshold", 2.5),
    ("failure_threshold", True),
    ("failure_threshold", "5"),
    ("failure_rate_threshold", 0),
    ("failure_rate_threshold", 1.5),
    ("failure_rate_threshold", -0.1),
    ("failure_rate_threshold", "half"),
    ("minimum_calls", 0),
    ("minimum_calls", None),
    ("window_type", "sliding"),
    ("window_type", 3),
    ("failure_window", 0),
    ("failure_window", -5),
    ("failure_window", "soon"),
    ("failure_window", "10 parsecs"),
    ("failure_window", datetime.timedelta(0)),
    ("failure_window", [1]),
    ("window_size", 0),
    ("slow_call_duration", 0),
    ("slow_call_duration", "fast"),
    ("slow_call_rate_threshold", 0),
    ("slow_call_rate_threshold", None),
    ("slow_call_rate_threshold", 2),
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", float("inf")),
    ("timeout", float("nan")),
    ("timeout", None),
    ("backoff_multiplier", 0.5),
    ("backoff_multiplier", "2"),
    ("backoff_multiplier", float("inf")),
    ("max_timeout", 0),
    ("max_timeout", 10),  # below the default timeout of 30 s
    ("success_threshold", 0),
    ("half_open_max_calls", 0),
    ("half_open_max_calls", 1.0),
    ("failure_on", "OSError"),
    ("failure_on", (OSError, "x")),
    ("failure_on", KeyboardInterrupt),
    ("ignore", 42),
    ("ignore", (SystemExit,)),
    ("failure_result", "503"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_values_name_the_field_and_value(field, value):
    """Each bad value raises ConfigError naming the field and the value."""
    with pytest.raises(ConfigError) as info:
        CircuitBreakerConfig(**{field: value})
    message = str(info.value)
    assert field in message
    assert repr(value) in message


def test_config_error_is_a_value_error():
    """ConfigError is also a ValueError and a CircuitBreakerError."""
    with pytest.raises(ValueError):
        CircuitBreakerConfig(timeout=-1)
    assert issubclass(ConfigError, cbsync.CircuitBreakerError)


def test_unknown_field_suggests_the_closest():
    """A misspelt field names the field it most resembles."""
    with pytest.raises(ConfigError, match="did you mean 'failure_threshold'"):
        CircuitBreakerConfig(failure_treshold=3)


def test_unknown_field_without_a_close_match():
    """A field like nothing known is still named."""
    with pytest.raises(ConfigError, match=r"unknown circuit breaker setting 'colour'$"):
        CircuitBreakerConfig(colour="red")


@pytest.mark.parametrize(
    ("word", "candidates", "hint"),
    [
        ("timeuot", ("timeout", "window_size"), "; did you mean 'timeout'?"),
        ("colour", ("timeout", "window_size"), ""),
        ("x", (), ""),
        ("sned", iter(["send", "store"]), "; did you mean 'send'?"),
    ],
)
def test_did_you_mean_is_the_one_spelling_hint(word, candidates, hint):
    """did_you_mean() gives the hint every error message appends, or nothing."""
    assert did_you_mean(word, candidates) == hint


def test_minimum_calls_must_fit_a_count_window():
    """A count window smaller than minimum_calls could never judge a rate."""
    with pytest.raises(ConfigError, match=r"minimum_calls=20 .*window_size=10"):
        CircuitBreakerConfig(window_type="count_based", window_size=10, minimum_calls=20)
    assert CircuitBreakerConfig(window_size=10, minimum_calls=20).minimum_calls == 20


def test_breaker_takes_fields_or_config_not_both():
    """Config fields as keywords are a shortcut; giving both is an error."""
    breaker = cbsync.CircuitBreaker("a", failure_threshold=2)
    assert breaker.config.failure_threshold == 2
    with pytest.raises(ConfigError, match="not both"):
        cbsync.CircuitBreaker("a", CircuitBreakerConfig(), failure_threshold=2)
    with pytest.raises(ConfigError, match="did you mean 'timeout'"):
        cbsync.CircuitBreaker("a", timeuot=3)


@pytest.mark.parametrize("name", ["", None, 3])
def test_breaker_name_must_be_a_string(name):
    """A breaker needs a non-empty string name."""
    with pytest.raises(ConfigError, match="name="):
        cbsync.CircuitBreaker(name)


#: A valid value for each field, different from its default.
REPLACEMENTS = {
    "failure_threshold": 7,
    "failure_rate_threshold": 0.25,
    "minimum_calls": 4,
    "window_type": "count_based",
    "failure_window": 120.0,
    "window_size": 50,
    "slow_call_duration": 2.5,
    "slow_call_rate_threshold": 0.5,
    "timeout": 600.0,
    "backoff_multiplier": 2.0,
    "max_timeout": 900.0,
    "success_threshold": 1,
    "half_open_max_calls": 1,
    "failure_on": (OSError,),
    "ignore": (KeyError,),
    "failure_result": bool,
}


def test_replacements_cover_every_field():
    """The replace() test below runs over every field of the config."""
    assert sorted(REPLACEMENTS) == sorted(FIELD_NAMES)


@pytest.mark.parametrize("field", sorted(REPLACEMENTS))
def test_replace_works_on_every_field(field):
    """dataclasses.replace() changes one field and keeps every other one."""
    base = CircuitBreakerConfig()
    value = REPLACEMENTS[field]
    changed = dataclasses.replace(base, **{field: value})
    assert changed == CircuitBreakerConfig(**{field: value})
    assert getattr(changed, field) == value
    for other in FIELD_NAMES:
        if other != field and not (field == "timeout" and other == "max_timeout"):
            assert getattr(changed, other) == getattr(base, other), other


def test_replace_derives_the_default_max_timeout_again():
    """A max_timeout left to its default follows the new timeout; a chosen one is kept."""
    derived = dataclasses.replace(CircuitBreakerConfig(), timeout=600)
    assert derived.max_timeout == 600.0
    assert dataclasses.replace(derived, timeout=5).max_timeout == 300.0
    chosen = CircuitBreakerConfig(max_timeout=400)
    assert dataclasses.replace(chosen, timeout=350).max_timeout == 400.0
    with pytest.raises(ConfigError, match=r"max_timeout=400\.0 is below timeout=600"):
        dataclasses.replace(chosen, timeout=600)
    assert repr(derived.max_timeout) == "600.0"
    assert CircuitBreakerConfig(max_timeout=300) == CircuitBreakerConfig()
