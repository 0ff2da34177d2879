"""The `jaxlab` command's flags: each command defines only its own, once per process.

`_flag` defines a flag the first time a command asks for it and hands back the same holder after
that, so several commands can run in one process (the tests do) and a flag another module defined
already is reused rather than redefined.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

FLAG_HOLDERS: dict[str, Any] = {}


def define_flag(define: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """Defines flag `name` once per process (commands may run one after another in-process)."""
    if name not in FLAG_HOLDERS:
        if name in flags.FLAGS:  # defined by an imported module (e.g. jaxlab.cli.demo's --workdir)
            FLAG_HOLDERS[name] = flags.FLAGS[name]
        else:
            FLAG_HOLDERS[name] = define(name, *args, **kwargs)
    return FLAG_HOLDERS[name]


def flag_value(name: str) -> Any:
    return flags.FLAGS[name].value


def require_flags(*names: str) -> None:
    missing = [f"--{n}" for n in names if flag_value(n) in (None, "")]
    if missing:
        raise app.UsageError(f"{' and '.join(missing)} required.")


def define_config_flag() -> Any:
    from ml_collections import config_flags

    return define_flag(
        config_flags.DEFINE_config_file,
        "config",
        None,
        "Config <task>:<variant> (e.g. glitch:demo) or a file path[:variant].",
    )


def define_config_flags(workdir_help: str) -> list[Any]:
    return [define_config_flag(), define_flag(flags.DEFINE_string, "workdir", None, workdir_help)]


def define_train_flags() -> list[Any]:
    return define_config_flags("Directory for checkpoints, metrics and outputs (required).")


def define_allow_config_change() -> Any:
    return define_flag(
        flags.DEFINE_bool,
        "allow_config_change",
        False,
        "Let --config.x overrides differ from the config the workdir was trained with "
        "(eval.* keys may always differ).",
    )


def define_evaluate_flags() -> list[Any]:
    holders = define_config_flags(
        "Workdir of a training run (required); its recorded config is used (--config may be "
        "left out). With --model, the folder the evaluation's data and outputs go to."
    )
    return [*holders, define_allow_config_change()]


def define_evaluate_only_flags() -> list[Any]:
    model = define_flag(
        flags.DEFINE_string,
        "model",
        None,
        "An exported bundle to evaluate instead of --workdir's checkpoints (its recorded config "
        "is used; data and outputs go to --workdir).",
    )
    return [*define_evaluate_flags(), model]


def define_export_flags() -> list[Any]:
    holders = define_evaluate_flags()
    out = define_flag(
        flags.DEFINE_string, "out", None, "Directory the bundle is written to (required)."
    )
    which = define_flag(
        flags.DEFINE_string,
        "checkpoint",
        None,
        "Checkpoint to export: best, latest or a step number (default: config.eval.checkpoint).",
    )
    stablehlo = define_flag(
        flags.DEFINE_bool,
        "stablehlo",
        True,
        "Also write the predict network as a portable jax.export artefact for cpu, cuda and "
        "tpu (predict.stablehlo; --nostablehlo skips it).",
    )
    return [*holders, out, which, stablehlo]


def define_predict_flags() -> list[Any]:
    return [
        define_flag(
            flags.DEFINE_string, "model", None, "An exported bundle or a training workdir."
        ),
        define_flag(
            flags.DEFINE_string, "input", None, "Input file or folder, in the task's format."
        ),
        define_flag(flags.DEFINE_string, "out", None, "Directory the predictions are written to."),
    ]


def define_download_flags() -> list[Any]:
    return [define_flag(flags.DEFINE_string, "to", None, "Destination folder (required).")]


def define_check_data_flags() -> list[Any]:
    return [define_config_flag()]


def define_show_config_flags() -> list[Any]:
    return define_config_flags("Optional: show the config `evaluate` would use for this workdir.")


def define_prepare_flags() -> list[Any]:
    return define_config_flags("Workdir (a synthetic dataset is written under it; required).")


def define_module_flags(module: str) -> Callable[[], list[Any]]:
    def define() -> list[Any]:
        imported = __import__(module, fromlist=["main"])
        return [flags.FLAGS[f.name] for f in flags.FLAGS.get_flags_for_module(imported)]

    return define


def fatal(message: str) -> None:
    """One line on stderr and exit 1: a wrong config, flag or recorded value."""
    print(f"FATAL config error: {message}", file=sys.stderr)
    sys.exit(1)
