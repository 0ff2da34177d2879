"""Recorded configs: `evaluate`, `export` and `show-config` reuse what a workdir was trained with.

`jaxlab train` records the resolved config in `workdir/config.json` (`workdir.open_workdir`) and the
spec it came from in `run_info.json`; here a later command finds them, merges the recorded values
into the given config and names any explicit override that contradicts them.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging

from jaxlab import run_records
from jaxlab.cli_flags import FLAG_HOLDERS, fatal
from jaxlab.core import task as task_lib
from jaxlab.core import workdir as workdir_lib

CONFIG_JSON = "config.json"  # the resolved config, written by workdir.open_workdir at train time
RUN_INFO_JSON = run_records.RUN_INFO_JSON
# Keys an evaluation may change against the trained run's recorded config without a flag.
EVAL_KEYS = ("eval.",)


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


def merge_recorded(
    config: Any, recorded: Mapping[str, Any], explicit: list[str]
) -> list[tuple[str, Any, Any]]:
    """Sets every key of the recorded config (JSON) in `config` except the explicit overrides.

    Returns (key, recorded value, given value) for each explicit override that differs from the
    recording outside `EVAL_KEYS`: the caller names them.
    """
    current = workdir_lib.flat_dict(json.loads(config.to_json()))
    conflicts = []
    with config.unlocked():
        for key, value in workdir_lib.flat_dict(recorded).items():
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
                fatal(f"recorded config key {key}={value!r} cannot be set ({e}).")
    return conflicts


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
    config_path = pathlib.Path(workdir) / CONFIG_JSON
    run_info = read_json(run_info_path) if run_info_path.exists() else {}
    spec = run_info.get("config")
    if not spec and config_path.exists():
        name = str(read_json(config_path).get("task", "")).rpartition(".")[2]
        spec = name if name in task_lib.config_names() else None
    if not spec:
        fatal(
            f"--config is missing and {workdir} has no {RUN_INFO_JSON} or {CONFIG_JSON} naming "
            "one; give --config=<task>:<variant>."
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
    recorded_path = pathlib.Path(workdir or "") / CONFIG_JSON
    if workdir and recorded_path.exists():
        conflicts = merge_recorded(config, read_json(recorded_path), explicit_overrides(argv))
        if conflicts and not allow_change:
            differing = "; ".join(f"{k}: trained {r!r}, given {g!r}" for k, r, g in conflicts)
            fatal(
                f"--config overrides differ from {recorded_path}: {differing}. Drop them (the "
                "recorded values are used) or pass --allow_config_change."
            )
        logging.info("Using the recorded config of %s", recorded_path)
    return config
