"""The library's shape, checked: no import cycles inside asr/ (lazy, function-level imports included),
no function longer than 80 lines, no module longer than 450 (the style's ~400, with some slack)."""

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


MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def long_functions(root: Path = ASR, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:line name (n lines)`` of every function or method over ``limit`` lines, decorators excluded."""
    found = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{f.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_the_length_check_finds_a_long_function(tmp_path):
    pkg = tmp_path / "asr"
    pkg.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(80))
    (pkg / "a.py").write_text(f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}")
    assert long_functions(pkg) == ["asr/a.py:6 long (81 lines)"]


def test_no_long_functions():
    assert long_functions() == [], "split these into named steps"


def test_no_long_modules():
    sizes = {f.relative_to(ASR.parent): len(f.read_text(encoding="utf-8").splitlines()) for f in ASR.rglob("*.py")}
    assert {str(f): n for f, n in sizes.items() if n > MAX_MODULE_LINES} == {}
