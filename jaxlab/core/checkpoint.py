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

Integrity: every step directory carries `checksums.json` (size and sha256 of each file), written by
process 0 inside the step's temporary directory once all processes have written, so it is
committed by the same atomic rename as the step. `restore` verifies it first: a changed, truncated
or missing file is reported naming the step, the item and the file. `restore_latest_intact` then
moves such a step aside as `<step>.corrupt` (never deleted) and falls back to the newest intact
step. `save` refuses a state or eval metric holding NaN / Inf, so retention never drops the last
finite checkpoint for a broken one.
"""

from __future__ import annotations

import glob
import json
import logging as std_logging
import math
import os
import weakref
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from jaxlab.core import loop
from jaxlab.core.integrity import CHECKSUMS, nonfinite_leaves, verify_step, write_checksums

STATE = "state"
DATA = "data"
LOOP = "loop"
CORRUPT_SUFFIX = ".corrupt"


class CorruptCheckpointError(ValueError):
    """A checkpoint step whose files are not the ones saved; names step, item and file."""


# Orbax's replica-parallel save (its default on CPU and TPU) splits a replicated array across its
# replicas, each writing one slice; every distinct leaf shape then costs a compiled slice program
# (about 100 compiles, 7 CPU-s, on the first save of a small model on 8 CPU devices) and a
# dispatch per leaf, which only pays off for large slices. Arrays whose slice would be smaller
# than this are written whole by replica 0, as orbax does on GPU; the files hold the same values.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 4 * 2**20


def _register_array_handler() -> None:
    """StandardCheckpointHandler reads its array handler from orbax's global registry. Orbax
    logs a warning on any override of its default there; this one is deliberate, and the warning
    would open the output of every `jaxlab` command, so absl's logger is quiet for the call."""
    absl_logger = std_logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(std_logging.ERROR)
    try:
        handler = ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES
        )
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


_register_array_handler()

# Per manager: whether saves should block, and the step being saved (read by the commit callback).
_SAVING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    directory = os.path.abspath(directory)
    bad_metrics = _unreadable_metrics(directory)
    if bad_metrics and not read_only:
        for step, problem in bad_metrics.items():
            logging.error(
                "Checkpoint %s Moved it aside to %s.", problem, move_aside(directory, step)
            )
        _sync_processes("jaxlab_checkpoint_bad_metrics")
    # Saves always go through orbax's async checkpointer, whose post-finalization callback (process
    # 0, after every process has written) is where checksums.json joins the step before its
    # atomic rename; `async_save=False` only makes `save` wait for the commit.
    saving = {"async": async_save, "step": None}
    callback = None if read_only else (lambda: _write_pending_checksums(directory, saving))
    options = ocp.CheckpointManagerOptions(
        best_fn=best_fn,
        best_mode=best_mode,
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=not read_only,
        async_options=None if read_only else ocp.AsyncOptions(post_finalization_callback=callback),
        create=not read_only,
        read_only=read_only,
        # orbax reads every step's metrics file when it opens; a read-only manager cannot move a
        # damaged one aside, so it does not see that step (the reason is logged).
        step_name_format=_SkipSteps(set(bad_metrics)) if bad_metrics and read_only else None,
    )
    manager = ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={
            STATE: ocp.StandardCheckpointHandler(),
            DATA: grain.checkpoint.CheckpointHandler(),
            LOOP: ocp.JsonCheckpointHandler(),
        },
    )
    _SAVING[manager] = saving
    return manager


def _unreadable_metrics(directory: str) -> dict[int, str]:
    """{step: what is wrong} for steps whose saved eval metrics file is not a JSON object."""
    bad = {}
    if not os.path.isdir(directory):
        return bad
    for name in os.listdir(directory):
        path = os.path.join(directory, name, "metrics", "metrics")
        if not name.isdigit() or not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                ok = isinstance(json.load(f), dict)
        except (OSError, ValueError) as e:
            ok, reason = False, f"{type(e).__name__}: {e}"
        else:
            reason = "not a JSON object"
        if not ok:
            bad[int(name)] = f"step {name}: item 'metrics', file {path} is unreadable ({reason})."
            logging.warning("Checkpoint %s", bad[int(name)])
    return bad


