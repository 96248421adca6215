"""The library's shape: no import cycles among tfpipeline modules (imports inside functions
count too), and the pipeline's wiring modules stay small enough to read top to bottom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfpipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every tfpipeline module `path` imports, at module level or inside a function."""
    found = set()
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (`from .batching import X`) count from the module's package.
            base = ".".join(package[:len(package) - node.level + 1] if node.level else [])
            module = ".".join(part for part in (base, node.module or "") if part)
            # `from tfpipeline import data` names the module tfpipeline.data.
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: _imports(path, modules) - {name} for name, path in paths.items()}
    # A package's __init__ is imported with any of its submodules; it is not a cycle to import it.
    return {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else path + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle_among_tfpipeline_modules():
    graph = _graph()
    assert "tfpipeline.pipeline" in graph and "tfpipeline.tuning" in graph["tfpipeline.pipeline"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_relative_imports_are_followed():
    assert "tfpipeline.serving.batching" in _graph()["tfpipeline.serving.core"]  # from .batching import ...


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_wiring_modules_stay_short():
    assert len((PACKAGE / "tuning" / "engine.py").read_text().splitlines()) <= 450
    for name in ("pipeline.py", "tuning/engine.py", "cli.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
        assert not long, f"{name}: functions over 60 lines: {long}"
