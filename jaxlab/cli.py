"""The `jaxlab` command: `jaxlab <command> --config=<task>:<variant> --workdir=DIR [--config.x=y]`.

One absl binary per command, chosen by the first argument; each command defines only its own
flags. `jaxlab --help` lists the commands, the packaged configs with their variants and the
common flags; `jaxlab <command> --help` the command's flags.

Run records written here (process 0): `workdir/run_info.json` (provenance: git SHA, package
versions, devices, hosts, the command) and its TensorBoard text once per run; after training, the
run's TensorBoard HParams entry with the final metrics; after `evaluate`, its metrics as
TensorBoard scalars and its PNG figures as TensorBoard images.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import pathlib
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags, logging

from jaxlab.core import task as task_lib

CONFIG_JSON = "config.json"  # the resolved config, written by run.open_workdir at train time
RUN_INFO_JSON = "run_info.json"  # provenance, written by `jaxlab train`
PACKAGES = (
    "jaxlab",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "ml_collections",
    "tensorboardX",
)
# Keys an evaluation may change against the trained run's recorded config without a flag.
EVAL_KEYS = ("eval.",)
NOT_YET = 2  # exit status of a command this version does not have


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    define_flags: Callable[[], list[Any]]  # defines the command's flags; returns their holders
    main: Callable[[list[str]], Any]
    uses_config: bool = True


# ---------------------------------------------------------------------------------------------
# Flags shared by the commands that take a config.

_holders: dict[str, Any] = {}


def _define_config_flags(workdir_help: str, workdir_required: bool = True) -> list[Any]:
    from ml_collections import config_flags

    _holders["config"] = config_flags.DEFINE_config_file(
        "config", None, "Config <task>:<variant> (e.g. glitch:demo) or a file path[:variant]."
    )
    _holders["workdir"] = flags.DEFINE_string("workdir", None, workdir_help)
    if workdir_required:
        flags.mark_flag_as_required("workdir")
    return [_holders["config"], _holders["workdir"]]


def _define_train_flags() -> list[Any]:
    holders = _define_config_flags("Directory for checkpoints, metrics and outputs.")
    flags.mark_flag_as_required("config")
    return holders


def _define_evaluate_flags() -> list[Any]:
    holders = _define_config_flags(
        "Workdir of a training run; its recorded config is used (--config may be left out)."
    )
    _holders["allow_config_change"] = flags.DEFINE_bool(
        "allow_config_change",
        False,
        "Let --config.x overrides differ from the config the workdir was trained with "
        "(eval.* keys may always differ).",
    )
    return [*holders, _holders["allow_config_change"]]


def _define_show_config_flags() -> list[Any]:
    return _define_config_flags(
        "Optional: show the config `evaluate` would use for this workdir.", workdir_required=False
    )


def _define_prepare_flags() -> list[Any]:
    holders = _define_config_flags("Workdir (a synthetic dataset is written under it).")
    flags.mark_flag_as_required("config")
    return holders


def _define_module_flags(module: str) -> Callable[[], list[Any]]:
    def define() -> list[Any]:
        imported = __import__(module, fromlist=["main"])
        return [flags.FLAGS[f.name] for f in flags.FLAGS.get_flags_for_module(imported)]

    return define


def _no_flags() -> list[Any]:
    return []


# ---------------------------------------------------------------------------------------------
# Recorded configs: `evaluate` / `show-config` reuse what the workdir was trained with.


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b": [1]}: JSON values by dotted key (lists are leaves)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    import ml_collections

    *parents, last = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[last] = _like(value, node.get(last))


def _explicit_overrides(argv: list[str]) -> list[str]:
    """The keys given as `--config.KEY=VALUE` (or `--[no]config.KEY`) on the command line."""
    keys = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                keys.append(arg.removeprefix(prefix).partition("=")[0])
    return keys


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        _fatal(f"{path} is not valid JSON ({e}).")


def merge_recorded(
    config: Any, recorded: Mapping[str, Any], explicit: list[str]
) -> list[tuple[str, Any, Any]]:
    """Sets every key of the recorded config (JSON) in `config` except the explicit overrides.

    Returns (key, recorded value, given value) for each explicit override that differs from the
    recording outside `EVAL_KEYS`: the caller names them.
    """
    current = _flatten(json.loads(config.to_json()))
    conflicts = []
    with config.unlocked():
        for key, value in _flatten(recorded).items():
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
                _fatal(f"recorded config key {key}={value!r} cannot be set ({e}).")
    return conflicts


def _with_recorded_config(argv: list[str]) -> list[str]:
    """Adds `--config=<the recorded one>` when a workdir is given without --config.

    The spec comes from `run_info.json` (`jaxlab train`), else from `config.json`'s task name.
    Without `config.json`, the overrides recorded in `run_info.json` are added too (those not
    given again).
    """
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    workdir = next((a.partition("=")[2] for a in argv if a.startswith("--workdir=")), None)
    if not workdir:
        return argv
    run_info_path = pathlib.Path(workdir) / RUN_INFO_JSON
    config_path = pathlib.Path(workdir) / CONFIG_JSON
    run_info = _read_json(run_info_path) if run_info_path.exists() else {}
    spec = run_info.get("config")
    if not spec and config_path.exists():
        name = str(_read_json(config_path).get("task", "")).rpartition(".")[2]
        spec = name if name in task_lib.config_names() else None
    if not spec:
        _fatal(
            f"--config is missing and {workdir} has no {RUN_INFO_JSON} or {CONFIG_JSON} naming "
            "one; give --config=<task>:<variant>."
        )
    extra = [f"--config={spec}"]
    if not config_path.exists():
        given = set(_explicit_overrides(argv))
        extra += [
            o for o in run_info.get("overrides", []) if _explicit_overrides([o])[0] not in given
        ]
    return [argv[0], *extra, *argv[1:]]


def resolved_config(argv: list[str], allow_change: bool = False) -> Any:
    """The --config flag's value, with `workdir/config.json`'s recorded values where present."""
    config = _holders["config"].value
    workdir = _holders["workdir"].value
    if config is None:
        _fatal("--config is required (e.g. --config=example:demo).")
    recorded_path = pathlib.Path(workdir or "") / CONFIG_JSON
    if workdir and recorded_path.exists():
        conflicts = merge_recorded(config, _read_json(recorded_path), _explicit_overrides(argv))
        if conflicts and not allow_change:
            differing = "; ".join(f"{k}: trained {r!r}, given {g!r}" for k, r, g in conflicts)
            _fatal(
                f"--config overrides differ from {recorded_path}: {differing}. Drop them (the "
                "recorded values are used) or pass --allow_config_change."
            )
        logging.info("Using the recorded config of %s", recorded_path)
    return config


# ---------------------------------------------------------------------------------------------
# Run records.


def git_revision(path: pathlib.Path) -> dict[str, Any] | None:
    """{"sha", "dirty"} of the git checkout holding `path`; None outside one (a wheel)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def run_info(spec: str, overrides: list[str]) -> dict[str, Any]:
    """Provenance of this process: code, packages, devices and hosts, the command."""
    import jax

    package_dir = pathlib.Path(__file__).resolve().parent
    in_checkout = (package_dir.parent / ".git").exists()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.devices()[0]
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["jaxlab", *sys.argv[1:]]),
        "config": spec,
        "overrides": overrides,
        "git": git_revision(package_dir) if in_checkout else None,
        "package_dir": str(package_dir),
        "python": platform.python_version(),
        "packages": versions,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "host": socket.gethostname(),
    }


