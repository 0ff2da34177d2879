"""The `jaxlab` command: `jaxlab <command> --config=<task>:<variant> --workdir=DIR [--config.x=y]`.

One absl binary per command, chosen by the first argument; each command defines only its own
flags. `jaxlab --help` lists the commands, the packaged configs with their variants and the
common flags; `jaxlab <command> --help` the command's flags.

    jaxlab export --workdir=W --out=BUNDLE [--checkpoint=best|latest|STEP] [--config.x=y]
    jaxlab predict --model=BUNDLE_OR_WORKDIR --input=PATH --out=DIR [NAME=VALUE ...]
    jaxlab download DATASET --to=DIR [NAME=VALUE ...]
    jaxlab check-data --config=<task>:<variant> --config.data.dir=DIR

Task and dataset options are positional `NAME=VALUE` arguments (any order among the flags):
`predict` passes them to the task's `predict(..., NAME="VALUE")` as strings; `download` gives
each the type of the downloader's default (`pngs=true`, `limit=20`, `init_hours=0-23`).

Errors: any exception a command raises is one line on stderr (`jaxlab <command>: <Type>:
<message>`) and exit status 1; the traceback goes to the absl log file (named on that line) and,
with --verbose, to stderr too. A task without `predict.py` (or a data check) is one line, exit 2.

Run records written here (process 0): `workdir/run_info.json` (provenance: git SHA, package
versions, devices, hosts, the command) and its TensorBoard text once per run; after training, the
run's TensorBoard HParams entry with the final metrics; after `evaluate`, its metrics as
TensorBoard scalars and its PNG figures as TensorBoard images.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags, logging

from jaxlab.core import run
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
NOT_YET = 2  # exit status of a command a task does not have yet (predict, check-data)


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    define_flags: Callable[[], list[Any]]  # defines the command's flags; returns their holders
    main: Callable[[list[str]], Any]
    uses_config: bool = True


# ---------------------------------------------------------------------------------------------
# Flags shared by the commands that take a config.

_holders: dict[str, Any] = {}


def _flag(define: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """Defines flag `name` once per process (commands may run one after another in-process)."""
    if name not in _holders:
        if name in flags.FLAGS:  # defined by an imported module (e.g. jaxlab.demo's --workdir)
            _holders[name] = flags.FLAGS[name]
        else:
            _holders[name] = define(name, *args, **kwargs)
    return _holders[name]


def _value(name: str) -> Any:
    return flags.FLAGS[name].value


def _require(*names: str) -> None:
    missing = [f"--{n}" for n in names if _value(n) in (None, "")]
    if missing:
        raise app.UsageError(f"{' and '.join(missing)} required.")


def _define_config_flag() -> Any:
    from ml_collections import config_flags

    return _flag(
        config_flags.DEFINE_config_file,
        "config",
        None,
        "Config <task>:<variant> (e.g. glitch:demo) or a file path[:variant].",
    )


def _define_config_flags(workdir_help: str) -> list[Any]:
    return [_define_config_flag(), _flag(flags.DEFINE_string, "workdir", None, workdir_help)]


def _define_train_flags() -> list[Any]:
    return _define_config_flags("Directory for checkpoints, metrics and outputs (required).")


def _define_allow_config_change() -> Any:
    return _flag(
        flags.DEFINE_bool,
        "allow_config_change",
        False,
        "Let --config.x overrides differ from the config the workdir was trained with "
        "(eval.* keys may always differ).",
    )


def _define_evaluate_flags() -> list[Any]:
    holders = _define_config_flags(
        "Workdir of a training run (required); its recorded config is used (--config may be "
        "left out). With --model, the folder the evaluation's data and outputs go to."
    )
    return [*holders, _define_allow_config_change()]


def _define_evaluate_only_flags() -> list[Any]:
    model = _flag(
        flags.DEFINE_string,
        "model",
        None,
        "An exported bundle to evaluate instead of --workdir's checkpoints (its recorded config "
        "is used; data and outputs go to --workdir).",
    )
    return [*_define_evaluate_flags(), model]


def _define_export_flags() -> list[Any]:
    holders = _define_evaluate_flags()
    out = _flag(flags.DEFINE_string, "out", None, "Directory the bundle is written to (required).")
    which = _flag(
        flags.DEFINE_string,
        "checkpoint",
        None,
        "Checkpoint to export: best, latest or a step number (default: config.eval.checkpoint).",
    )
    return [*holders, out, which]


def _define_predict_flags() -> list[Any]:
    return [
        _flag(flags.DEFINE_string, "model", None, "An exported bundle or a training workdir."),
        _flag(flags.DEFINE_string, "input", None, "Input file or folder, in the task's format."),
        _flag(flags.DEFINE_string, "out", None, "Directory the predictions are written to."),
    ]


def _define_download_flags() -> list[Any]:
    return [_flag(flags.DEFINE_string, "to", None, "Destination folder (required).")]


def _define_check_data_flags() -> list[Any]:
    return [_define_config_flag()]


def _define_show_config_flags() -> list[Any]:
    return _define_config_flags("Optional: show the config `evaluate` would use for this workdir.")


def _define_prepare_flags() -> list[Any]:
    return _define_config_flags("Workdir (a synthetic dataset is written under it; required).")


def _define_module_flags(module: str) -> Callable[[], list[Any]]:
    def define() -> list[Any]:
        imported = __import__(module, fromlist=["main"])
        return [flags.FLAGS[f.name] for f in flags.FLAGS.get_flags_for_module(imported)]

    return define


# ---------------------------------------------------------------------------------------------
# Recorded configs: `evaluate` / `show-config` reuse what the workdir was trained with.


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
    current = run.flat_dict(json.loads(config.to_json()))
    conflicts = []
    with config.unlocked():
        for key, value in run.flat_dict(recorded).items():
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
    workdir = next((a.partition("=")[2] for a in argv if a.startswith("--model=")), None)
    workdir = workdir or next(
        (a.partition("=")[2] for a in argv if a.startswith("--workdir=")), None
    )
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
    if "model" in _holders and _holders["model"].value:
        workdir = _holders["model"].value  # evaluate --model: the bundle's recorded config
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
    from jaxlab.core import compile_cache, loop
    from jaxlab.core import mesh as mesh_lib

    mesh_lib.maybe_initialize_distributed()
    loop.quiet_library_logs()
    compile_cache.enable()  # persistent XLA cache (JAXLAB_NO_COMPILE_CACHE=1 turns it off)


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
    _require("config", "workdir")
    config, workdir = _value("config"), _value("workdir")
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
    _require("workdir")
    config = resolved_config(_ARGV, _value("allow_config_change"))
    workdir = _value("workdir")
    if _value("model"):
        from jaxlab.core import bundle

        if not bundle.is_bundle(_value("model")):
            _fatal(f"--model={_value('model')}: not an exported bundle (no {bundle.INFO_FILE}).")
        with config.unlocked():
            config.eval.model = os.path.abspath(_value("model"))
    task = task_lib.import_task(config, "evaluate")
    metrics = task.evaluate(config, workdir)
    logging.info("Eval metrics:\n%s", json.dumps(metrics, indent=2, default=float))
    import jax

    if jax.process_index() == 0:
        record_evaluation(config, workdir, metrics)


def export_main(argv: list[str]) -> None:
    """`jaxlab export --workdir=W --out=BUNDLE [--checkpoint=best|latest|STEP]`."""
    _start(argv)
    _require("workdir", "out")
    from jaxlab import export

    config = resolved_config(_ARGV, _value("allow_config_change"))
    out = export.export_bundle(config, _value("workdir"), _value("out"), _value("checkpoint"))
    for name in sorted(os.listdir(out)):
        print(os.path.join(out, name))


def key_values(args: list[str], command: str) -> dict[str, str]:
    """["name=value", ...] (the positional arguments after the flags) -> {"name": "value"}."""
    options = {}
    for arg in args:
        name, equals, value = arg.partition("=")
        if not equals or not name.isidentifier():
            raise app.UsageError(f"{arg!r} is not an option NAME=VALUE (e.g. batch_size=256).")
        if name in options:
            raise app.UsageError(f"option {name!r} is given twice.")
        options[name] = value
    return options


def _model_config(model: str) -> Any:
    """The config a bundle or a training workdir recorded (`config.json`)."""
    from jaxlab import export

    if not os.path.isdir(model):
        raise FileNotFoundError(f"--model={model}: no such bundle or workdir.")
    if not os.path.isfile(os.path.join(model, export.CONFIG_FILE)):
        raise FileNotFoundError(
            f"--model={model}: no {export.CONFIG_FILE}; give an exported bundle (`jaxlab export`) "
            "or the workdir of a training run."
        )
    return export.read_config(model)


def predict_main(argv: list[str]) -> None:
    """`jaxlab predict --model=M --input=PATH --out=DIR [NAME=VALUE ...]`."""
    options = key_values(argv[1:], "predict")
    _start(argv[:1])
    _require("model", "input", "out")
    model = _value("model")
    config = _model_config(model)
    if importlib.util.find_spec(f"{config.task}.predict") is None:
        print(
            f"jaxlab predict: {config.task} has no predict.py in this version; "
            f"`jaxlab evaluate --workdir=...` writes its predictions under eval/<split>/.",
            file=sys.stderr,
        )
        sys.exit(NOT_YET)
    task = task_lib.import_task(config, "predict")
    written = task.predict(model, _value("input"), _value("out"), config=config, **options)
    for path in [written] if isinstance(written, str) else written:
        print(path)


def _typed_option(name: str, value: str, default: Any) -> Any:
    """A download option's string as the type of the downloader's default for it."""
    if isinstance(default, bool):
        if value.lower() in ("true", "yes", "1"):
            return True
        if value.lower() in ("false", "no", "0"):
            return False
        raise ValueError(f"option {name}={value!r}: expected true or false.")
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"option {name}={value!r}: expected a number.") from None
    if default is None and value.lower() == "none":
        return None
    if isinstance(default, int) or default is None:
        return int(value) if value.lstrip("-").isdigit() else value  # hours take "0-23" too
    return value


def download_options(dataset: str, options: dict[str, str]) -> dict[str, Any]:
    """NAME=VALUE strings -> the keyword arguments of `jaxlab.download.download_<dataset>`.

    Each value takes the type of the option's default there (true/false for a bool, a number
    for an int or float; an int option also takes ranges like 0-23); unknown names pass through
    as strings, for the downloader to reject with its list.
    """
    import dataclasses
    import inspect

    from jaxlab import download

    defaults = {f.name: f.default for f in dataclasses.fields(download.fetch.Options)}
    function = getattr(download, f"download_{dataset}", None)
    if dataset in download.DATASETS and callable(function):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
                empty = parameter.default is inspect.Parameter.empty
                defaults[name] = "" if empty else parameter.default
    return {k: _typed_option(k, v, defaults.get(k, "")) for k, v in options.items()}


def download_main(argv: list[str]) -> None:
    """`jaxlab download DATASET --to=DIR [NAME=VALUE ...]`."""
    from jaxlab import download

    if len(argv) < 2:
        raise app.UsageError(
            f"give the dataset: jaxlab download DATASET --to=DIR [NAME=VALUE ...]; "
            f"DATASET is one of {', '.join(download.DATASETS)}."
        )
    dataset = argv[1]
    options = download_options(dataset, key_values(argv[2:], "download"))
    download.download(dataset, _value("to") or "", **options)


def _data_check(config: Any) -> Callable[[], Any] | None:
    """The task's data check: `check(config)` in `<task>.datacheck` or `<task>.data`; else a
    `datacheck.check_track(root, track, config)` over the config's tracks (vegetation)."""
    for name in ("datacheck", "data"):
        full = f"{config.task}.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        module = importlib.import_module(full)
        if callable(getattr(module, "check", None)):
            return lambda: module.check(config)
        if callable(getattr(module, "check_track", None)):
            if not config.data.get("dir"):
                raise ValueError(
                    "config.data.dir is empty: give the dataset's folder, --config.data.dir=DIR."
                )
            tracks = [v for k, v in config.data.items() if k.endswith("_track")]
            tracks = list(dict.fromkeys([*tracks, config.eval.get("split", "")] if tracks else []))
            return lambda: {t: module.check_track(config.data.dir, t, config) for t in tracks if t}
    return None


