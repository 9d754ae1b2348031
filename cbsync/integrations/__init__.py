"""cbsync's integrations: one module per library they drive.

Where the modules are: in the repository's top-level ``integrations/``
folder (the layout of the design card).  An installed cbsync has them here,
in ``cbsync/integrations/``, because setup.cfg maps the package
``cbsync.integrations`` to that folder (``package_dir``), and this file is
not part of the wheel -- ``integrations/__init__.py`` is.

In a source checkout this file stands in for the installed package: it adds
the top-level folder to the package's search path, so that ``python -m
cbsync demo``, ``import cbsync.integrations.requests`` and plain ``pytest``
work from the repository root without installing anything.  (Type checkers
do not run this code: ``tox -e type`` checks an editable install, whose
links put every module at its installed place.)
"""

import os

__path__.append(
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "integrations",
    )
)