def write_run_info(workdir: str, info: dict[str, Any]) -> None:
    """`workdir/run_info.json` and its TensorBoard text, once per run (process 0).

    A resumed run keeps the first record and appends its own under "resumed".
    """
    import jax

    from jaxlab.core.writer import MetricWriter

    if jax.process_index() != 0:
        return
    path = pathlib.Path(workdir) / RUN_INFO_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        record = _read_json(path)
        record.setdefault("resumed", []).append(info)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return
    path.write_text(json.dumps(info, indent=2) + "\n")
    with MetricWriter(workdir) as writer:
        writer.write_text(0, {"run_info": "```\n" + json.dumps(info, indent=2) + "\n```"})


def _numbers(metrics: Any) -> dict[str, float]:
    """The scalar numbers of a task's returned metrics (it may also return lists, strings)."""
    import numpy as np

    if not isinstance(metrics, Mapping):
        return {}
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, bool | str) or not np.isscalar(value) and np.ndim(value) != 0:
            continue
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            continue
    return numbers


def _last_step(workdir: str) -> int:
    from jaxlab.core import writer as writer_lib

    try:
        return max((int(r.get("step", 0)) for r in writer_lib.read_metrics(workdir)), default=0)
    except (FileNotFoundError, ValueError):
        return 0