class _SkipSteps:
    """orbax's standard step naming, hiding `steps` (used by read-only managers only)."""

    def __init__(self, steps: set[int]):
        self._steps = steps
        self._standard = ocp.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._standard.build_name(step)

    def build_metadata(self, step_path: Any, step: int | None = None) -> Any:
        return self._standard.build_metadata(step_path, step)

    def find_metadata(self, base_path: Any, step: int) -> Any:
        return None if step in self._steps else self._standard.find_metadata(base_path, step)

    def find_all(self, base_path: Any) -> Any:
        return (m for m in self._standard.find_all(base_path) if m.step not in self._steps)

    def find_step(self, base_path: Any, step: int) -> Any:
        if step in self._steps:
            raise ValueError(f"Step {step} is hidden: its metrics file is unreadable.")
        return self._standard.find_step(base_path, step)


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

    Raises:
      loop.NonFiniteError: when `state` (the state after the update) or an eval metric in
        `metrics` holds NaN / Inf. Nothing is saved, an in-flight save is finished first, and the
        latest checkpoint, which passed this same check, stays.
    """
    bad = nonfinite_leaves(state)
    bad += [f"metrics[{k!r}]" for k, v in (metrics or {}).items() if not math.isfinite(float(v))]
    if bad:
        wait(manager)
        latest = manager.latest_step()
        kept = "no checkpoint yet" if latest is None else f"checkpoint step {latest} is kept"
        raise loop.NonFiniteError(
            f"Non-finite values at step {step} in {', '.join(bad[:8])}"
            f"{' ...' if len(bad) > 8 else ''}: step not saved; the last good {kept} "
            f"({manager.directory}). Lower the learning rate, enable clipping (optim.clip_norm) "
            "or check the input."
        )
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items[DATA] = grain.checkpoint.CheckpointSave(_IteratorPosition(data_iterator))
    if loop_state is not None:
        items[LOOP] = ocp.args.JsonSave(json.loads(json.dumps(loop_state)))
    saving = _SAVING.get(manager)
    if saving is not None:
        manager.wait_until_finished()  # orbax does so too; the callback must see this step
        saving["step"] = int(step)
    manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)
    if saving is not None and not saving["async"]:
        wait(manager)


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


def _write_pending_checksums(directory: str, saving: dict[str, Any]) -> None:
    """orbax's post-finalization callback: checksums of the step in its temporary directory."""
    step = saving["step"]
    if step is None:
        return
    candidates = sorted(glob.glob(os.path.join(directory, f"{step}.orbax-checkpoint-tmp*")))
    step_dir = candidates[-1] if candidates else os.path.join(directory, str(step))
    try:
        write_checksums(step_dir)
    except OSError as e:  # the step stays restorable, just unverified
        logging.error("Could not write %s for step %d: %s", CHECKSUMS, step, e)


def _restore_step(
    manager: ocp.CheckpointManager, step: int, target: Any, data_iterator: Any
) -> tuple[Any, str]:
    """(state, verification) of `step`; CorruptCheckpointError when its files are damaged."""
    status, problem = verify_step(manager.directory, step)
    if status == "corrupt":
        raise CorruptCheckpointError(f"Checkpoint {problem}.")
    items = {STATE: ocp.args.StandardRestore(target)}
    if data_iterator is not None:
        if not os.path.isdir(os.path.join(str(manager.directory), str(step), DATA)):
            raise CorruptCheckpointError(
                f"Checkpoint step {step}: item {DATA!r} (the data iterator position) is missing "
                f"from {manager.directory}/{step}."
            )
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax raises many types; classified below
        if status == "ok":  # the files are the saved ones: this run's target does not fit them
            raise ValueError(
                f"Could not restore step {step} from {manager.directory}: {e}. The files are "
                "intact (checksums match), so the checkpoint comes from another model or "
                "optimizer config than this run's."
            ) from e
        raise CorruptCheckpointError(
            f"Checkpoint step {step} in {manager.directory} could not be read ({problem}, so "
            f"its files cannot be verified): {type(e).__name__}: {str(e)[:500]}"
        ) from e
    bad = nonfinite_leaves(restored[STATE])
    if bad:
        raise CorruptCheckpointError(
            f"Checkpoint step {step}: item {STATE!r} holds NaN / Inf in {', '.join(bad[:5])}."
        )
    return restored[STATE], status


