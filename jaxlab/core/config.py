"""The config layer: which config a name means, what a workdir recorded, and what may change.

One module for everything about configs beyond their contents:
  - lookup: `"glitch:demo"` -> the file `jaxlab/configs/glitch.py` and its variant; every config
    file declares `VARIANTS = {f.__name__: f for f in (demo, tiny, ...)}` (the default first) and
    `get_config(arg) = VARIANTS[arg]()`; the task names are `task.TASKS`;
  - the recorded config: `jaxlab train` writes the resolved config to `workdir/CONFIG_FILE`;
    `evaluate`, `export` and `show-config` merge it back (`merge_recorded`);
  - the change policy: a resumed run may change only `RESUME_HARMLESS_KEYS` (`check_resume`,
    else `train.allow_config_change`), an evaluation only `EVAL_KEYS` (else the CLI's
    `--allow_config_change`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import flags, logging

from jaxlab.core.task import TASKS

CONFIG_FILE = "config.json"  # the resolved config of a run, in its workdir (and in a bundle)
CONFIG_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "configs"
# Config keys a resumed run may change without breaking exactness (prefixes); all others count.
RESUME_HARMLESS_KEYS = (
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.max_to_keep",
    "train.keep_best",
    "train.async_checkpoint",
    "train.max_in_flight",
    "train.profile_start",
    "train.profile_stop",
    "train.allow_config_change",
    "eval.",
    "data.engine",  # which library decodes the NetCDF files: the same values either way
    # Early-stopping keys before they moved to eval.* (they decide when to stop, not the steps).
    "train.patience",
    "train.early_stopping_patience",
    "train.early_stopping_min_delta",
    "train.eval_every_epochs",
    "mesh",
    "fsdp_min_size",
    # weather: training states on the device or streamed; the same inputs bit for bit.
    "data.resident",
    # How many processes and threads read the data: the batches are the same for any count.
    "data.workers",
    "data.num_threads",
)
# Keys an evaluation may change against the trained run's recorded config without a flag.
EVAL_KEYS = ("eval.",)


def variant(variants: Mapping[str, Any], arg: str, name: str) -> ml_collections.ConfigDict:
    """`variants[arg]()`, the body of every config file's `get_config(arg)`; an unknown `arg`
    is one error naming the config file's variants."""
    if arg not in variants:
        raise ValueError(
            f"config {name.rpartition('.')[2]}: unknown variant {arg!r}; its variants are: "
            f"{', '.join(variants)}."
        )
    return variants[arg]()


# --- Lookup.


def config_names() -> tuple[str, ...]:
    """The task configs that ship inside the package (`jaxlab/configs/<name>.py`): the tasks."""
    return TASKS


def config_module(file: pathlib.Path) -> Any:
    """The config file as a module: `jaxlab.configs.<name>` for a packaged one, else loaded
    from its path (a user's file)."""
    file = pathlib.Path(file).resolve()
    if file.parent == CONFIG_PACKAGE:
        return importlib.import_module(f"jaxlab.configs.{file.stem}")
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def config_variants(file: pathlib.Path) -> tuple[str, ...]:
    """The variants a config file declares in `VARIANTS`, the default first; () without one."""
    return tuple(getattr(config_module(file), "VARIANTS", ()))


def config_summary(file: pathlib.Path) -> str:
    """The first line of a config file's docstring."""
    docstring = (config_module(file).__doc__ or "").strip()
    return docstring.splitlines()[0] if docstring else ""


def configs_help() -> str:
    """One line per packaged config: name, variants (default first), summary; for --help."""
    lines = []
    for name in config_names():
        file = CONFIG_PACKAGE / f"{name}.py"
        lines.append(f"  {name:<11} {', '.join(config_variants(file))}")
        lines.append(f"  {'':<11} {config_summary(file)}")
    return "\n".join(lines)


def config_file(spec: str) -> tuple[pathlib.Path, str]:
    """`"glitch:demo"` or `"path/to/file.py:demo"` -> (config file, variant).

    A bare name resolves to the package's `jaxlab/configs/<name>.py` from any working directory;
    anything with a `/` or ending in `.py` is a file path (relative to the working directory,
    then to the repository root).
    """
    path, _, variant = spec.partition(":")
    if "/" not in path and not path.endswith(".py"):
        file = CONFIG_PACKAGE / f"{path}.py"
        if path not in config_names():
            raise FileNotFoundError(
                f"Unknown config {path!r}; the configs are: {', '.join(config_names())} "
                "(or give a file path, e.g. my_configs/glitch.py:demo)."
            )
        variants = config_variants(file)
        if variant and variant not in variants:
            raise FileNotFoundError(
                f"config {path}: unknown variant {variant!r}; its variants are: "
                f"{', '.join(variants)}."
            )
        return file, variant
    file = pathlib.Path(path)
    if not file.is_absolute() and not file.exists():
        file = pathlib.Path(__file__).resolve().parents[2] / path
    if not file.exists():
        raise FileNotFoundError(
            f"Config file {path} does not exist (packaged configs: {', '.join(config_names())})."
        )
    return file, variant


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`"glitch:demo"` (or a file path with `:variant`) -> its `get_config("demo")`, no flags.

    For code that runs several configs in one process (demo, benchmark, tests). Each call
    returns a new ConfigDict.
    """
    file, variant = config_file(spec)
    module = config_module(file)
    return module.get_config(variant) if variant else module.get_config()


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad `--config...` value into one clear line and exit 1.

    ml_collections raises AttributeError/KeyError/TypeError from deep inside for an unknown key or
    a value of the wrong type; pass this as `app.run(main, flags_parser=parse_flags)`.
    """
    try:
        argv = [argv[0], *(_resolve_config_flag(arg) for arg in argv[1:])]
    except FileNotFoundError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        lines = [line.strip("'\\\" ") for line in str(e).replace("\\n", "\n").splitlines()]
        lines = [line for line in lines if line]
        if isinstance(e, AttributeError | KeyError):
            detail = _unknown_key(argv) or f"unknown config key '{lines[0]}'. " + " ".join(
                lines[1:]
            )
        else:
            detail = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
        overrides = [a for a in argv[1:] if a.startswith("--config")]
        print(f"FATAL config error: {detail} (flags: {' '.join(overrides)})", file=sys.stderr)
        sys.exit(1)


