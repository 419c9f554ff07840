"""The layout's boundaries (DESIGN.md, "Two rules"), checked on the source: which layer may import which.

The import graph is read with `ast`, without importing anything: module-level and function-level (lazy)
imports count, imports under `if TYPE_CHECKING:` do not (they never run). An import of `modescope.a.b` also
runs `modescope/a/__init__.py`, so it adds an edge to `modescope.a` as well (not from a module inside
`modescope.a`: a module's own packages have started before it runs).
"""

from __future__ import annotations

import ast
import importlib.metadata
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import modescope.version

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "modescope"


@dataclass(frozen=True)
class Edge:
    importer: str
    line: int
    target: str
    direct: bool  # False: a package whose __init__ runs because a module inside it is imported

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.target}"


def discover(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            yield from _imports(node.orelse)  # the body runs only under a type checker
        else:
            yield from _imports(ast.iter_child_nodes(node))


def _named(stmt: ast.Import | ast.ImportFrom, importer: str, modules: dict[str, Path]) -> list[str]:
    """The modules a statement names: `from a import b` names `a.b` when that is a module, else `a`."""
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    base = stmt.module or ""
    if stmt.level:  # relative: resolved against the importer's package
        package = importer if modules[importer].name == "__init__.py" else importer.rpartition(".")[0]
        anchor = ".".join(package.split(".")[: len(package.split(".")) - stmt.level + 1])
        base = f"{anchor}.{base}" if base else anchor
    named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in stmt.names]
    return list(dict.fromkeys(named))


def edges(modules: dict[str, Path]) -> list[Edge]:
    """Every runtime import between modules of the package, with the packages each one initializes."""
    found = []
    for importer, path in modules.items():
        for stmt in _imports(ast.parse(path.read_text(encoding="utf-8")).body):
            for name in _named(stmt, importer, modules):
                parts = name.split(".")
                for size in range(1, len(parts) + 1):
                    target, direct = ".".join(parts[:size]), size == len(parts)
                    # a module's own enclosing packages have started before it runs: no edge to wait on
                    if target in modules and target != importer and (direct or not within(importer, target)):
                        found.append(Edge(importer, stmt.lineno, target, direct))
    return found


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan's algorithm): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def graph_of(found: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in found:
        graph.setdefault(edge.importer, set()).add(edge.target)
    return graph


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = discover()
EDGES = edges(MODULES)
DIRECT = [e for e in EDGES if e.direct]

# cycles that stay, each cut at its one import that runs inside a function (after both modules have loaded);
# keep this short: a new cycle is a layering mistake until shown otherwise
ALLOWED = {
    ("modescope.models.adapters", "modescope.models"): "BASE+ADAPTER loads its BASE through `load` itself",
    ("modescope.models.remote", "modescope.models"): "a served preset's tokenizer comes from `preset_folder`",
    ("modescope.probes.distribution", "modescope.probes.prompt_set"): "a list of prompts hands over to over_prompts",
    ("modescope.probes.sampling", "modescope.probes.prompt_set"): "a list of prompts hands over to over_prompts",
}


def _offending(rule: str, found: Iterable[Edge]) -> str:
    return f"{rule}:\n" + "\n".join(f"  {edge}" for edge in found)


def test_models_import_nothing_above_them() -> None:
    above = ("engine", "probes", "viz", "suites", "web", "cli", "lab", "remedies", "store")
    found = [
        e
        for e in DIRECT
        if within(e.importer, "modescope.models") and within(e.target, *(f"modescope.{p}" for p in above))
    ]
    assert not found, _offending("the model layer knows nothing of the layers above it", found)


def test_views_import_neither_the_package_nor_the_loader() -> None:
    banned = ("modescope.models", "modescope.suites.runner", "modescope.cli", "modescope.web")
    found = [
        e
        for e in DIRECT
        if within(e.importer, "modescope.viz") and (e.target == "modescope" or within(e.target, *banned))
    ]
    assert not found, _offending("views draw results without loading models (import results for typing only)", found)


def test_only_the_cli_imports_the_cli() -> None:
    found = [e for e in DIRECT if within(e.target, "modescope.cli") and not within(e.importer, "modescope.cli")]
    assert not found, _offending("commands live in modescope.cli; the library never imports them", found)


def test_runtime_imports_have_no_cycle_but_the_allowed_ones() -> None:
    present = {(e.importer, e.target) for e in EDGES}
    assert not set(ALLOWED) - present, f"allowed imports that no longer exist: {sorted(set(ALLOWED) - present)}"
    kept = [e for e in EDGES if (e.importer, e.target) not in ALLOWED]
    found = [
        _offending(f"cycle among {', '.join(c)}", [e for e in kept if e.importer in c and e.target in c])
        for c in components(graph_of(kept))
    ]
    assert not found, "\n".join(found) + "\nmake one import go the other way, or allow it in ALLOWED with a reason"


def test_the_graph_reads_lazy_imports_and_skips_type_checking_ones(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "a/__init__.py": "from pkg.b import helper\n",
        "a/leaf.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n",
        "b.py": "def helper():\n    from pkg.a import leaf\n    from . import c\n",
        "c.py": "import pkg\nimport pkg.a.leaf\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    found = edges(discover(tmp_path / "pkg"))
    assert {(e.importer, e.target, e.direct) for e in found} == {
        ("pkg.a", "pkg.b", True),  # `from pkg.b import helper`: helper is no module
        ("pkg.b", "pkg.a", False),  # importing pkg.a.leaf runs pkg/a/__init__.py first
        ("pkg.b", "pkg.a.leaf", True),  # a function-level import counts
        ("pkg.b", "pkg.c", True),  # relative
        ("pkg.c", "pkg", True),  # the top-level package by name (pkg.a.leaf's own import never runs)
        ("pkg.c", "pkg.a", False),
        ("pkg.c", "pkg.a.leaf", True),
    }
    assert components(graph_of(found)) == [["pkg.a", "pkg.b", "pkg.c"]]  # c closes its cycle through pkg/a/__init__.py


def test_version_module_is_the_package_version() -> None:
    path = PACKAGE / "version.py"
    assert not list(_imports(ast.parse(path.read_text()).body)), "version.py must import nothing"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert modescope.version.__version__ == project["version"], "set version.py to pyproject.toml's version"
    installed = importlib.metadata.version("modescope")
    assert modescope.version.__version__ == installed, "the installed metadata is stale: pip install -e ."
