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
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags, logging

from jaxlab.cli.config import (  # noqa: F401 - part of the command's API (tests use them)
    explicit_overrides,
    read_json,
    resolved_config,
    with_recorded_config,
)
from jaxlab.cli.flags import (
    define_check_data_flags,
    define_download_flags,
    define_evaluate_only_flags,
    define_export_flags,
    define_flag,
    define_module_flags,
    define_predict_flags,
    define_prepare_flags,
    define_show_config_flags,
    define_train_flags,
    fatal,
    flag_value,
    require_flags,
)
from jaxlab.core import config as config_lib
from jaxlab.core import lock
from jaxlab.core import task as task_lib
from jaxlab.core.run_records import (
    record_evaluation,
    record_final_metrics,
    run_info,
    write_run_info,
)

NOT_YET = 2  # exit status of a command a task does not have yet (predict, check-data)


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    define_flags: Callable[[], list[Any]]  # defines the command's flags; returns their holders
    main: Callable[[list[str]], Any]
    uses_config: bool = True
    more_help: Callable[[], str] | None = None  # printed after the flags by `--help`


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
        file, variant = config_lib.config_file(raw)
        return f"{file.resolve()}:{variant}" if variant else str(file.resolve())
    return raw


def _open_run(argv: list[str], module: str, verb: str) -> tuple[Any, str, Any]:
    """Shared start of `train` and `study`: flags, the task's `module`, run_info.json in the
    workdir (command, config spec and overrides) and a log line. -> (config, workdir, module)."""
    _start(argv)
    require_flags("config", "workdir")
    config, workdir = flag_value("config"), flag_value("workdir")
    task = task_lib.import_task(config, module)
    overrides = [a for a in _ARGV if a.startswith(("--config.", "--noconfig."))]
    write_run_info(workdir, run_info(_spec_of(_ARGV), overrides))
    logging.info("%s %s in %s with config:\n%s", verb, config.task, workdir, config)
    return config, workdir, task


def train_main(argv: list[str]) -> None:
    config, workdir, task = _open_run(argv, "train", "Training")
    metrics = task.train_and_evaluate(config, workdir)
    import jax

    if jax.process_index() == 0:
        record_final_metrics(config, workdir, metrics)


def study_main(argv: list[str]) -> None:
    config, workdir, task = _open_run(argv, "study", "Study")
    task.main(config, workdir)


def evaluate_main(argv: list[str]) -> None:
    _start(argv)
    require_flags("workdir")
    lock.check_not_a_file(flag_value("workdir"))
    config = resolved_config(_ARGV, flag_value("allow_config_change"))
    workdir = flag_value("workdir")
    if flag_value("model"):
        from jaxlab.core import bundle as bundle_lib

        model = flag_value("model")
        if not bundle_lib.is_bundle(model):
            fatal(f"--model={model}: not an exported bundle (no {bundle_lib.INFO_FILE}).")
        with config.unlocked():
            config.eval.model = os.path.abspath(model)
    task = task_lib.import_task(config, "evaluate")
    metrics = task.evaluate(config, workdir)
    logging.info("Eval metrics:\n%s", json.dumps(metrics, indent=2, default=float))
    import jax

    if jax.process_index() == 0:
        record_evaluation(config, workdir, metrics)


def export_main(argv: list[str]) -> None:
    """`jaxlab export --workdir=W --out=BUNDLE [--checkpoint=best|latest|STEP]`."""
    _start(argv)
    require_flags("workdir", "out")
    lock.check_not_a_file(flag_value("workdir"))
    from jaxlab.core import bundle as bundle_lib

    config = resolved_config(_ARGV, flag_value("allow_config_change"))
    out = bundle_lib.export_bundle(
        config,
        flag_value("workdir"),
        flag_value("out"),
        flag_value("checkpoint"),
        stablehlo=flag_value("stablehlo"),
    )
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
    from jaxlab.core import bundle as bundle_lib

    if not os.path.isdir(model):
        raise FileNotFoundError(f"--model={model}: no such bundle or workdir.")
    if not os.path.isfile(os.path.join(model, bundle_lib.CONFIG_FILE)):
        raise FileNotFoundError(
            f"--model={model}: no {bundle_lib.CONFIG_FILE}; give an exported bundle "
            "(`jaxlab export`) or the workdir of a training run."
        )
    return bundle_lib.read_config(model)


def predict_main(argv: list[str]) -> None:
    """`jaxlab predict --model=M --input=PATH --out=DIR [NAME=VALUE ...]`."""
    options = key_values(argv[1:], "predict")
    _start(argv[:1])
    require_flags("model", "input", "out")
    model = flag_value("model")
    config = _model_config(model)
    if importlib.util.find_spec(f"{config.task}.predict") is None:
        print(
            f"jaxlab predict: {config.task} has no predict.py in this version; "
            f"`jaxlab evaluate --workdir=...` writes its predictions under eval/<split>/.",
            file=sys.stderr,
        )
        sys.exit(NOT_YET)
    task = task_lib.import_task(config, "predict")
    written = task.predict(model, flag_value("input"), flag_value("out"), config=config, **options)
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
    try:
        download.download(dataset, flag_value("to") or "", **options)
    except download.MissingFilesError as e:  # the rest is downloaded: its own exit status
        print(f"jaxlab download: {e}", file=sys.stderr)
        sys.exit(download.EXIT_MISSING)


