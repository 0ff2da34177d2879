"""A train state from a workdir: restore-or-initialise for training, restore for evaluation.

Resuming restores the newest intact checkpoint (`checkpoint.restore_latest_intact`); evaluation
restores a chosen step read-only, or an exported bundle's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import bundle, checkpoint
from jaxlab.core import parts as parts_lib
from jaxlab.core import state as state_lib
from jaxlab.core import task as task_lib


def init_or_restore(
    manager: ocp.CheckpointManager,
    parts: Any,
    rng: jax.Array,
    data_iterator: Any = None,
    new_state: Callable[[jax.Array], Any] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """(state, loop_state): the newest intact checkpoint's, or a fresh state and None.

    Damaged newer steps are logged and moved aside (`checkpoint.restore_latest_intact`). A fresh
    state is born sharded: `parts.init_state(parts, rng)`, or `new_state(rng)` when given, which
    changes only how a *new* run starts (e.g. with pretrained weights). `new_state` is called as
    is, not traced, so large weights it loads are placed on devices rather than compiled in as
    constants; it must return a state with `parts.shardings`. The data iterator's position is
    restored in place.
    """
    step, state = checkpoint.restore_latest_intact(manager, parts.abstract_state, data_iterator)
    if step is None:
        state = parts_lib.init_state(parts, rng) if new_state is None else new_state(rng)
        logging.info("New run: %d parameters", state_lib.param_count(state.params))
        return state, None
    return state, checkpoint.restore_loop_state(manager, step)


def restore_for_eval(
    config: ml_collections.ConfigDict, workdir: str, parts: Any, which: str | None = None
) -> tuple[Any, int]:
    """(state, step) of the checkpoint `which` (default `config.eval.checkpoint`) in workdir.

    Read-only and lock-free: safe while a training run writes the same workdir. The step's files
    are verified; a damaged one is an error naming the step, item and file (nothing is moved).

    With `which` left None and `config.eval.model` naming an exported bundle, the state holds the
    bundle's inference parameters instead (see `state_from_bundle`): `jaxlab evaluate
    --model=BUNDLE` evaluates a bundle with the task's own evaluate.
    """
    if which is None and config.eval.model:
        return state_from_bundle(config, config.eval.model, parts)
    manager = checkpoint.manager_from_config(config, workdir, read_only=True)
    which = config.eval.checkpoint if which is None else which
    step = checkpoint.select_step(manager, which, config.eval.best_metric, config.eval.best_mode)
    try:
        state = checkpoint.restore(manager, parts.abstract_state, step=step)
    except checkpoint.CorruptCheckpointError as e:
        others = [s for s in manager.all_steps() if s != step]
        raise checkpoint.CorruptCheckpointError(
            f"{e} Evaluate another step (--config.eval.checkpoint=<step>; kept: {others})."
        ) from e
    finally:
        manager.close()
    return state, step


def state_from_bundle(config: ml_collections.ConfigDict, path: str, parts: Any) -> tuple[Any, int]:
    """(state, step): a fresh state carrying the bundle's inference parameters.

    The task's `steps.inference_params(state)` (default `state.params`) says what a bundle holds
    and `steps.with_inference_params(state, params)` (default `state.replace(params=...)`) puts
    it back; the optimizer state is a fresh one (evaluation never reads it).
    """
    info = bundle.read_info(path)
    if info.get("task") != config.task:
        raise ValueError(f"{path} holds a {info.get('task')} model; the config is {config.task}.")
    steps = task_lib.import_task(config, "steps")
    get = getattr(steps, "inference_params", lambda state: state.params)
    put = getattr(steps, "with_inference_params", lambda state, p: state.replace(params=p))
    params = bundle.read_params(path, jax.eval_shape(get, parts.abstract_state))
    state = parts_lib.init_state(parts, jax.random.key(0))
    state = put(state, jax.device_put(params, jax.tree.map(lambda x: x.sharding, get(state))))
    logging.info("Evaluating bundle %s (step %d)", path, info["checkpoint_step"])
    return state, int(info["checkpoint_step"])
