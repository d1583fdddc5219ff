"""The package's shape: imports run one way, the security core does no I/O, sizes a person can hold.

Layers, lowest first: core, runtime, connections, ops, app. A module imports modules of its own
layer or of lower layers only; the core imports nothing of porthole outside porthole/core, and
none of the standard library's I/O modules; the runtime needs the standard library and h11 only.
Imports inside functions and under `if TYPE_CHECKING:` count too (an arrow is an arrow), but
only run-time imports can make a cycle. This is an import contract without a new dependency:
every module is parsed, none is imported.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "porthole"
LAYERS = ("core", "runtime", "connections", "ops", "app")
IO_MODULES = frozenset({"socket", "selectors", "ssl", "threading", "subprocess", "asyncio", "select",
                        "signal", "multiprocessing", "http", "urllib.request", "socketserver"})
THIRD_PARTY = frozenset({"h11"})  # the one run-time dependency
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


@dataclass(frozen=True)
class Arrow:
    source: str  # a dotted module name: porthole.core.decide
    target: str  # what it imports: porthole.core.policy, json, h11 (from A import b: A.b)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def arrows_of(source: str, tree: ast.AST) -> list[Arrow]:
    """Every import in a module, wherever it stands; relative imports resolved."""
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    package = source.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names]
        else:
            continue
        found += [Arrow(source, target, node.lineno, id(node) in type_only) for target in targets]
    return found


def layer_of(module: str) -> str | None:
    """core, runtime, ... for porthole.<layer>...; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def resolve(target: str, modules: set[str]) -> str | None:
    """The porthole module an import names: A.b is module A.b, or the name b of module A."""
    if target in modules:
        return target
    parent = target.rpartition(".")[0]
    return parent if parent in modules else None


def violations(arrows: list[Arrow], modules: set[str]) -> list[str]:
    """What breaks the contract (see the module docstring), one line each."""
    found = []
    for arrow in arrows:
        here = layer_of(arrow.source)
        top = arrow.target.split(".")[0]
        where = f"{arrow.source}:{arrow.line} imports {arrow.target}"
        if top != "porthole":
            if top not in sys.stdlib_module_names and top not in THIRD_PARTY and top != "__future__":
                found.append(f"{where}: not the standard library or h11")
            if here == "core" and any(arrow.target == io or arrow.target.startswith(io + ".") for io in IO_MODULES):
                found.append(f"{where}: the core does no I/O")
            continue
        target = resolve(arrow.target, modules)
        if target is None:
            found.append(f"{where}: no such module")
            continue
        there = layer_of(target)
        if here is None:
            if there is not None:
                found.append(f"{where}: the package's __init__ imports nothing of its layers")
        elif here == "core" and there != "core":
            found.append(f"{where}: the core imports nothing outside porthole/core")
        elif there is not None and LAYERS.index(there) > LAYERS.index(here):
            found.append(f"{where}: an arrow up, from {here} to {there}")
    return found


def cycles(arrows: list[Arrow], modules: set[str]) -> list[list[str]]:
    """Cycles among run-time imports (TYPE_CHECKING ones are never executed)."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for arrow in arrows:
        target = resolve(arrow.target, modules) if arrow.target.startswith("porthole") else None
        if target and not arrow.type_only and target != arrow.source and layer_of(target) is not None:
            graph[arrow.source].add(target)
    found, done, path = [], set(), []

    def visit(module: str) -> None:
        if module in path:
            found.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return found


def package() -> tuple[dict[str, ast.AST], list[Arrow]]:
    trees = {module_name(path): ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}
    return trees, [arrow for module, tree in trees.items() for arrow in arrows_of(module, tree)]


def test_every_module_is_in_a_layer():
    trees, _ = package()
    assert {layer_of(module) for module in trees} == {None, *LAYERS}


def test_imports_run_one_way():
    trees, arrows = package()
    assert violations(arrows, set(trees)) == []


def test_no_import_cycles():
    trees, arrows = package()
    assert cycles(arrows, set(trees)) == []


def test_the_entry_point_only_starts_the_program():
    """proxy.py: the file PyInstaller freezes runs porthole.app, and holds no code of its own. It
    has two entries: the program, and --healthcheck's lean one, which the image runs every 30 s
    and which must not load the whole program first (app/healthcheck.py says why)."""
    tree = ast.parse((REPO / "proxy.py").read_text())
    imports = {arrow.target for arrow in arrows_of("proxy", tree)}
    assert {target for target in imports if target.startswith("porthole")} <= {"porthole.app.command_line.main",
                                                                                 "porthole.app.healthcheck.main"}
    assert not [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_sizes_a_person_can_hold(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_says_what_it_is_for(path):
    assert ast.get_docstring(ast.parse(path.read_text())), "a module opens with its job (and its invariants)"


# ---- the checks can fail ----------------------------------------------------------------------

MODULES = {"porthole", "porthole.core", "porthole.core.decide", "porthole.core.policy", "porthole.runtime",
           "porthole.runtime.loop", "porthole.app", "porthole.app.wiring", "porthole.connections",
           "porthole.connections.client", "porthole.connections.exchange"}


def arrows(source: str, text: str) -> list[Arrow]:
    return arrows_of(source, ast.parse(text))


@pytest.mark.parametrize("source, text, why", [
    ("porthole.core.decide", "import socket", "the core does no I/O"),
    ("porthole.core.decide", "def f():\n    import selectors", "the core does no I/O"),
    ("porthole.core.decide", "from porthole.runtime.loop import Loop", "the core imports nothing outside"),
    ("porthole.core.decide", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from porthole.app.wiring import Proxy",
     "the core imports nothing outside"),
    ("porthole.runtime.loop", "from porthole.app.wiring import Proxy", "an arrow up, from runtime to app"),
    ("porthole.connections.client", "from ..app import wiring", "an arrow up, from connections to app"),
    ("porthole.runtime.loop", "import requests", "not the standard library or h11"),
    ("porthole.core.decide", "from porthole.core.nothing import x", "no such module"),
    ("porthole", "from porthole.core import decide", "the package's __init__ imports nothing"),
])
def test_a_broken_contract_is_reported(source, text, why):
    [problem] = violations(arrows(source, text), MODULES)
    assert why in problem


def test_allowed_arrows_are_not_reported():
    assert violations(arrows("porthole.app.wiring", "import socket\nimport h11\nfrom porthole.core.decide import x\n"
                                                    "from porthole.runtime.loop import Loop"), MODULES) == []
    assert violations(arrows("porthole.core.decide", "import json\nfrom porthole.core.policy import Policy\n"
                                                     "from . import policy"), MODULES) == []


def test_a_cycle_is_reported_unless_one_side_is_for_type_checking():
    two_way = (arrows("porthole.connections.client", "from porthole.connections.exchange import Exchange")
               + arrows("porthole.connections.exchange", "from porthole.connections.client import ClientConnection"))
    assert cycles(two_way, MODULES) == [["porthole.connections.client", "porthole.connections.exchange",
                                         "porthole.connections.client"]]
    typed = (arrows("porthole.connections.client", "from porthole.connections.exchange import Exchange")
             + arrows("porthole.connections.exchange", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                       "    from porthole.connections.client import ClientConnection"))
    assert cycles(typed, MODULES) == []
