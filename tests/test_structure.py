"""The project's size and import rules, checked on the source (fast, no data, no TensorFlow):
no module under maskbatch/ over 400 lines, no function or method over 80 lines, no import cycle
between maskbatch's modules.

Cycles are looked for with grimp (what import-linter is built on), which sees the imports inside
functions too; import-linter's contracts check layers and siblings, not a cycle between a package
and its own modules. Imports under `if TYPE_CHECKING:` are left out (they never run), as
pyproject.toml's import-linter settings leave them out. Each failure lists every offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "maskbatch"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(SOURCE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(SOURCE.parent).as_posix()


def long_modules() -> list[str]:
    """'path: N lines' for each module over MAX_MODULE_LINES lines."""
    found = []
    for path in _modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            found.append(f"{_relative(path)}: {n} lines")
    return found


def long_functions() -> list[str]:
    """'path:line name: N lines' for each function or method (nested ones too) over
    MAX_FUNCTION_LINES lines, from its `def` line to its last line (decorators not counted)."""
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    found.append(f"{_relative(path)}:{node.lineno} {node.name}: {n} lines")
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more nodes that reach each other (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def import_cycles() -> list[str]:
    """One entry per group of maskbatch modules that import each other in a circle, with the
    import lines that close it."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules}
             for m in graph.modules}
    found = []
    for group in strongly_connected(edges):
        lines = []
        for importer in group:
            for imported in sorted(edges[importer] & set(group)):
                for detail in graph.get_import_details(importer=importer, imported=imported):
                    lines.append(f"  {importer}:{detail['line_number']} -> {imported}: "
                                 f"{detail['line_contents']}")
        found.append(" <-> ".join(group) + "\n" + "\n".join(lines))
    return found


def test_cycle_finder_finds_every_circle_and_only_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"f", "a"},
             "g": set()}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d", "e"]]


def test_no_module_over_400_lines() -> None:
    offenders = long_modules()
    assert not offenders, (f"{len(offenders)} module(s) over {MAX_MODULE_LINES} lines:\n"
                           + "\n".join(offenders))


def test_no_function_over_80_lines() -> None:
    offenders = long_functions()
    assert not offenders, (f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines:\n"
                           + "\n".join(offenders))


def test_no_import_cycle_between_modules() -> None:
    offenders = import_cycles()
    assert not offenders, (f"{len(offenders)} import cycle(s) (imports inside functions count):\n"
                           + "\n".join(offenders))
