"""The library's conventions, as tests: a short top level, subpackages that say what they own
and may import, no import cycles (imports inside functions count too), the layering (the data,
models and input kinds know nothing of the stages after them), and functions short enough to
read with few enough positional parameters to call without counting."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

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


MAX_TOP_LEVEL_MODULES = 10
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6  # as in the Keras and KerasTuner sources
# The lower layers and what they must not import: they serve every stage after them.
LOWER = ("tfpipeline.data", "tfpipeline.models", "tfpipeline.inputs")
UPPER = ("tfpipeline.training", "tfpipeline.tuning", "tfpipeline.export", "tfpipeline.report", "tfpipeline.serving")
SUBPACKAGES_WITH_RULES = ("data", "models", "training", "tuning", "distribute", "export", "report", "inputs")

# Functions allowed over MAX_FUNCTION_LINES, each with the reason it is one piece.
LONG_FUNCTIONS = {
    "tfpipeline/distribute/multiworker.py:fit": "a copy of Keras's `fit` driver loop for MultiWorkerMirrored "
                                                "(keras-team/keras#20585), kept in one piece to compare with "
                                                "Keras's own; the module goes when the issue is fixed",
    "tfpipeline/data/folders.py:index": "one pass over the user's files that checks, counts and reports them in "
                                        "the order the messages name them",
    "tfpipeline/serve.py:parse_args": "argparse declarations, one statement per flag (being rewritten with serving/)",
}


def _library_functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT).as_posix(), node


def _positional(node: ast.FunctionDef) -> list[str]:
    """Positional parameters, without self/cls; keyword-only ones (after `*`) do not count."""
    return [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]


def test_top_level_stays_short():
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, f"{len(modules)} modules directly under tfpipeline/: {modules}"


@pytest.mark.parametrize("name", SUBPACKAGES_WITH_RULES)
def test_subpackages_say_what_they_own_and_may_import(name):
    doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
    assert len(doc.split()) >= 15, f"tfpipeline/{name}/__init__.py: no docstring saying what the package owns"
    assert "import" in doc, f"tfpipeline/{name}/__init__.py: its docstring does not say what it may import"


def test_data_models_and_inputs_import_nothing_from_the_stages_after_them():
    graph = _graph()
    found = [f"{module} imports {dep}" for module, deps in sorted(graph.items())
             if module.startswith(LOWER) for dep in sorted(deps)
             if dep.startswith(UPPER)]
    assert not found, "\n".join(found)


def test_functions_stay_short():
    long = {f"{path}:{node.name}": node.end_lineno - node.lineno + 1 for path, node in _library_functions()
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    unexpected = {name: lines for name, lines in long.items() if name not in LONG_FUNCTIONS}
    assert not unexpected, f"functions over {MAX_FUNCTION_LINES} lines (split them, or allow-list one with a " \
                           f"reason): {unexpected}"
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"allow-listed but no longer long (drop them from LONG_FUNCTIONS): {stale}"


def test_at_most_six_positional_parameters():
    many = {f"{path}:{node.name}": _positional(node) for path, node in _library_functions()
            if len(_positional(node)) > MAX_POSITIONAL}
    assert not many, f"over {MAX_POSITIONAL} positional parameters (bundle them, or make some keyword-only): {many}"


def test_the_layering_check_finds_a_violation():
    graph = {"tfpipeline.models.cnn": {"tfpipeline.training.loop"}}
    assert [m for m, deps in graph.items() if m.startswith(LOWER) and any(d.startswith(UPPER) for d in deps)]


def test_ruff_is_clean_under_the_projects_configuration():
    # The conventions in pyproject.toml's [tool.ruff] (pyflakes, pycodestyle, isort, line length)
    # hold for the library, the pipelines, the benchmarks and the tests.
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
