"""The package's import structure: no import circle between its modules; stages import
downwards only (ingest, features, model, scoring, activation, monitoring, in data-flow
order); ``lib`` and ``settings`` import no stage. Every import counts, including the ones
inside functions (they hide a dependency from a reader of the module's first lines, not
from this test)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "features", "model", "scoring", "activation", "monitoring"]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(source: str, modules: set[str], package: str = "") -> set[str]:
    """The package's modules that ``source`` imports, anywhere in it; ``package`` (the
    importing module's package) resolves relative imports."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                out.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules}


def import_graph(package: Path) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in package.rglob("*.py")}
    names = set(paths)
    return {m: imports_of(p.read_text(encoding="utf-8"), names,
                          m if p.name == "__init__.py" else m.rpartition(".")[0]) - {m}
            for m, p in paths.items()}


def layer(module: str) -> tuple[str, int | None]:
    """(area, rank): a stage of ``defs`` with its rank in data-flow order, or another area."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "defs" and parts[2] in STAGES:
        return "stage", STAGES.index(parts[2])
    return (parts[1] if len(parts) > 1 else parts[0]), None


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        area, rank = layer(module)
        for target in sorted(targets):
            t_area, t_rank = layer(target)
            if area == "stage" and t_area == "stage" and t_rank > rank:
                out.append(f"{module} imports {target}, a later stage")
            if area in ("lib", "settings") and t_area in ("stage", "defs", "definitions", "runner", "run_plan",
                                                          "cli", "demo"):
                out.append(f"{module} imports {target}: lib and settings import no stage")
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_circle():
    assert circles(import_graph(ROOT / "pql_pipeline")) == []


def test_a_circle_through_a_function_level_import_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_stages_import_downwards_only():
    assert violations(import_graph(ROOT / "pql_pipeline")) == []


@pytest.mark.parametrize("graph, found", [
    ({"pql_pipeline.defs.model.training": {"pql_pipeline.defs.scoring.scoring"}, "pql_pipeline.defs.scoring.scoring":
      set()}, ["pql_pipeline.defs.model.training imports pql_pipeline.defs.scoring.scoring, a later stage"]),
    ({"pql_pipeline.lib.warehouse": {"pql_pipeline.defs.ingest.raw"}, "pql_pipeline.defs.ingest.raw": set()},
     ["pql_pipeline.lib.warehouse imports pql_pipeline.defs.ingest.raw: lib and settings import no stage"]),
    ({"pql_pipeline.defs.scoring.batch": {"pql_pipeline.defs.model.training", "pql_pipeline.lib.warehouse"}}, []),
])
def test_the_layering_rule_flags_an_upward_import(graph, found):
    assert violations(graph) == found


def test_imports_inside_functions_and_relative_imports_count():
    modules = {"pql_pipeline.defs.scoring.scoring", "pql_pipeline.defs.model.training", "pql_pipeline.defs.scoring"}
    source = "def f():\n    from pql_pipeline.defs.scoring.scoring import account_probability\n"
    assert imports_of(source, modules) == {"pql_pipeline.defs.scoring.scoring"}
    assert imports_of("from ..scoring.scoring import x\n", modules, "pql_pipeline.defs.model") == {
        "pql_pipeline.defs.scoring.scoring"}
    assert imports_of("from ..scoring import scoring\n", modules, "pql_pipeline.defs.model") == {
        "pql_pipeline.defs.scoring.scoring"}
