"""tox plugin: find the pyenv interpreters, and never skip one under CI.

Loaded by tox from the project root; users run plain ``tox``.
"""

import glob
import os
from typing import Any

from tox.plugin import impl


@impl
def tox_add_core_config(core_conf: Any, state: Any) -> None:
    # tox finds "py38" by looking for python3.8 on PATH; pyenv keeps each
    # version in its own folder, so put those folders first.
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin")))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])
    if os.environ.get("CI"):
        # A missing interpreter fails CI instead of being skipped quietly.
        state.conf.options.skip_missing_interpreters = "false"
