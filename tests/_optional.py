"""Importing the optional library a test module needs: skip without it, but never under CI."""

import importlib
import os
from types import ModuleType

import pytest


def require(name: str, install: str) -> ModuleType:
    """Import ``name``; without it, skip the whole test module (``install`` says how to
    get it) -- except under ``CI``, where the test requirements install every extra, so
    a missing one is an error."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(
            "{} is not importable ({}): {}".format(name, exc, install), allow_module_level=True
        )
        raise  # unreachable: skip() raises
