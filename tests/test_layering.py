"""The source keeps its shape: no import cycles, integrations on the public API only,
and no module outside the breaker's own touching a breaker's or a registry's privates.

These read the source with ``ast``; nothing is imported to check it.
"""

import ast
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import cbsync
import cbsync._registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The modules a breaker is made of: they may touch its private attributes.
BREAKER_MODULES = frozenset(
    (
        "cbsync._breaker",
        "cbsync._machine",
        "cbsync._states",
        "cbsync._permit",
        "cbsync._link",
        "cbsync._adjust",
    )
)
#: What an integration may import of the core: its public modules.
PUBLIC_CORE = frozenset(("cbsync", "cbsync.reporting", "cbsync.stores", "cbsync.toolkit"))


def _modules() -> Dict[str, List[str]]:
    """Every module of cbsync and of the integrations: name -> source files.

    ``cbsync.integrations`` has two ``__init__`` files: the source tree's
    stand-in and the installed one (``integrations/__init__.py``).
    """
    found: Dict[str, List[str]] = {}
    for top, package in (("cbsync", "cbsync"), ("integrations", "cbsync.integrations")):
        base = os.path.join(ROOT, top)
        for folder, _, files in os.walk(base):
            for file in files:
                if not file.endswith(".py"):
                    continue
                relative = os.path.relpath(os.path.join(folder, file), base)[:-3]
                parts = [p for p in relative.split(os.sep) if p != "__init__"]
                name = ".".join([package, *parts])
                found.setdefault(name, []).append(os.path.join(folder, file))
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return any(path.endswith("__init__.py") for path in MODULES.get(name, ()))


def _imports(name: str) -> Iterator[Tuple[str, int, str]]:
    """``(imported module, line, file)`` for every import of module ``name``,
    those under ``if TYPE_CHECKING:`` and inside functions included."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for path in MODULES[name]:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node.lineno, path
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    # "from . import _health" imports a module; "from .x import y" a name.
                    sub = "{}.{}".format(target, alias.name)
                    yield (sub if sub in MODULES else target), node.lineno, path


def _graph() -> Dict[str, Set[str]]:
    return {
        name: {target for target, _, _ in _imports(name) if target in MODULES and target != name}
        for name in MODULES
    }


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    """Imports point one way: no two modules import each other, even for types."""
    graph = _graph()
    assert "cbsync._breaker" in graph["cbsync._registry"]  # the graph is really built
    assert _cycles(graph) == []


def test_a_cycle_would_be_found():
    """The cycle finder reports a cycle (so the test above could fail)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_integrations_use_the_public_core_only():
    """An integration imports cbsync's public modules, never a private one."""
    wrong = [
        "{}:{} imports {}".format(os.path.relpath(path, ROOT), line, target)
        for name in MODULES
        if name.startswith("cbsync.integrations.")
        for target, line, path in _imports(name)
        if target.startswith("cbsync")
        and not target.startswith("cbsync.integrations")
        and target not in PUBLIC_CORE
    ]
    assert wrong == []


def test_the_core_never_imports_an_integration():
    """Dependencies point from the integrations to the core, never back."""
    wrong = [
        "{}:{} imports {}".format(os.path.relpath(path, ROOT), line, target)
        for name in MODULES
        if not name.startswith("cbsync.integrations")
        for target, line, path in _imports(name)
        if target.startswith("cbsync.integrations.")
    ]
    assert wrong == []


# -- private attributes ------------------------------------------------------------


def _private(names: Set[str]) -> Set[str]:
    return {n for n in names if n.startswith("_") and not n.endswith("__")}


def _class_names(cls: type) -> Set[str]:
    names: Set[str] = set()
    for klass in cls.__mro__:
        names.update(vars(klass))
        names.update(getattr(klass, "__slots__", ()))
    return names


BREAKER_PRIVATE = _private(_class_names(cbsync.CircuitBreaker))
REGISTRY_PRIVATE = _private(_class_names(cbsync.Registry) | set(vars(cbsync.Registry())))
#: An object of one of these names is taken for a breaker, whatever the module.
BREAKERISH = re.compile(r"(^|[._])(breaker|candidate|cb)s?$")


def _own_names(tree: ast.AST) -> Set[str]:
    """The private names a module defines itself: its classes' attributes and
    methods, and ``self.x`` it assigns."""
    own: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    own.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                    own.update(t.id for t in targets if isinstance(t, ast.Name))
                    if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                        value = item.value
                        if isinstance(value, (ast.Tuple, ast.List)):
                            own.update(e.value for e in value.elts if isinstance(e, ast.Constant))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            own.add(node.attr)
    return own


def _violations(name: str, source: str, path: str) -> List[str]:
    tree = ast.parse(source, path)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.endswith("__"):
            continue
        receiver = ast.unparse(node.value) if hasattr(ast, "unparse") else ""
        if receiver in ("self", "cls"):
            continue
        breakerish = bool(BREAKERISH.search(receiver))
        # A known private name the module does not define itself, or any
        # private name of something that is plainly a breaker.
        if (
            node.attr in BREAKER_PRIVATE | REGISTRY_PRIVATE and node.attr not in own
        ) or breakerish:
            found.append(
                "{}:{}: {}.{}".format(
                    os.path.relpath(path, ROOT), node.lineno, receiver, node.attr
                )
            )
    return found


def test_no_module_outside_the_breaker_touches_its_privates():
    """Outside the breaker's own modules, code uses the public API of breakers and registries."""
    if not hasattr(ast, "unparse"):
        pytest.skip("ast.unparse needs Python 3.9 (the check is the same on every Python)")
    found = []
    for name, paths in sorted(MODULES.items()):
        if name in BREAKER_MODULES:
            continue
        for path in paths:
            with open(path, encoding="utf-8") as file:
                found.extend(_violations(name, file.read(), path))
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        "breaker._acquire()",
        "permit = self._breaker._current",
        "candidate._listeners = ()",
        "registry._breakers.clear()",
        "handle._breaker._recover(state, True, active)",
    ],
)
def test_a_private_access_would_be_found(line):
    """The private-access check flags the accesses the core redesign removed."""
    if not hasattr(ast, "unparse"):
        pytest.skip("ast.unparse needs Python 3.9")
    assert _violations("cbsync.example", "def f(self):\n    " + line + "\n", "example.py")


def test_the_rules_know_the_private_names():
    """The private names checked include the breaker's state and the registry's table."""
    assert {"_current", "_admit", "_record", "_listeners", "_lock"} <= BREAKER_PRIVATE
    assert {"_breakers", "_profiles"} <= REGISTRY_PRIVATE
    assert cbsync._registry.Registry is cbsync.Registry