def check_data_main(argv: list[str]) -> None:
    """`jaxlab check-data --config=<task>:<variant> --config.data.dir=DIR`: a JSON report on
    stdout; exit status 1 when a file fails the task's checks."""
    _start(argv)
    _require("config")
    config = _value("config")
    check = _data_check(config)
    if check is None:
        print(f"jaxlab check-data: not available for {config.task} yet.", file=sys.stderr)
        sys.exit(NOT_YET)
    report = check()
    print(json.dumps(report, indent=2, default=str))
    values = report.values() if isinstance(report, Mapping) else []
    failed = [r.get("failed", 0) for r in values if isinstance(r, Mapping)]
    if (report.get("failed", 0) if isinstance(report, Mapping) else 0) or any(failed):
        sys.exit(1)


def show_config_main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = resolved_config(_ARGV, allow_change=True)
    spec = next((a.partition("=")[2] for a in _ARGV if a.startswith("--config=")), "")
    file, _ = task_lib.config_file(spec)
    print(f"# {spec} ({file})")
    for override in (a for a in _ARGV if a.startswith(("--config.", "--noconfig."))):
        print(f"# {override}")
    for key, value in run.flat_dict(config.to_dict()).items():
        print(f"{key} = {value!r}")


def prepare_main(argv: list[str]) -> None:
    _start(argv)
    _require("config", "workdir")
    config, workdir = _value("config"), _value("workdir")
    data = task_lib.import_task(config, "data")
    print(f"Prepared: {data.prepare(config, workdir)}")


