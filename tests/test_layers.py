"""The layer rules of DESIGN.md, checked from the source (ast only: nothing is imported).

Layers, lowest first (an import goes only downwards or within its own layer):

    base            vlkit/io.py, vlkit/progress.py, vlkit/errors.py
    models and data vlkit/backbones/, vlkit/data/
    features        vlkit/features/
    methods         vlkit/methods/, prompts/ (vlkit.prompts), caches/ (vlkit.caches), vlkit/ranking/
    report          vlkit/report/
    protocols       vlkit/protocols/
    apps            vlkit/apps/
    package         vlkit/__init__.py (the public facade: ``import vlkit``)
    face            cli/ (vlkit.cli)

Also: the core never imports ``vlkit.cli``; ``vlkit.prompts`` and ``vlkit.caches`` never
import each other; a method never imports a protocol, the report or an app; no import
cycles between modules. Every ``import`` statement counts, at module level or inside a
function (except under ``if TYPE_CHECKING:``, which never runs). An edge goes to the module named (``from vlkit.backbones import mini`` is an
edge to ``vlkit.backbones.mini``); the parent packages Python runs first are not edges.

Imports by string name (``importlib.import_module``) are the registry's job and allowed
exactly there: ``vlkit/methods/registry.py`` imports the modules in its
``FAMILY_MODULES``, each inside the methods layer, and those edges (family -> registry
-> family is how a family registers) are left out of the cycle check. Anywhere else an
import by string is a violation.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"vlkit": "vlkit", "prompts": "vlkit.prompts", "caches": "vlkit.caches", "cli": "vlkit.cli"}
LAYERS = [  # (layer name, module prefixes), lowest first
    ("base", ("vlkit.io", "vlkit.progress", "vlkit.errors")),
    ("models and data", ("vlkit.backbones", "vlkit.data")),
    ("features", ("vlkit.features",)),
    ("methods", ("vlkit.methods", "vlkit.prompts", "vlkit.caches", "vlkit.ranking")),
    ("report", ("vlkit.report",)),
    ("protocols", ("vlkit.protocols",)),
    ("apps", ("vlkit.apps",)),
    ("package", ()),  # exactly the module "vlkit"
    ("face", ("vlkit.cli",)),
]
REGISTRY = "vlkit.methods.registry"
DYNAMIC_CALLS = {"import_module", "__import__"}
MODULE_STRING = re.compile(r"^vlkit(\.\w+)+(:\w+)?$")

@dataclass(frozen=True)
class Edge:
    """One import: ``source`` imports ``target`` at ``line`` (``dynamic``: by string name)."""

    source: str
    target: str
    line: int
    dynamic: bool = False

    def __str__(self) -> str:
        how = " by string name" if self.dynamic else ""
        return f"{self.key}{how} ({module_path(self.source)}:{self.line})"

    @property
    def key(self) -> str:
        """The edge without its line."""
        return f"{self.source} -> {self.target}"


def module_files() -> dict[str, Path]:
    """Module name -> source file, for every .py file of the four folders."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = module_files()


def module_path(name: str) -> str:
    """The file of module ``name``, relative to the repository root when it is inside it."""
    path = MODULES[name]
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports there never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (getattr(test, "id", "") == "TYPE_CHECKING" or
                                         getattr(test, "attr", "") == "TYPE_CHECKING"):
            out |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return out


def layer_of(module: str) -> int:
    """Index into LAYERS of a project module."""
    if module == "vlkit":
        return [name for name, _ in LAYERS].index("package")
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} ({module_path(module)}) is in no layer of DESIGN.md: add it to LAYERS")