def record_final_metrics(config: Any, workdir: str, metrics: Any) -> None:
    """The run's TensorBoard HParams entry: the flattened config with `final/<metric>` values."""
    from jaxlab.core.writer import MetricWriter

    values = _numbers(metrics)
    if not values:
        return
    with MetricWriter(workdir) as writer:
        writer.write_hparams_with_metrics(
            config, {f"final/{k}": v for k, v in values.items()}, step=_last_step(workdir)
        )


def record_evaluation(config: Any, workdir: str, metrics: Any) -> None:
    """An evaluation's metrics as TensorBoard scalars and its PNG figures as images."""
    import numpy as np
    from PIL import Image

    from jaxlab.core.writer import MetricWriter

    split = config.eval.get("split", "eval")
    values = _numbers(metrics)
    step = int(values.get("checkpoint_step", _last_step(workdir)))
    figures = sorted((pathlib.Path(workdir) / "eval" / str(split)).glob("*.png"))
    with MetricWriter(workdir) as writer:
        writer.write_summary_scalars(step, {f"evaluate/{split}/{k}": v for k, v in values.items()})
        for figure in figures:
            with Image.open(figure) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.write_images(step, {f"evaluate/{split}/{figure.stem}": pixels})


# ---------------------------------------------------------------------------------------------
# Commands.


