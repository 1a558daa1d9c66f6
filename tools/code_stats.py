"""Code-shape numbers for refactor notes: the longest functions (from Python's ``ast``) and the
import graph between skipxl's subpackages (with any cycle).

    .venv/bin/python tools/code_stats.py [--top 15]
"""

from __future__ import annotations

import argparse
import ast
import itertools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "skipxl"


def longest_functions(top: int) -> list[tuple[int, str]]:
    """``(lines, "path:function")`` of the ``top`` longest functions and methods in skipxl/."""
    rows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(REPO)}:{node.name}"))
    return sorted(rows, reverse=True)[:top]


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "skipxl" or len(parts) < 2:
        return None
    return parts[1] if (PACKAGE / parts[1]).is_dir() else None


def import_graph() -> dict[str, set[str]]:
    """``subpackage -> subpackages it imports`` (module-level and function-level imports alike)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        src = _subpackage(".".join(rel.parts))
        if src is None:
            continue
        graph.setdefault(src, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                dst = _subpackage(name)
                if dst and dst != src:
                    graph[src].add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of subpackages reachable from each other."""

    def reach(a: str) -> set[str]:
        seen, todo = set(), [a]
        while todo:
            for b in graph.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    return [(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in reach(a) and a in reach(b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print("longest functions (lines):")
    for n, name in longest_functions(args.top):
        print(f"  {n:4d}  {name}")
    graph = import_graph()
    print("import graph between skipxl subpackages:")
    for src in sorted(graph):
        print(f"  {src} -> {', '.join(sorted(graph[src])) or '-'}")
    found = cycles(graph)
    print("cycles: " + (", ".join(f"{a} <-> {b}" for a, b in found) if found else "none"))


if __name__ == "__main__":
    main()