def _data_check(config: Any) -> Callable[[], Any] | None:
    """The task's data check: `check(config)` in `<task>.data_report` or `<task>.data`; else a
    `data_report.check_track(root, track, config)` over the config's tracks (vegetation)."""
    for name in ("data_report", "data"):
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
    require_flags("config")
    config = flag_value("config")
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
    file, _ = config_lib.config_file(spec)
    print(f"# {spec} ({file})")
    for override in (a for a in _ARGV if a.startswith(("--config.", "--noconfig."))):
        print(f"# {override}")
    for key, value in config_lib.flat_dict(config.to_dict()).items():
        print(f"{key} = {value!r}")


def prepare_main(argv: list[str]) -> None:
    _start(argv)
    require_flags("config", "workdir")
    config, workdir = flag_value("config"), flag_value("workdir")
    data = task_lib.import_task(config, "data")
    print(f"Prepared: {data.prepare(config, workdir)}")
    if task_lib.has_module(config, "cache"):  # a task's model-ready record cache
        cache = task_lib.import_task(config, "cache")
        print(f"Cache: {cache.prepare(config, workdir) or 'off'}")


def bench_main(argv: list[str]) -> None:
    from jaxlab.cli import bench

    bench.main(argv)


def demo_main(argv: list[str]) -> None:
    from jaxlab.cli import demo

    demo.main(argv)


COMMANDS = {
    "train": Command(
        "Train one task (resumes from the workdir's checkpoint).", define_train_flags, train_main
    ),
    "study": Command(
        "Train a study's arms on the same data and seeds; table with paired bootstrap intervals, "
        "figure and study.json in WORKDIR/study.",
        define_train_flags,
        study_main,
    ),
    "evaluate": Command(
        "Evaluate a trained workdir's checkpoint: metrics, data products, figures.",
        define_evaluate_only_flags,
        evaluate_main,
    ),
    "predict": Command(
        "Predict on new inputs with a bundle or a workdir: --model=M --input=PATH --out=DIR "
        "[NAME=VALUE ...].",
        define_predict_flags,
        predict_main,
        uses_config=False,
    ),
    "export": Command(
        "Export a workdir's checkpoint as a bundle (safetensors params, config, model card).",
        define_export_flags,
        export_main,
    ),
    "download": Command(
        "Download a real dataset: DATASET --to=DIR [NAME=VALUE ...] (docs/data.md).",
        define_download_flags,
        download_main,
        uses_config=False,
        more_help=lambda: importlib.import_module("jaxlab.download").help_text(),
    ),
    "prepare": Command(
        "Write a task's dataset in its on-disk format (the synthetic one when data.synthetic).",
        define_prepare_flags,
        prepare_main,
    ),
    "check-data": Command(
        "Check a real dataset's files against the task's readers; a JSON report.",
        define_check_data_flags,
        check_data_main,
    ),
    "bench": Command(
        "Step time, compile time, FLOPs, memory and MFU of each task's train step.",
        define_module_flags("jaxlab.cli.bench"),
        bench_main,
        uses_config=False,
    ),
    "demo": Command(
        "Train, evaluate, export and predict with every task's demo config; print a table.",
        define_module_flags("jaxlab.cli.demo"),
        demo_main,
        uses_config=False,
    ),
    "show-config": Command(
        "Print the resolved config (with overrides, or a workdir's recorded one) without running.",
        define_show_config_flags,
        show_config_main,
    ),
}

COMMON_FLAGS = """\
  --config=<task>:<variant>  a packaged config (below) or a file path[:variant]
  --config.KEY=VALUE         override one value, e.g. --config.optim.lr=1e-4
  --workdir=DIR              the run's directory: checkpoints, metrics.jsonl, tb/, eval/"""

_ARGV: list[str] = []  # the command's argv (flags included), for the recorded overrides


def define_verbose() -> Any:
    return define_flag(
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
        log_dir, prefix, _ = logging.find_log_dir_and_names("jaxlab", flag_value("log_dir") or None)
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
            if flag_value("verbose"):
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
        f"configs (variants, the default first):\n{config_lib.configs_help()}\n\n"
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
        lines += ["configs (variants, the default first):", config_lib.configs_help()]
    if command.more_help is not None:
        lines += ["", command.more_help().rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jaxlab` console script."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "-help", "help", "--helpfull"):
        print(top_help(), end="")
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        fatal(f"unknown command {name!r}; the commands are: {', '.join(COMMANDS)}.")
    command = COMMANDS[name]
    holders = [*command.define_flags(), define_verbose()]
    rest = argv[2:]
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in rest):
        print(command_help(name, holders), end="")
        sys.exit(0)
    if name in ("evaluate", "export", "show-config"):
        rest = with_recorded_config(["jaxlab", *rest])[1:]
    _ARGV[:] = rest
    flags.FLAGS.unparse_flags()  # values of an earlier in-process command do not carry over
    guarded = _guarded(name, command.main)
    if command.uses_config:
        app.run(guarded, argv=[f"jaxlab {name}", *rest], flags_parser=config_lib.parse_flags)
    else:
        app.run(guarded, argv=[f"jaxlab {name}", *rest])


if __name__ == "__main__":
    main()
