"""Tests for the command line: `python -m cbsync check-config FILE`."""

import subprocess
import sys

import pytest
from _support import SEED_YAML

import cbsync
from cbsync.__main__ import main

DATABASE_BLOCK = """\
database:
  failure_threshold: 3  # database
  failure_rate_threshold: 0.3  # database
  minimum_calls: 10  # default
  window_type: time_based  # built-in
  failure_window: 60s  # default
  window_size: 100  # built-in
  slow_call_duration: null  # built-in
  slow_call_rate_threshold: 1.0  # built-in
  timeout: 10s  # database
  backoff_multiplier: 1.0  # built-in
  max_timeout: 300s  # built-in
  success_threshold: 3  # default
  half_open_max_calls: 3  # default
  failure_on: [Exception]  # built-in
  ignore: []  # built-in
  failure_result: null  # built-in
"""


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cbsync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_valid_file_prints_resolved_profiles(tmp_path):
    """A valid file exits 0 and prints every profile, resolved, with origins."""
    path = tmp_path / "cbsync.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("# {}: valid, 3 profiles\ndefault:\n".format(path))
    assert DATABASE_BLOCK in result.stdout
    assert "http_service:\n  failure_threshold: 5  # default\n" in result.stdout
    assert "  failure_window: 30s  # http_service\n" in result.stdout
    assert "  minimum_calls: 20  # http_service\n" in result.stdout
    assert result.stdout.count("\n") == 1 + 3 * 17


def test_check_config_without_default_prints_built_in_default(tmp_path):
    """A file with no default profile still shows what default resolves to."""
    path = tmp_path / "one.yaml"
    path.write_text("circuit_breaker:\n  cache: {timeout: 250ms}\n", encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# {}: valid, 1 profile\ndefault:\n".format(path))
    assert "cache:\n" in result.stdout
    assert "  timeout: 0.25s  # cache\n" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "circuit_breaker:\n  database:\n    failure_treshold: 3\n",
            "{path}: profile 'database': unknown setting 'failure_treshold' (value 3); "
            "did you mean 'failure_threshold'?",
        ),
        ("", "{path} is empty; expected a mapping with the top key 'circuit_breaker'"),
        (
            "circuit_breaker:\n  db:\n    timeout: soon\n",
            "{path}: profile 'db': timeout='soon' is not a duration: use seconds or a string "
            "such as '250ms', '30s', '2m', '1h'",
        ),
    ],
)
def test_check_config_invalid_file_exits_2_with_the_message(tmp_path, text, message):
    """An invalid file exits 2 and prints the error, and nothing on stdout."""
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "cbsync check-config: error: {}\n".format(message.format(path=path))


def test_check_config_missing_file(tmp_path):
    """A missing file exits 2 naming it."""
    path = tmp_path / "absent.yaml"
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr == "cbsync check-config: error: {}: no such configuration file\n".format(
        path
    )


def test_no_command_prints_usage_and_exits_2():
    """Running cbsync without a command shows the commands and exits 2."""
    result = run_cli()
    assert result.returncode == 2
    assert "usage: cbsync" in result.stderr
    assert "check-config" in result.stderr


def test_version():
    """--version prints the package version."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "cbsync " + cbsync.__version__


def test_main_returns_the_exit_status(tmp_path, capsys):
    """main(argv) returns the status instead of exiting."""
    good = tmp_path / "good.yaml"
    good.write_text(SEED_YAML, encoding="utf-8")
    assert main(["check-config", str(good)]) == 0
    assert DATABASE_BLOCK in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1]\n", encoding="utf-8")
    assert main(["check-config", str(bad)]) == 2
    assert capsys.readouterr().err == (
        "cbsync check-config: error: {}: expected a mapping with the top key "
        "'circuit_breaker', got list [1]\n".format(bad)
    )


def test_check_config_does_not_touch_the_default_registry(tmp_path, breaker_registry):
    """Checking a file configures a throwaway registry, not cbsync.registry."""
    good = tmp_path / "good.yaml"
    good.write_text(SEED_YAML, encoding="utf-8")
    assert main(["check-config", str(good)]) == 0
    assert breaker_registry.profiles == ()