def bench_main(argv: list[str]) -> None:
    from jaxlab import bench

    bench.main(argv)


def demo_main(argv: list[str]) -> None:
    from jaxlab import demo

    demo.main(argv)


COMMANDS = {
    "train": Command(
        "Train one task (resumes from the workdir's checkpoint).", _define_train_flags, train_main
    ),
    "evaluate": Command(
        "Evaluate a trained workdir's checkpoint: metrics, data products, figures.",
        _define_evaluate_only_flags,
        evaluate_main,
    ),
    "predict": Command(
        "Predict on new inputs with a bundle or a workdir: --model=M --input=PATH --out=DIR "
        "[NAME=VALUE ...].",
        _define_predict_flags,
        predict_main,
        uses_config=False,
    ),
    "export": Command(
        "Export a workdir's checkpoint as a bundle (safetensors params, config, model card).",
        _define_export_flags,
        export_main,
    ),
    "download": Command(
        "Download a real dataset: DATASET --to=DIR [NAME=VALUE ...] (docs/data.md).",
        _define_download_flags,
        download_main,
        uses_config=False,
    ),
    "prepare": Command(
        "Write a task's dataset in its on-disk format (the synthetic one when data.synthetic).",
        _define_prepare_flags,
        prepare_main,
    ),
    "check-data": Command(
        "Check a real dataset's files against the task's readers; a JSON report.",
        _define_check_data_flags,
        check_data_main,
    ),
    "bench": Command(
        "Step time, compile time, FLOPs, memory and MFU of each task's train step.",
        _define_module_flags("jaxlab.bench"),
        bench_main,
        uses_config=False,
    ),
    "demo": Command(
        "Train, evaluate, export and predict with every task's demo config; print a table.",
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


def _define_verbose() -> Any:
    return _flag(
        flags.DEFINE_bool,
        "verbose",
        False,
        "On an error, print the full traceback (it is always written to the absl log file).",
    )


def _log_failure(name: str) -> str | None:
    """Writes the current exception's traceback to the absl log file; returns its path.

    The file absl logs to when it logs to one (--log_dir with a log file in use), else a file
    named as absl names them in absl's log directory (--log_dir, else the temp dir).
    """
    text = f"jaxlab {name} failed:\n{traceback.format_exc()}"
    handler = logging.get_absl_handler().python_handler
    log_file = getattr(handler.stream, "name", None)
    if isinstance(log_file, str) and os.path.isfile(log_file):  # not <stderr>
        logging.error("%s", text)
        handler.flush()
        return log_file
    try:
        log_dir, prefix, _ = logging.find_log_dir_and_names("jaxlab", _value("log_dir") or None)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(log_dir, f"{prefix}.ERROR.{stamp}.{os.getpid()}")
        with open(path, "a") as f:
            f.write(text)
    except OSError:
        return None
    return path


def _guarded(name: str, main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main`, with any error turned into one line on stderr (type and message) and exit 1.

    The traceback goes to the absl log file, and to stderr too under --verbose. A usage error
    (a missing flag, a stray argument) is one line too, pointing to `--help`.
    """

    def run(argv: list[str]) -> Any:
        try:
            return main(argv)
        except app.UsageError as e:
            print(f"jaxlab {name}: {e} (jaxlab {name} --help: its flags)", file=sys.stderr)
            sys.exit(e.exitcode)
        except Exception as e:
            log_file = _log_failure(name)
            if _value("verbose"):
                traceback.print_exc()
            message = " ".join(str(e).split("\n")).strip() or "(no message)"
            where = f"traceback in {log_file}" if log_file else "traceback not written"
            print(
                f"jaxlab {name}: {type(e).__name__}: {message} ({where}; --verbose prints it)",
                file=sys.stderr,
            )
            sys.exit(1)

    return run


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
    holders = [*command.define_flags(), _define_verbose()]
    rest = argv[2:]
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in rest):
        print(command_help(name, holders), end="")
        sys.exit(0)
    if name in ("evaluate", "export", "show-config"):
        rest = _with_recorded_config(["jaxlab", *rest])[1:]
    _ARGV[:] = rest
    flags.FLAGS.unparse_flags()  # values of an earlier in-process command do not carry over
    guarded = _guarded(name, command.main)
    if command.uses_config:
        app.run(guarded, argv=[f"jaxlab {name}", *rest], flags_parser=task_lib.parse_flags)
    else:
        app.run(guarded, argv=[f"jaxlab {name}", *rest])


if __name__ == "__main__":
    main()