def _resolve_config_flag(arg: str) -> str:
    """`--config=glitch:demo` -> `--config=/abs/path/jaxlab/configs/glitch.py:demo`."""
    if not arg.startswith("--config="):
        return arg
    file, variant = config_file(arg.removeprefix("--config="))
    return f"--config={file}:{variant}" if variant else f"--config={file}"


def _unknown_key(argv: list[str]) -> str | None:
    """'unknown config key train.nope; train has: ...' for the first override naming no key."""
    spec = next((a.removeprefix("--config=") for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    try:
        config = load_config(spec)
    except Exception:  # the config itself fails: leave the message to the caller
        return None
    for arg in argv:
        if not arg.startswith(("--config.", "--noconfig.")):
            continue
        key = arg.split("config.", 1)[1].partition("=")[0]
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                parent = ".".join(parts[:depth]) or "the config"
                keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f" Did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
                return f"unknown config key {key!r}.{hint} {parent} has: {', '.join(keys)}."
            node = node[part]
    return None


# --- The recorded config and the change policy.


def record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The resolved config as JSON values (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def flat_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b": [1]}: values by dotted key (lists are leaves)."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flat_dict(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _has_checkpoint(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Compares `config` with `workdir/config.json`, then records it there (process 0).

    Differences in keys outside `RESUME_HARMLESS_KEYS` (batch size, data, model, optimizer,
    dtype, seed, ...) would make a resumed run differ from an uninterrupted one: with a checkpoint
    to resume from they are one error listing the keys, unless `config.train.allow_config_change`.
    Harmless differences are logged.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = record(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                recorded = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path}: unreadable ({e}). It records the config this workdir was trained "
                "with; restore it or remove it to accept the current config."
            ) from e
        old, new = flat_dict(recorded), flat_dict(current)
        changed = sorted(
            k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>")
        )
        diff = {k: f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed}
        harmless = [k for k in changed if k.startswith(RESUME_HARMLESS_KEYS)]
        breaking = [k for k in changed if k not in harmless]
        if breaking and _has_checkpoint(workdir):
            text = "; ".join(diff[k] for k in breaking)
            if not config.train.get("allow_config_change", False):
                raise ValueError(
                    f"{path}: this run's config differs from the one this workdir was trained "
                    f"with, in keys that change the trained model: {text}. Resuming would not "
                    "reproduce the uninterrupted run. Train in a new --workdir, restore these "
                    "values, or pass --config.train.allow_config_change=True to resume anyway."
                )
            logging.warning(
                "Config changed on resume (allowed by train.allow_config_change): %s", text
            )
        if harmless:
            logging.info("Config changes on resume: %s", "; ".join(diff[k] for k in harmless))
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def _like(value: Any, reference: Any) -> Any:
    """A JSON value given the Python type of `reference` (JSON turns tuples into lists)."""
    if isinstance(value, list):
        refs = list(reference) if isinstance(reference, list | tuple) else []
        items = [
            _like(v, refs[min(i, len(refs) - 1)] if refs else None) for i, v in enumerate(value)
        ]
        return items if isinstance(reference, list) else tuple(items)
    if isinstance(reference, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _set_key(config: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[last] = _like(value, node.get(last))


def merge_recorded(
    config: Any, recorded: Mapping[str, Any], explicit: list[str]
) -> list[tuple[str, Any, Any]]:
    """Sets every key of the recorded config (JSON) in `config` except the explicit overrides.

    Returns (key, recorded value, given value) for each explicit override that differs from the
    recording outside `EVAL_KEYS`: the caller names them.
    """
    current = flat_dict(json.loads(config.to_json()))
    conflicts = []
    with config.unlocked():
        for key, value in flat_dict(recorded).items():
            overridden = any(key == k or key.startswith(f"{k}.") for k in explicit)
            if current.get(key, object()) == value:
                continue
            if overridden:
                if not key.startswith(EVAL_KEYS):
                    conflicts.append((key, value, current.get(key)))
                continue
            try:
                _set_key(config, key, value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"recorded config key {key}={value!r} cannot be set ({e}).") from e
    return conflicts
