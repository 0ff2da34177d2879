"""The task registry and the one place a config names code.

`TASKS` is the list of tasks: each is a package `jaxlab/<name>/` with a config
`jaxlab/configs/<name>.py` (docs/task_contract.md). The CLI, the benchmark, the demo and the
contract test read it; adding a task adds one name here. `config.task` is the package the
binaries import (`import_task`).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import ml_collections

# The tasks, in the order the demo and the benchmark run them.
TASKS = ("example", "glitch", "neutrino", "sales", "vegetation", "weather")

# The module of a task each binary imports, and the function it calls there.
ENTRY_POINTS = {
    "train": "train_and_evaluate",
    "evaluate": "evaluate",
    "steps": "benchmark_setup",
    "data": "prepare",
    "predict": "predict",
    "study": "main",
    "cache": "prepare",  # optional: a model-ready record cache `jaxlab prepare` builds
}


def has_module(config: ml_collections.ConfigDict, module: str) -> bool:
    """Whether the task package has `module` (an optional one, e.g. a record cache)."""
    return importlib.util.find_spec(f"{config.get('task', '')}.{module}") is not None


def import_task(config: ml_collections.ConfigDict, module: str) -> ModuleType:
    """Imports `<config.task>.<module>` (e.g. jaxlab.glitch.train) and checks its entry point."""
    name = config.get("task", "")
    if not name:
        raise ValueError("config.task is empty: set it to a task package, e.g. 'jaxlab.glitch'.")
    full_name = f"{name}.{module}"
    try:
        task_module = importlib.import_module(full_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"config.task = {name!r}: cannot import {full_name}: {e}.") from e
    entry_point = ENTRY_POINTS[module]
    if not callable(getattr(task_module, entry_point, None)):
        raise ValueError(f"{full_name} has no function {entry_point}(...).")
    return task_module
