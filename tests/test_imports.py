"""The package reads in one direction (issue 9): no module imports, directly or through others, a module
that imports it back. Function-level imports count too: a lazy import still ties the two modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(root: Path = SRC, package: str = "twinv2") -> dict[str, set[str]]:
    """Module -> the package modules it imports (module- and function-level; a package's imports of its
    own children are not edges back to it)."""
    modules = {}
    for f in (root / package).rglob("*.py"):
        name = ".".join(f.relative_to(root).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_package_has_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", ["twinv2.compress.spark", "twinv2.compress.job", "twinv2.compress.compressor"])
def test_compression_never_imports_the_cli(module):
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    assert "twinv2.cli" not in seen


def test_spark_submit_entry_point_runs_compress_with_the_spark_backend(capsys):
    from twinv2 import spark_submit

    with pytest.raises(SystemExit) as exit_info:
        spark_submit.main(["--help"])
    assert exit_info.value.code == 0
    assert "--snapshot-ts" in capsys.readouterr().out


def test_data_layer_imports_nothing_above_it():
    """``data/`` is the bottom layer: the batch builder reads compressed life cycles through the
    ``CompressedSequences`` interface defined in ``data/``, never through ``twinv2.compress``."""
    above = ("twinv2.compress", "twinv2.models", "twinv2.train", "twinv2.serve", "twinv2.cli", "twinv2.demo")
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith(above)) for m, targets in graph.items()
           if m.startswith("twinv2.data")}
    assert not {m: t for m, t in bad.items() if t}, bad