def restore(
    manager: ocp.CheckpointManager,
    target: Any,
    data_iterator: Any = None,
    step: int | None = None,
) -> Any:
    """The state at `step` (default latest), laid out as `target` says; moves the iterator too.

    The step's files are verified against its checksums.json first; this never falls back to
    another step (see `restore_latest_intact`).

    Args:
      target: pytree of `jax.ShapeDtypeStruct` with `sharding` set (see `state.abstract_state`).
      data_iterator: a grain `DatasetIterator` built exactly as at save time; its position is set
        in place. Leave None to restore the state alone (evaluation).
    Raises:
      CorruptCheckpointError: naming the step, item and file that are damaged.
      ValueError: intact files that do not fit `target` (another model or optimizer config).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
    state, status = _restore_step(manager, step, target, data_iterator)
    logging.info(
        "Restored step %d from %s%s",
        step,
        manager.directory,
        "" if status == "ok" else " (no checksums: not verified)",
    )
    return state


def move_aside(directory: str, step: int) -> str:
    """Renames `directory/<step>` to `<step>.corrupt` (or `.corrupt.2`, ...); process 0 only."""
    source = os.path.join(str(directory), str(step))
    target = source + CORRUPT_SUFFIX
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{source}{CORRUPT_SUFFIX}.{n}"
    if jax.process_index() == 0:
        os.rename(source, target)
    return target


def restore_latest_intact(
    manager: ocp.CheckpointManager, target: Any, data_iterator: Any = None
) -> tuple[int | None, Any]:
    """(step, state) of the newest intact checkpoint, or (None, None) when there is none.

    Each damaged newer step is logged with what is wrong and moved aside as `<step>.corrupt`
    (kept for inspection, and out of retention's way). A checkpoint whose intact files do not fit
    `target` is a config error, raised, not a corruption.
    """
    moved = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, status = _restore_step(manager, step, target, data_iterator)
        except CorruptCheckpointError as e:
            aside = move_aside(manager.directory, step)
            logging.error("%s Moved it aside to %s; trying an older step.", e, aside)
            moved.append(step)
            continue
        if moved:
            _sync_processes("jaxlab_checkpoint_moved_aside")
            manager.reload()
            logging.warning(
                "Resuming from step %d, the newest intact checkpoint (steps %s were damaged).",
                step,
                moved,
            )
        logging.info(
            "Restored step %d from %s%s",
            step,
            manager.directory,
            "" if status == "ok" else " (no checksums: not verified)",
        )
        return step, state
    if moved:
        _sync_processes("jaxlab_checkpoint_moved_aside")
        manager.reload()
        logging.error(
            "No intact checkpoint in %s (damaged steps %s moved aside): starting a new run.",
            manager.directory,
            moved,
        )
    return None, None


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def restore_loop_state(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The loop state saved with `step`, or None when that step has none (an older run)."""
    if not os.path.isdir(os.path.join(str(manager.directory), str(step), LOOP)):
        return None
    restored = manager.restore(step, args=ocp.args.Composite(**{LOOP: ocp.args.JsonRestore()}))
    return dict(restored[LOOP])


def step_metrics(manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The metrics saved with `step`; None (with a warning naming the file) when unreadable."""
    try:
        return manager.metrics(step)
    except Exception as e:  # noqa: BLE001 - a damaged metrics file must not stop evaluation
        logging.warning(
            "Checkpoint step %d: its metrics file under %s/%d/metrics is unreadable (%s: %s); "
            "ignoring that step's metrics.",
            step,
            manager.directory,
            step,
            type(e).__name__,
            e,
        )
        return None


def best_step(manager: ocp.CheckpointManager, metric: str, mode: str = "min") -> int | None:
    """The kept step with the best `metric` (saved with `save(..., metrics=...)`), else None."""
    scored = []
    for step in manager.all_steps():
        metrics = step_metrics(manager, step)
        if metrics and metric in metrics:
            scored.append((float(metrics[metric]), step))
    if not scored:
        return None
    return (min if mode == "min" else max)(scored)[1]


def select_step(manager: ocp.CheckpointManager, which: str, metric: str | None, mode: str) -> int:
    """`which` is "latest", "best" (by `metric`, falling back to latest) or a step number.

    An empty checkpoint folder is one error before anything else (no "using the latest" first).
    """
    if not manager.all_steps():
        raise FileNotFoundError(f"No checkpoint in {manager.directory}.")
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


def restore_selected(
    config: Any, workdir: str, abstract_state: Any, which: str | None = None
) -> tuple[Any, int]:
    """(state, step) of the checkpoint `which` (default `config.eval.checkpoint`) in workdir.

    Read-only and lock-free: safe while a training run writes the same workdir. The step's files
    are verified; a damaged one is an error naming the step, item and file (nothing is moved).
    """
    manager = manager_from_config(config, workdir, read_only=True)
    which = config.eval.checkpoint if which is None else which
    step = select_step(manager, which, config.eval.best_metric, config.eval.best_mode)
    try:
        state = restore(manager, abstract_state, step=step)
    except CorruptCheckpointError as e:
        others = [s for s in manager.all_steps() if s != step]
        raise CorruptCheckpointError(
            f"{e} Evaluate another step (--config.eval.checkpoint=<step>; kept: {others})."
        ) from e
    finally:
        manager.close()
    return state, step


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until async saves are on disk (before exiting or reading them back)."""
    manager.wait_until_finished()
    jax.effects_barrier()
