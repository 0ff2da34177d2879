"""The one place a config names code: `config.task` is the module the binaries import."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType

import ml_collections
from absl import flags


def import_task(config: ml_collections.ConfigDict, entry_point: str) -> ModuleType:
    """Imports `config.task` and checks it defines `entry_point` (e.g. "train_and_evaluate")."""
    name = config.get("task", "")
    if not name:
        raise ValueError("config.task is empty: set it to a task module, e.g. 'jaxlab.glitch'.")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ValueError(f"config.task = {name!r} cannot be imported: {e}.") from e
    if not callable(getattr(module, entry_point, None)):
        raise ValueError(f"config.task = {name!r} has no function {entry_point}(config, workdir).")
    return module


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`"configs/glitch.py:demo"` -> that file's `get_config("demo")` (no flags involved).

    For scripts that run several configs in one process (demo, benchmark). Relative paths are
    taken from the repository root, so `configs/common.py` imports resolve as in the binaries.
    """
    path, _, variant = spec.partition(":")
    repo = pathlib.Path(__file__).resolve().parents[2]
    file = pathlib.Path(path) if pathlib.Path(path).is_absolute() else repo / path
    if not file.exists():
        raise FileNotFoundError(f"Config file {file} does not exist.")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad `--config...` value into one clear line and exit 1.

    ml_collections raises AttributeError/KeyError/TypeError from deep inside for an unknown key or
    a value of the wrong type; pass this as `app.run(main, flags_parser=parse_flags)`.
    """
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        lines = [line.strip("'\\\" ") for line in str(e).replace("\\n", "\n").splitlines()]
        lines = [line for line in lines if line]
        if isinstance(e, AttributeError | KeyError):
            detail = f"unknown config key '{lines[0]}'. " + " ".join(lines[1:])
        else:
            detail = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
        overrides = [a for a in argv[1:] if a.startswith("--config")]
        print(f"FATAL config error: {detail} (flags: {' '.join(overrides)})", file=sys.stderr)
        sys.exit(1)
