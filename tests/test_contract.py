"""Every task follows docs/task_contract.md; no module of jaxlab imports one that imports it back.

Both checks read the source with `ast` (nothing is imported), so they are fast and see imports
hidden inside functions too.
"""

import ast
import dataclasses
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxlab"
TASKS = ["example", "glitch", "vegetation", "weather", "sales", "neutrino"]
MODULES = ["data", "synthetic", "model", "steps", "train", "evaluate", "predict"]
PARTS_FIELDS = {
    "model",
    "optimizer",
    "init_fn",
    "abstract_state",
    "shardings",
    "num_steps",
    "train_step",
    "eval_step",
}
ENTRY_POINTS = {
    "steps": ["Parts", "build", "train_step", "eval_step", "benchmark_setup"],
    "train": ["train_and_evaluate"],
    "evaluate": ["evaluate"],
    "data": ["prepare"],
    "predict": ["predict", "demo_input"],
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The jaxlab modules `path` imports, anywhere in the file (`from a import b` counts a.b
    when a.b is a module, else a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. Package `__init__`s are edges like any."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_jaxlab():
    graph = import_graph()
    assert "jaxlab.example.train" in graph and graph["jaxlab.example.train"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("task", TASKS)
def test_task_package_has_the_contract_modules(task):
    missing = [m for m in MODULES if not (PACKAGE / task / f"{m}.py").exists()]
    assert not missing, f"jaxlab/{task} lacks {missing} (docs/task_contract.md)"
    init = ast.parse((PACKAGE / task / "__init__.py").read_text())
    imports = [n for n in init.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not imports, f"jaxlab/{task}/__init__.py must not re-export modules"
    graph = import_graph()
    assert f"jaxlab.{task}.train" not in graph[f"jaxlab.{task}.evaluate"]
    assert f"jaxlab.{task}.steps" in graph[f"jaxlab.{task}.train"]
    assert f"jaxlab.{task}.steps" in graph[f"jaxlab.{task}.evaluate"]


@pytest.mark.parametrize("task", TASKS)
def test_task_modules_define_the_contract_names(task):
    for module, names in ENTRY_POINTS.items():
        loaded = importlib.import_module(f"jaxlab.{task}.{module}")
        missing = [n for n in names if not callable(getattr(loaded, n, None))]
        assert not missing, f"jaxlab.{task}.{module} lacks {missing}"
    parts = importlib.import_module(f"jaxlab.{task}.steps").Parts
    assert dataclasses.is_dataclass(parts) and parts.__dataclass_params__.frozen
    fields = {f.name for f in dataclasses.fields(parts)}
    assert fields >= PARTS_FIELDS, f"{task} Parts lacks {sorted(PARTS_FIELDS - fields)}"


@pytest.mark.parametrize("task", TASKS)
def test_config_has_demo_tiny_and_resolves_by_name(task):
    from jaxlab.core import task as task_lib

    config = task_lib.load_config(f"{task}:tiny")
    assert config.task == f"jaxlab.{task}"
    assert task_lib.load_config(f"{task}:demo").task == config.task
