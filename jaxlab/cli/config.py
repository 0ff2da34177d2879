"""Recorded configs: `evaluate`, `export` and `show-config` reuse what a workdir was trained with.

`jaxlab train` records the resolved config in `workdir/config.json` (`workdir.open_workdir`) and the
spec it came from in `run_info.json`; here a later command finds them, merges the recorded values
into the given config (`core/config.merge_recorded`, which also holds the change policy) and
names any explicit override that contradicts them.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging

from jaxlab.cli.flags import FLAG_HOLDERS, fatal
from jaxlab.core import config as config_lib
from jaxlab.core import run_records

RUN_INFO_JSON = run_records.RUN_INFO_JSON


def explicit_overrides(argv: list[str]) -> list[str]:
    """The keys given as `--config.KEY=VALUE` (or `--[no]config.KEY`) on the command line."""
    keys = []
    for arg in argv:
        for prefix in ("--config.", "--noconfig."):
            if arg.startswith(prefix):
                keys.append(arg.removeprefix(prefix).partition("=")[0])
    return keys


def read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fatal(f"{path} is not valid JSON ({e}).")


def with_recorded_config(argv: list[str]) -> list[str]:
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
    config_path = pathlib.Path(workdir) / config_lib.CONFIG_FILE
    run_info = read_json(run_info_path) if run_info_path.exists() else {}
    spec = run_info.get("config")
    if not spec and config_path.exists():
        name = str(read_json(config_path).get("task", "")).rpartition(".")[2]
        spec = name if name in config_lib.config_names() else None
    if not spec:
        fatal(
            f"--config is missing and {workdir} has no {RUN_INFO_JSON} or "
            f"{config_lib.CONFIG_FILE} naming one; give --config=<task>:<variant>."
        )
    extra = [f"--config={spec}"]
    if not config_path.exists():
        given = set(explicit_overrides(argv))
        extra += [
            o for o in run_info.get("overrides", []) if explicit_overrides([o])[0] not in given
        ]
    return [argv[0], *extra, *argv[1:]]


def resolved_config(argv: list[str], allow_change: bool = False) -> Any:
    """The --config flag's value, with `workdir/config.json`'s recorded values where present."""
    config = FLAG_HOLDERS["config"].value
    workdir = FLAG_HOLDERS["workdir"].value
    if "model" in FLAG_HOLDERS and FLAG_HOLDERS["model"].value:
        workdir = FLAG_HOLDERS["model"].value  # evaluate --model: the bundle's recorded config
    if config is None:
        fatal("--config is required (e.g. --config=example:demo).")
    recorded_path = pathlib.Path(workdir or "") / config_lib.CONFIG_FILE
    if workdir and recorded_path.exists():
        try:
            conflicts = config_lib.merge_recorded(
                config, read_json(recorded_path), explicit_overrides(argv)
            )
        except ValueError as e:
            fatal(str(e))
        if conflicts and not allow_change:
            differing = "; ".join(f"{k}: trained {r!r}, given {g!r}" for k, r, g in conflicts)
            fatal(
                f"--config overrides differ from {recorded_path}: {differing}. Drop them (the "
                "recorded values are used) or pass --allow_config_change."
            )
        logging.info("Using the recorded config of %s", recorded_path)
    return config