def _start(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from jaxlab.core import loop
    from jaxlab.core import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed()
    loop.quiet_library_logs()


def _spec_of(argv: list[str]) -> str:
    """The --config value as given, with a packaged config kept by name (portable)."""
    raw = next(a.partition("=")[2] for a in argv if a.startswith("--config="))
    path, _, variant = raw.partition(":")
    if "/" in path or path.endswith(".py"):
        file, variant = task_lib.config_file(raw)
        return f"{file.resolve()}:{variant}" if variant else str(file.resolve())
    return raw


def train_main(argv: list[str]) -> None:
    _start(argv)
    config, workdir = _holders["config"].value, _holders["workdir"].value
    task = task_lib.import_task(config, "train")
    overrides = [a for a in _ARGV if a.startswith(("--config.", "--noconfig."))]
    write_run_info(workdir, run_info(_spec_of(_ARGV), overrides))
    logging.info("Training %s in %s with config:\n%s", config.task, workdir, config)
    metrics = task.train_and_evaluate(config, workdir)
    import jax

    if jax.process_index() == 0:
        record_final_metrics(config, workdir, metrics)


def evaluate_main(argv: list[str]) -> None:
    _start(argv)
    config = resolved_config(_ARGV, _holders["allow_config_change"].value)
    workdir = _holders["workdir"].value
    task = task_lib.import_task(config, "evaluate")
    metrics = task.evaluate(config, workdir)
    logging.info("Eval metrics:\n%s", json.dumps(metrics, indent=2, default=float))
    import jax

    if jax.process_index() == 0:
        record_evaluation(config, workdir, metrics)


def show_config_main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = resolved_config(_ARGV, allow_change=True)
    spec = next((a.partition("=")[2] for a in _ARGV if a.startswith("--config=")), "")
    file, _ = task_lib.config_file(spec)
    print(f"# {spec} ({file})")
    for override in (a for a in _ARGV if a.startswith(("--config.", "--noconfig."))):
        print(f"# {override}")
    for key, value in _flatten(config.to_dict()).items():
        print(f"{key} = {value!r}")


def prepare_main(argv: list[str]) -> None:
    _start(argv)
    config, workdir = _holders["config"].value, _holders["workdir"].value
    data = task_lib.import_task(config, "data")
    print(f"Prepared: {data.prepare(config, workdir)}")


def bench_main(argv: list[str]) -> None:
    from jaxlab import bench

    bench.main(argv)


def demo_main(argv: list[str]) -> None:
    from jaxlab import demo

    demo.main(argv)


def _not_yet(instead: str) -> Callable[[list[str]], None]:
    def main(argv: list[str]) -> None:
        del argv
        print(f"jaxlab: not yet available in this version: {instead}", file=sys.stderr)
        sys.exit(NOT_YET)

    return main


COMMANDS = {
    "train": Command(
        "Train one task (resumes from the workdir's checkpoint).", _define_train_flags, train_main
    ),
    "evaluate": Command(
        "Evaluate a trained workdir's checkpoint: metrics, data products, figures.",
        _define_evaluate_flags,
        evaluate_main,
    ),
    "predict": Command(
        "Predict on new inputs.",
        _no_flags,
        _not_yet("run `jaxlab evaluate` (each task writes its predictions under eval/<split>/)."),
        uses_config=False,
    ),
    "export": Command(
        "Export a trained model.",
        _no_flags,
        _not_yet("restore the orbax checkpoint in <workdir>/checkpoints/<step>/state."),
        uses_config=False,
    ),
    "download": Command(
        "Download a task's real dataset.",
        _no_flags,
        _not_yet("each task's README (jaxlab/<task>/README.md) says where to download its data."),
        uses_config=False,
    ),
    "prepare": Command(
        "Write a task's dataset in its on-disk format (the synthetic one when data.synthetic).",
        _define_prepare_flags,
        prepare_main,
    ),
    "check-data": Command(
        "Check a real dataset's files.",
        _no_flags,
        _not_yet("scripts/check_vegetation_data.py (vegetation) in a source checkout."),
        uses_config=False,
    ),
    "bench": Command(
        "Step time, compile time, FLOPs, memory and MFU of each task's train step.",
        _define_module_flags("jaxlab.bench"),
        bench_main,
        uses_config=False,
    ),
    "demo": Command(
        "Train and evaluate every task's demo config on synthetic data; print a table.",
        _define_module_flags("jaxlab.demo"),
        demo_main,
        uses_config=False,
    ),
    "show-config": Command(
        "Print the resolved config (with overrides, or a workdir's recorded one) without running.",
        _define_show_config_flags,
        show_config_main,
    ),
}

COMMON_FLAGS = """\
  --config=<task>:<variant>  a packaged config (below) or a file path[:variant]
  --config.KEY=VALUE         override one value, e.g. --config.optim.lr=1e-4
  --workdir=DIR              the run's directory: checkpoints, metrics.jsonl, tb/, eval/"""

_ARGV: list[str] = []  # the command's argv (flags included), for the recorded overrides


def _fatal(message: str) -> None:
    print(f"FATAL: {message}", file=sys.stderr)
    sys.exit(1)


def top_help() -> str:
    commands = "\n".join(f"  {name:<12} {c.summary}" for name, c in COMMANDS.items())
    return (
        "jaxlab: train, evaluate and benchmark the jaxlab tasks.\n\n"
        "usage: jaxlab <command> [flags]     (jaxlab <command> --help: its flags)\n\n"
        f"commands:\n{commands}\n\n"
        f"common flags:\n{COMMON_FLAGS}\n\n"
        f"configs (variants, the default first):\n{task_lib.configs_help()}\n\n"
        "example:\n"
        "  jaxlab train --config=example:demo --workdir=runs/example\n"
        "  jaxlab evaluate --workdir=runs/example\n"
    )


def command_help(name: str, holders: list[Any]) -> str:
    command = COMMANDS[name]
    lines = [f"jaxlab {name}: {command.summary}", "", "flags:"]
    for holder in holders:
        flag = flags.FLAGS[holder.name] if hasattr(holder, "name") else holder
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        lines.append(f"  --{flag.name}: {flag.help}{default}")
    if command.uses_config:
        lines += ["  --config.KEY=VALUE: override one config value", ""]
        lines += ["configs (variants, the default first):", task_lib.configs_help()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jaxlab` console script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "-help", "help", "--helpfull"):
        print(top_help(), end="")
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        _fatal(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}.")
    command = COMMANDS[name]
    holders = command.define_flags()
    rest = argv[2:]
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in rest):
        print(command_help(name, holders), end="")
        sys.exit(0)
    if name in ("evaluate", "show-config"):
        rest = _with_recorded_config(["jaxlab", *rest])[1:]
    _ARGV[:] = rest
    if command.uses_config:
        app.run(command.main, argv=[f"jaxlab {name}", *rest], flags_parser=task_lib.parse_flags)
    else:
        app.run(command.main, argv=[f"jaxlab {name}", *rest])


if __name__ == "__main__":
    main()