def resolve(name: str) -> str | None:
    """The project module an import names (its longest existing prefix), or None if external."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> list[Edge]:
    """Every import in ``module``'s source that reaches a project module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: list[tuple[str, int, bool]] = []
    dynamic = False
    skipped = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            named += [(alias.name, node.lineno, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            named += [(f"{base}.{alias.name}" if resolve(f"{base}.{alias.name}") == f"{base}.{alias.name}"
                       else base, node.lineno, False) for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            dynamic = dynamic or called in DYNAMIC_CALLS
    if dynamic:  # module names written as strings in a module that imports by string
        named += [(node.value.partition(":")[0], node.lineno, True) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and MODULE_STRING.match(node.value)]
    edges: dict[tuple[str, bool], Edge] = {}  # one edge per target (its first line)
    for name, line, by_string in sorted(named, key=lambda item: item[1]):
        target = resolve(name)
        if target is not None and target != module:
            edges.setdefault((target, by_string), Edge(module, target, line, by_string))
    return list(edges.values())


EDGES = [edge for module in MODULES for edge in imports_of(module)]


def registry_families() -> set[str]:
    """The strings in ``FAMILY_MODULES`` of the method registry."""
    tree = ast.parse(MODULES[REGISTRY].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FAMILY_MODULES" for t in node.targets):
            return {elt.value for elt in node.value.elts}
    raise AssertionError(f"{module_path(REGISTRY)} has no FAMILY_MODULES list")


def is_registry_edge(edge: Edge) -> bool:
    """The one allowed import by string: the registry importing a family it lists."""
    return edge.dynamic and edge.source == REGISTRY and edge.target in registry_families()


Violation = tuple[str, str]  # (key, message)


def check(found: list[Violation]) -> None:
    """Fail on every violation, each on its own line."""
    new = sorted(message for _, message in found)
    assert not new, "layer rule broken (see DESIGN.md, 'Layout'):\n" + "\n".join(new)


def layer_violations() -> list[Violation]:
    """Imports that go up a layer."""
    return [(e.key, f"{e}: {LAYERS[layer_of(e.source)][0]} imports {LAYERS[layer_of(e.target)][0]}")
            for e in EDGES if layer_of(e.target) > layer_of(e.source)]


def family_violations() -> list[Violation]:
    """prompts <-> caches, and methods reaching protocols, report or apps."""
    out = []
    method_layer = ("vlkit.methods", "vlkit.prompts", "vlkit.caches")
    above = ("vlkit.protocols", "vlkit.report", "vlkit.apps")
    for edge in EDGES:
        pair = [next((p for p in ("vlkit.prompts", "vlkit.caches") if m == p or m.startswith(p + ".")), None)
                for m in (edge.source, edge.target)]
        if None not in pair and pair[0] != pair[1]:
            out.append((edge.key, f"{edge}: prompts and caches share only through vlkit.methods"))
        if edge.source.startswith(method_layer) and edge.target.startswith(above):
            out.append((edge.key, f"{edge}: a method never imports a protocol, the report or an app"))
    return out


def string_import_violations() -> list[Violation]:
    """Imports by string name anywhere but the registry's family list."""
    return [(edge.key, f"{edge}: only {module_path(REGISTRY)} imports by string name")
            for edge in EDGES if edge.dynamic and not is_registry_edge(edge)]


def cycles() -> list[list[str]]:
    """Strongly connected groups (more than one module) of the import graph (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for edge in EDGES:
        if not is_registry_edge(edge):
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def cycle_violations() -> list[Violation]:
    """One per cycle, with the edges that close it."""
    out = []
    for group in cycles():
        inside = sorted(str(e) for e in EDGES if e.source in group and e.target in group and not is_registry_edge(e))
        out.append((f"cycle: {', '.join(group)}", f"import cycle between {', '.join(group)}: " + "; ".join(inside)))
    return out


def test_every_module_is_in_a_layer_and_the_base_is_where_design_says():
    for module in MODULES:
        layer_of(module)
    assert {m for m in MODULES if layer_of(m) == 0} <= {"vlkit.io", "vlkit.progress", "vlkit.errors"}
    assert "vlkit.errors" in MODULES and len(MODULES) > 50


def test_imports_only_go_down_a_layer():
    check(layer_violations())


def test_the_core_never_imports_the_cli():
    check([(edge.key, f"{edge}: the core never imports vlkit.cli") for edge in EDGES
           if edge.target.startswith("vlkit.cli") and not edge.source.startswith("vlkit.cli")])


def test_prompts_and_caches_stay_apart_and_methods_stay_below_protocols():
    check(family_violations())


def test_only_the_registry_imports_by_string_and_only_its_families():
    families = registry_families()
    assert families and all(layer_of(m) == layer_of(REGISTRY) for m in families), families
    assert {e.target for e in EDGES if e.source == REGISTRY and e.dynamic} == families
    check(string_import_violations())


def test_no_import_cycles():
    check(cycle_violations())


@pytest.mark.parametrize("source, expected", [
    ("from vlkit.protocols.fewshot import run_fewshot", "vlkit.protocols.fewshot"),
    ("from vlkit.backbones import mini", "vlkit.backbones.mini"),
    ("from vlkit.backbones import Backbone", "vlkit.backbones"),
    ("import vlkit.cli.main", "vlkit.cli.main"),
    ("from . import common", "vlkit.caches.common"),
    ("from .common import KeyStore", "vlkit.caches.common"),
])
def test_the_checker_resolves_imports(source, expected, tmp_path, monkeypatch):
    # the checker itself: an import inside a function, absolute and relative forms
    module = "vlkit.caches.probe"
    path = tmp_path / "probe.py"
    path.write_text(f"def f():\n    {source}\n")
    monkeypatch.setitem(MODULES, module, path)
    assert [e.target for e in imports_of(module)] == [expected]
    layer = layer_of(expected)
    assert (layer > layer_of(module)) == expected.startswith(("vlkit.protocols", "vlkit.cli"))
