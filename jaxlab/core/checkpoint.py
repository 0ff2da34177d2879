"""Checkpoints: the train state, the grain iterator state and the loop state, saved as one step.

A step directory holds up to three items: `state` (the `TrainState` pytree, each process writing
its own shards), `data` (one small JSON per process with its grain iterator position) and `loop`
(a JSON dict of the loop's host-side state: early stopping, epoch accumulators). Saving them in one
`CheckpointManager.save` call makes them a consistent set that orbax commits atomically, so a
resumed run sees exactly the batches, and takes exactly the decisions, of the uninterrupted run
(kauldron's rule: the loop advances the iterator only after the save).

Retention: the latest `max_to_keep` steps, plus the best `keep_best` by an eval metric when one is
named. Restore takes an abstract target whose leaves carry the *current* mesh's shardings, which is
how a checkpoint written on 8 devices is read on 1 (or the other way round).
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

STATE = "state"
DATA = "data"
LOOP = "loop"


def make_manager(
    directory: str,
    *,
    max_to_keep: int = 3,
    best_metric: str | None = None,
    best_mode: str = "min",
    keep_best: int = 1,
    async_save: bool = True,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """A manager for `directory` (created if missing) keeping latest N plus best-by-metric."""
    if best_mode not in ("min", "max"):
        raise ValueError(f"checkpoint best_mode must be 'min' or 'max', got {best_mode!r}.")
    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric:
        # best_fn only makes orbax write the metrics next to each step; retention is the policy.
        best_fn = lambda metrics: float(metrics[best_metric])  # noqa: E731
        sign = 1.0 if best_mode == "max" else -1.0
        policies.append(
            checkpoint_managers.BestN(
                get_metric_fn=lambda metrics: sign * float(metrics[best_metric]),
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=options,
        item_handlers={
            STATE: ocp.StandardCheckpointHandler(),
            DATA: grain.checkpoint.CheckpointHandler(),
            LOOP: ocp.JsonCheckpointHandler(),
        },
    )


def manager_from_config(
    config: Any, workdir: str, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The manager of `workdir/checkpoints` with the retention and async settings of `config`."""
    if read_only:
        return make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    return make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.max_to_keep,
        best_metric=config.eval.best_metric or None,
        best_mode=config.eval.best_mode,
        keep_best=config.train.keep_best,
        async_save=config.train.async_checkpoint,
    )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Any = None,
    metrics: dict[str, float] | None = None,
    loop_state: dict[str, Any] | None = None,
) -> None:
    """Saves state (and the iterator position and loop state, if given) as `step`.

    Async where enabled. The iterator's position and the loop state are copied here,
    synchronously, so the loop may move on (and mutate its own dicts) at once. `loop_state` must
    be JSON-serialisable (plain floats, ints, lists, dicts, None).
    """
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(_IteratorPosition(data_iterator))
    if loop_state is not None:
        items[LOOP] = ocp.args.JsonSave(json.loads(json.dumps(loop_state)))
    manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)


class _IteratorPosition:
    """The iterator's position frozen now, in the form grain's checkpoint handler writes.

    An async save may write it after the loop has already drawn the next batch; the frozen copy
    keeps the saved position equal to the step being saved.
    """

    def __init__(self, iterator: Any):
        state = iterator.get_state()
        self._state = state if isinstance(state, bytes) else json.dumps(state).encode()

    def get_state(self) -> bytes:
        return self._state


def restore(
    manager: ocp.CheckpointManager,
    target: Any,
    data_iterator: Any = None,
    step: int | None = None,
) -> Any:
    """The state at `step` (default latest), laid out as `target` says; moves the iterator too.

    Args:
      target: pytree of `jax.ShapeDtypeStruct` with `sharding` set (see `state.abstract_state`).
      data_iterator: a grain `DatasetIterator` built exactly as at save time; its position is set
        in place. Leave None to restore the state alone (evaluation).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    items = {STATE: ocp.args.StandardRestore(target)}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ValueError(
            f"Could not restore step {step} from {manager.directory}: {e}. The checkpoint must "
            "come from the same model and optimizer config as this run."
        ) from e
    logging.info("Restored step %d from %s", step, manager.directory)
    return restored[STATE]


def restore_or_init(
    manager: ocp.CheckpointManager,
    target: Any,
    init_fn: Any,
    data_iterator: Any = None,
) -> Any:
    """Resumes from the latest checkpoint when there is one, else returns `init_fn()`."""
    if manager.latest_step() is None:
        return init_fn()
    return restore(manager, target, data_iterator)


def restore_loop_state(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The loop state saved with `step`, or None when that step has none (an older run)."""
    if not os.path.isdir(os.path.join(str(manager.directory), str(step), LOOP)):
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{LOOP: ocp.args.JsonRestore()}))
    return dict(restored[LOOP])


def best_step(manager: ocp.CheckpointManager, metric: str, mode: str = "min") -> int | None:
    """The kept step with the best `metric` (saved with `save(..., metrics=...)`), else None."""
    scored = []
    for step in manager.all_steps():
        metrics = manager.metrics(step)
        if metrics and metric in metrics:
            scored.append((float(metrics[metric]), step))
    if not scored:
        return None
    return (min if mode == "min" else max)(scored)[1]


def select_step(manager: ocp.CheckpointManager, which: str, metric: str | None, mode: str) -> int:
    """`which` is "latest", "best" (by `metric`, falling back to latest) or a step number."""
    if which == "latest":
        step = manager.latest_step()
    elif which == "best":
        step = best_step(manager, metric, mode) if metric else None
        if step is None:
            logging.warning("No checkpoint with metric %r; using the latest.", metric)
            step = manager.latest_step()
    elif str(which).isdigit():
        step = int(which)
        if step not in manager.all_steps():
            raise ValueError(
                f"Checkpoint step {step} is not in {manager.directory}; "
                f"available: {list(manager.all_steps())}."
            )
    else:
        raise ValueError(f"checkpoint to restore must be 'latest', 'best' or a step, got {which!r}")
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    return step


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until async saves are on disk (before exiting or reading them back)."""
    manager.wait_until_finished()
    jax.effects_barrier()
