"""The examples in cbsync's docstrings run as written."""

import doctest
import importlib
import pkgutil

import pytest

import cbsync

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(cbsync.__path__, "cbsync.")
    if not name.startswith("cbsync.integrations") and name != "cbsync.__main__"
)


@pytest.mark.parametrize("name", ["cbsync", *MODULES])
def test_docstring_examples(name):
    """Every docstring example of the module passes."""
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL, verbose=False
    )
    assert result.failed == 0
