"""Portable model bundles: inference parameters as safetensors, the resolved config, a model card.

A bundle is a directory a colleague or a server can use without the training workdir:

    bundle/
      params.safetensors   the inference parameters (EMA ones where the task keeps them), one
                           tensor per leaf named by its path ("encoder/block_0/attn/kernel")
      config.json          the resolved config the model was trained with
      bundle.json          task, checkpoint step, metrics at that step, git SHA, package versions
      model_card.md        the same facts for a person

No optimizer state. A task's `steps.py` may define `inference_params(state) -> params` (default:
`state.params`) and `bundle_files(config, workdir) -> {name: path}`: files inference needs besides
the parameters (normalisation statistics, ...), copied into the bundle under `name`.
`load_model(path)` accepts a bundle or a training workdir, so `predict` and `evaluate` can take
either; both give bitwise the same parameters.

`state_from_bundle` puts a bundle's parameters back into a train state, so
`restore.restore_for_eval` evaluates a bundle (`config.eval.model`) with the task's own
evaluate; a workdir's checkpoint is restored with `checkpoint.restore_selected`. The file names
and bundle.json are in `bundle_files`, which `portable` (the StableHLO predict) reads too.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from safetensors import numpy as safetensors_np

from jaxlab.core import checkpoint, portable, run_records
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import task as task_lib
from jaxlab.core.bundle_files import (  # noqa: F401 - the bundle's names, re-exported
    CARD_FILE,
    CONFIG_FILE,
    INFO_FILE,
    PARAMS_FILE,
    is_bundle,
    read_config,
    read_info,
)

BUNDLE_FORMAT = 1
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]  # jaxlab/


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{"a/b/kernel": array} for every leaf of a nested-dict parameter tree."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[name] = np.asarray(jax.device_get(leaf))
    return flat


def unflatten_params(flat: dict[str, np.ndarray], abstract: Any, source: str) -> Any:
    """The tree of `abstract` (ShapeDtypeStructs) filled from `flat`, checked leaf by leaf.

    Raises one ValueError naming the first missing, unexpected or mis-shaped parameter.
    """
    expected = flatten_params(jax.tree.map(lambda x: np.zeros((), x.dtype), abstract))
    names = list(expected)
    shapes = {
        name: leaf.shape
        for name, leaf in zip(names, jax.tree.leaves(abstract), strict=True)  # same order
    }
    missing = [n for n in names if n not in flat]
    unexpected = [n for n in flat if n not in shapes]
    if missing or unexpected:
        raise ValueError(
            f"{source}: parameters do not match the config's model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)."
        )
    for name in names:
        if flat[name].shape != tuple(shapes[name]) or flat[name].dtype != expected[name].dtype:
            raise ValueError(
                f"{source}: parameter {name!r} is {flat[name].dtype}{list(flat[name].shape)}; "
                f"the config's model expects {expected[name].dtype}{list(shapes[name])}."
            )
    treedef = jax.tree.structure(abstract)
    return jax.tree.unflatten(treedef, [flat[n] for n in names])


def read_params(path: str, abstract: Any) -> Any:
    """The bundle's inference parameters, shaped like `abstract` (checked)."""
    file = os.path.join(path, PARAMS_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: the bundle has no parameter file.")
    return unflatten_params(safetensors_np.load_file(file), abstract, file)


def write_params(path: str, params: Any, metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """Writes `params` to the bundle's parameter file; returns the flat dict written."""
    flat = flatten_params(params)
    safetensors_np.save_file(flat, os.path.join(path, PARAMS_FILE), metadata=metadata)
    return flat


def _inference_params_fn(steps: Any) -> Callable[[Any], Any]:
    return getattr(steps, "inference_params", lambda state: state.params)


def _single_device_parts(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    steps = task_lib.import_task(config, "steps")
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    return steps, steps.build(config, mesh)


def export_bundle(
    config: ml_collections.ConfigDict,
    workdir: str,
    out: str,
    which: str | None = None,
    stablehlo: bool = True,
) -> str:
    """Writes the bundle of checkpoint `which` (default `config.eval.checkpoint`) to `out`.

    `stablehlo`: also the task's predict network as a portable `jax.export` artefact
    (`jaxlab.core.portable`; tasks whose predict.py defines `network(config)`).
    """

    steps, parts = _single_device_parts(config)
    state, step = checkpoint.restore_selected(config, workdir, parts.abstract_state, which)
    params = _inference_params_fn(steps)(state)
    manager = checkpoint.manager_from_config(config, workdir, read_only=True)
    metrics = {k: float(v) for k, v in (manager.metrics(step) or {}).items()}
    manager.close()

    os.makedirs(out, exist_ok=True)
    flat = write_params(out, params, {"task": config.task, "step": str(step)})
    with open(os.path.join(out, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    extra_files = getattr(steps, "bundle_files", lambda config, workdir: {})(config, workdir)
    for name, path in extra_files.items():
        if os.path.basename(name) != name or name in (PARAMS_FILE, CONFIG_FILE, INFO_FILE):
            raise ValueError(f"{config.task}.steps.bundle_files: bad bundle file name {name!r}.")
        shutil.copyfile(path, os.path.join(out, name))
    info = {
        "format": BUNDLE_FORMAT,
        "task": config.task,
        "checkpoint_step": int(step),
        "training_steps": int(parts.num_steps),
        "metrics": metrics,
        "num_parameters": int(sum(v.size for v in flat.values())),
        "git_sha": (run_records.git_revision(PACKAGE_DIR) or {}).get("sha"),
        "versions": {k: v for k, v in run_records.package_versions().items() if v},
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source_workdir": os.path.abspath(workdir),
        "files": sorted(extra_files),
    }
    if stablehlo:
        info.update(portable.export_task_network(config, params, out))
    with open(os.path.join(out, INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    with open(os.path.join(out, CARD_FILE), "w") as f:
        f.write(model_card(info))
    logging.info("Exported step %d of %s to %s (%d tensors)", step, workdir, out, len(flat))
    return out


def model_card(info: dict[str, Any]) -> str:
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(info["metrics"].items()))
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"# {info['task']} model\n\n"
        f"- checkpoint step {info['checkpoint_step']} of {info['training_steps']} training steps\n"
        f"- {info['num_parameters']:,} parameters (inference weights only, no optimizer state)\n"
        f"- trained in {info['source_workdir']}\n"
        f"- git {info['git_sha'] or 'unknown'}; {versions}\n"
        f"- exported {info['exported_at']}\n\n"
        "The config it was trained with is `config.json`; the data it expects is described in "
        "the task's README.\n\n"
        f"| metric at export | value |\n|---|---|\n{metrics or '| (none saved) | |'}\n"
    )


def load_model(
    path: str, config: ml_collections.ConfigDict | None = None, task: str | None = None
) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
    """(config, inference params, info) from a bundle or a training workdir.

    `task` (e.g. "jaxlab.example"), when given, must match the model's. A workdir needs `config`
    unless it holds a `config.json`.
    """
    if config is None:
        config = read_config(path)
    if task is not None and config.task != task:
        raise ValueError(f"{path} holds a {config.task} model; this command needs a {task} model.")
    steps, parts = _single_device_parts(config)
    abstract = jax.eval_shape(_inference_params_fn(steps), parts.abstract_state)
    if is_bundle(path):
        return config, read_params(path, abstract), read_info(path)
    state, step = checkpoint.restore_selected(config, path, parts.abstract_state)
    params = jax.device_get(_inference_params_fn(steps)(state))
    return config, params, {"task": config.task, "checkpoint_step": int(step)}


def state_from_bundle(config: ml_collections.ConfigDict, path: str, parts: Any) -> tuple[Any, int]:
    """(state, step): a fresh state carrying the bundle's inference parameters.

    The task's `steps.inference_params(state)` (default `state.params`) says what a bundle holds
    and `steps.with_inference_params(state, params)` (default `state.replace(params=...)`) puts
    it back; the optimizer state is a fresh one (evaluation never reads it).
    """
    info = read_info(path)
    if info.get("task") != config.task:
        raise ValueError(f"{path} holds a {info.get('task')} model; the config is {config.task}.")
    steps = task_lib.import_task(config, "steps")
    get = _inference_params_fn(steps)
    put = getattr(steps, "with_inference_params", lambda state, p: state.replace(params=p))
    params = read_params(path, jax.eval_shape(get, parts.abstract_state))
    state = parts_lib.init_state(parts, jax.random.key(0))
    state = put(state, jax.device_put(params, jax.tree.map(lambda x: x.sharding, get(state))))
    logging.info("Evaluating bundle %s (step %d)", path, info["checkpoint_step"])
    return state, int(info["checkpoint_step"])


def positive_int_option(name: str, value: str | int) -> int:
    """A predict option that must be a positive integer (options arrive as strings)."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"predict option {name}={value!r}: expected a positive integer.")
    return number
