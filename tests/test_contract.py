"""Every task follows docs/task_contract.md; no module of jaxlab imports one that imports it back.

Both checks read the source with `ast` (nothing is imported), so they are fast and see imports
hidden inside functions too.
"""

import ast
import dataclasses
import importlib
import inspect
import pathlib

import pytest

from jaxlab.core import config as config_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core.task import TASKS

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxlab"
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
    "steps_per_epoch",
    "extras",
}
ENTRY_POINTS = {
    "steps": ["build", "train_step", "eval_step", "benchmark_setup"],
    "train": ["train_and_evaluate"],
    "evaluate": ["evaluate"],
    "data": ["prepare"],
    "predict": ["predict", "demo_input"],
}
# What `core/trainer.run` calls in a task's train module: (the leading parameters, by name, and
# how many it passes positionally; `build` also gets `Input.build_kwargs` by keyword, and the
# last argument of `figure` is whatever `evaluate_during_training` returned as outputs).
TRAINER_HOOKS = {
    "sources": (["config", "workdir"], 2),
    "build": (["config", "mesh"], 2),
    "evaluate_during_training": (["config", "parts", "state", "inputs", "mesh", "train_window"], 6),
    "figure": (["config", "parts", "state", "inputs", "mesh", "step"], 8),
}
OWN_LOOP = {"sales"}  # trains in stages, not one step function: see jaxlab/sales/train.py


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
    fields = {f.name for f in dataclasses.fields(parts_lib.Parts)}
    assert parts_lib.Parts.__dataclass_params__.frozen and fields == PARTS_FIELDS
    build = importlib.import_module(f"jaxlab.{task}.steps").build
    assert "Parts" in str(inspect.signature(build).return_annotation), f"{task}: build -> Parts"


@pytest.mark.parametrize("task", TASKS)
def test_no_task_declares_its_own_parts_or_initialises_by_hand(task):
    """One `Parts` (core/parts.py) and one `init_state`: no task repeats the build tail."""
    for path in (PACKAGE / task).glob("*.py"):
        text = path.read_text()
        classes = [n.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef)]
        assert not [c for c in classes if c.endswith("Parts")], f"{path}: {classes}"
        assert "out_shardings=parts.shardings" not in text, f"{path}: use parts.init_state"
        assert "state_lib.abstract_state(" not in text, f"{path}: use parts.assemble"


@pytest.mark.parametrize("task", sorted(set(TASKS) - OWN_LOOP))
def test_task_trains_on_the_core_trainer(task):
    train = importlib.import_module(f"jaxlab.{task}.train")
    for name, (leading, count) in TRAINER_HOOKS.items():
        hook = getattr(train, name, None)
        assert callable(hook), f"jaxlab.{task}.train lacks {name}"
        params = inspect.signature(hook).parameters.values()
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional[: len(leading)] == leading and len(positional) == count, (task, name)
    source = inspect.getsource(train.train_and_evaluate)
    assert "trainer.run(config, workdir, sys.modules[__name__])" in source
    assert "for step in" not in inspect.getsource(train), f"{task}: the loop is core/trainer.py"


@pytest.mark.parametrize("task", sorted(OWN_LOOP))
def test_own_loop_says_why(task):
    doc = importlib.import_module(f"jaxlab.{task}.train").__doc__
    assert "Why sales keeps its own loops" in doc and "trainer.loop_helpers" in doc


def test_registry_names_every_task_and_config():
    """`TASKS` is complete: every package with a train.py and every config file is in it."""
    packages = {p.parent.name for p in PACKAGE.glob("*/train.py")}
    configs = {p.stem for p in (PACKAGE / "configs").glob("*.py")} - {"__init__", "common"}
    assert packages == configs == set(TASKS)
    assert config_lib.config_names() == TASKS


@pytest.mark.parametrize("task", TASKS)
def test_config_declares_variants_and_resolves_by_name(task):
    module = importlib.import_module(f"jaxlab.configs.{task}")
    assert isinstance(module.VARIANTS, dict) and list(module.VARIANTS)[:2] == ["demo", "tiny"]
    metric, baseline, better = module.HEADLINE
    assert metric and baseline and better in ("lower", "higher")
    for variant in module.VARIANTS:
        config = config_lib.load_config(f"{task}:{variant}")
        assert config.task == f"jaxlab.{task}"
        assert config.to_dict() == module.get_config(variant).to_dict()
    with pytest.raises(ValueError, match="unknown variant 'nope'; its variants are: demo, tiny"):
        module.get_config("nope")
    assert "ast" not in {n.split(".")[0] for n in _imports(PACKAGE / "core" / "config.py")}
    early = config_lib.load_config(f"{task}:tiny").eval
    assert {"best_metric", "best_mode", "early_stopping_patience"} <= set(early)


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
