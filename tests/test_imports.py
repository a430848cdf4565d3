"""The import graph inside asr/ has no cycles, lazy (function-level) imports included."""

from __future__ import annotations

import ast
from pathlib import Path

ASR = Path(__file__).resolve().parents[1] / "asr"


def import_graph(root: Path = ASR) -> dict[str, set[str]]:
    """``module -> asr modules it imports`` (any depth in the file), by reading the sources."""
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}
    path: list[str] = []
    found: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "asr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from asr.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from asr import a\n")
    assert cycles(import_graph(pkg)) == [["asr.a", "asr.b", "asr.a"]]


def test_asr_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycle(s) in asr/: " + "; ".join(" -> ".join(c) for c in found)
