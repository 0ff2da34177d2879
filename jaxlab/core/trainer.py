"""The one training loop, `run(config, workdir, task)`, and the helpers it is built from.

A task is a set of functions, not a subclass. `run` takes the task's train module and calls:

  sources(config, workdir) -> Input       the data: train iterator, eval source, build arguments
  build(config, mesh, **input.build_kwargs) -> parts.Parts
  evaluate_during_training(config, parts, state, input, mesh, train_window) -> (metrics, outputs)
  figure(config, parts, state, input, mesh, step, metrics, outputs) -> {tag: image} (all hosts)
  init_fn(config, parts) -> Callable[[rng], state] | None  (optional: a *new* run's state,
                                    e.g. with pretrained weights; called as is, not traced)

and owns the order, in big_vision's stages: workdir (lock, SIGTERM, recorded config, one `with`),
mesh, input, parts, state (newest intact checkpoint with its loop state, or new), loop: step,
log, evaluate, figure, checkpoint, early stop, preempt. docs/task_contract.md says it in full.

Cadence comes from `config.train`: `log_every`, `eval_every` / `ckpt_every` in steps, or
`eval_every_epochs` in epochs for a task whose `Parts.steps_per_epoch` is set. Early stopping and
the best checkpoint use one block, `config.eval`: `best_metric`, `best_mode`,
`early_stopping_patience` (evaluations; 0 never stops) and `early_stopping_min_delta`. The
early-stopping state is the checkpoint's loop state, committed with the train state and the data
iterator's position, so a resumed run stops at exactly the evaluation an uninterrupted one does.

`loop_helpers` and `log_train_step` are the pieces a task with its own loop (sales) reuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import checkpoint, early_stopping, loop, restore, rng
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import MetricWriter


@dataclasses.dataclass
class LoopHelpers:
    """What the loop asks each step: progress, profiler window, throttle, SIGTERM flag."""

    writer: MetricWriter
    manager: ocp.CheckpointManager
    progress: loop.Progress
    profile: loop.ProfileWindow
    throttle: loop.StepThrottle
    preemption: loop.Preemption


@contextlib.contextmanager
def loop_helpers(
    config: ml_collections.ConfigDict,
    workdir: str,
    manager: ocp.CheckpointManager,
    writer: MetricWriter,
    start_step: int,
    num_steps: int,
    examples_per_step: int,
) -> Iterator[LoopHelpers]:
    """Builds the loop's helpers; on exit waits for checkpoint saves and closes manager, writer.

    On entry, metrics.jsonl loses the records of steps after `start_step` (written by a run killed
    after its last checkpoint). The SIGTERM flag handler is installed for the `with` block only
    (the workdir, its lock and its own handler belong to the caller's `workdir.opened` block).
    """
    tc = config.train
    writer.truncate_after(start_step)  # records of steps the restored state has not trained
    with loop.Preemption() as preemption:
        helpers = LoopHelpers(
            writer=writer,
            manager=manager,
            progress=loop.Progress(num_steps, examples_per_step, start_step),
            profile=loop.ProfileWindow(
                tc.profile_start, tc.profile_stop, os.path.join(workdir, "tb")
            ),
            throttle=loop.StepThrottle(tc.max_in_flight),
            preemption=preemption,
        )
        try:
            yield helpers
        finally:
            helpers.progress.close()  # a run stopped early: its bar ends where it stopped
            _finish(manager, writer)


def _finish(manager: ocp.CheckpointManager, writer: MetricWriter) -> None:
    """Waits for an in-flight save (also on the error path), then closes manager and writer."""
    try:
        checkpoint.wait(manager)
        manager.close()
    except Exception:  # noqa: BLE001 - do not hide the loop's own error behind this one
        logging.exception("Waiting for the last checkpoint save failed.")
        raise
    finally:
        writer.close()


def log_train_step(
    helpers: LoopHelpers,
    step: int,
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Reads the step's metrics to the host, stops on NaN / Inf, reports progress, writes them.

    The only host sync of a log step. `extra` holds further host or device scalars (the learning
    rate, packing statistics) written with the metrics. Returns what was written.
    """
    metrics = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}  # sums (confusion) aside
    host = jax.device_get({**metrics, **(extra or {})})
    scalars = {k: float(v) for k, v in host.items()}
    scalars.update(helpers.progress.report(step, scalars))
    # The failing step's record too; on a terminal the bar shows these values already.
    helpers.writer.write_scalars(step, scalars, shown_on_bar=helpers.progress.live)
    loop.check_finite(step, {k: v for k, v in host.items() if k in metrics})
    return scalars


@dataclasses.dataclass
class Input:
    """What a task's `sources(config, workdir)` returns."""

    train_iter: Any  # grain iterator of host batches; its position is checkpointed
    eval_source: Any  # what `evaluate_during_training` reads
    build_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # from the data
    # host batch -> the model's inputs (default: the batch as is)
    model_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # extra host scalars for each log step, measured since the previous one (e.g. packing)
    log_scalars: Callable[[], dict[str, float]] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # for the task's figures
    # train metrics summed on device from one evaluation to the next (e.g. an epoch's confusion
    # matrix); `evaluate_during_training` gets them, and they are part of the loop state
    window_keys: tuple[str, ...] = ()


class TrainWindow:
    """Sums of some train metrics since the last evaluation, on device; JSON for checkpoints."""

    def __init__(self, keys: tuple[str, ...], saved: dict[str, Any] | None = None):
        self.keys = keys
        self.steps = 0
        self.sums: dict[str, jax.Array] | None = None
        if saved is not None:
            self.steps = int(saved["steps"])
            if saved["sums"] is not None:
                self.sums = {
                    k: jnp.asarray(v["value"], v["dtype"]) for k, v in saved["sums"].items()
                }

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        if not self.keys:
            return
        new = {k: metrics[k] for k in self.keys}
        self.sums = new if self.sums is None else _add_trees(self.sums, new)
        self.steps += 1

    def read(self) -> dict[str, Any]:
        """{"steps": n, key: host sum, ...}; then starts a new window."""
        out = {"steps": self.steps, **jax.device_get(self.sums or {})}
        self.steps, self.sums = 0, None
        return out

    def to_json(self) -> dict[str, Any]:
        sums = None
        if self.sums is not None:
            host = jax.device_get(self.sums)
            sums = {
                k: {"value": np.asarray(v).tolist(), "dtype": str(v.dtype)} for k, v in host.items()
            }
        return {"steps": self.steps, "sums": sums}


@jax.jit
def _add_trees(a: Any, b: Any) -> Any:
    return jax.tree.map(jnp.add, a, b)


def eval_every(config: ml_collections.ConfigDict, parts: Any) -> int:
    """Steps between evaluations: `train.eval_every_epochs` epochs when the task counts epochs
    and sets it, else `train.eval_every` steps."""
    epochs = config.train.eval_every_epochs
    if epochs and parts.steps_per_epoch:
        return epochs * parts.steps_per_epoch
    return config.train.eval_every


def restored_loop_state(saved: dict[str, Any] | None, start_step: int) -> dict[str, Any]:
    """The loop state of the restored checkpoint; a fresh one for a new run.

    A checkpoint without one (written before the loop state moved into the checkpoint) restarts
    the early-stopping count, with a warning.
    """
    if saved is not None and "early_stopping" in saved:
        return {"early_stopping": dict(saved["early_stopping"]), **saved}
    if start_step > 0:
        logging.warning(
            "The checkpoint of step %d holds no loop state (an older run): early stopping and "
            "the train-metric sums since the last evaluation start afresh.",
            start_step,
        )
    return {"early_stopping": early_stopping.init()}


def run(config: ml_collections.ConfigDict, workdir: str, task: Any) -> dict[str, float]:
    """Trains `task` to its last step (or early stop, or SIGTERM), resuming from `workdir`.

    Returns the last evaluation's metrics (none when this call trained no step) with "step"
    (the state's last step; and "epoch", its epoch, for a task counting epochs), "stopped_at"
    (the step early stopping ended the run, or -1) and "best" (the best `eval.best_metric` so
    far, or NaN).
    """
    tc, ec = config.train, config.eval
    # Workdir: the lock, SIGTERM before the loop, the recorded config; released on leaving.
    with workdir_lib.opened(config, workdir) as writer:
        # Mesh.
        mesh = mesh_lib.make_mesh(config.mesh)
        mesh_lib.log_topology(mesh)

        # Input.
        data = task.sources(config, workdir)
        model_inputs = data.model_inputs or (lambda batch: batch)

        # Parts.
        parts = task.build(config, mesh, **data.build_kwargs)

        # State: the newest intact checkpoint (with the iterator position and loop state), or
        # a new one (the task's `init_fn`, e.g. pretrained weights, else `parts.init_fn`).
        manager = checkpoint.manager_from_config(config, workdir)
        new_state = task.init_fn(config, parts) if hasattr(task, "init_fn") else None
        state, saved = restore.init_or_restore(
            manager, parts, rng.stream(config.seed, "init"), data.train_iter, new_state
        )
        start_step = int(state.step)
        loop_state = restored_loop_state(saved, start_step)
        es = loop_state["early_stopping"]
        window = TrainWindow(data.window_keys, loop_state.get("train_window"))

        # Loop.
        every_eval = eval_every(config, parts)
        end_step = parts.num_steps
        if early_stopping.should_stop(es):
            logging.info("Early stopping already triggered at step %d.", es["stopped_at"])
            end_step = start_step
        eval_metrics: dict[str, float] = {}
        with loop_helpers(
            config, workdir, manager, writer, start_step, parts.num_steps, tc.global_batch_size
        ) as h:
            for step in range(start_step + 1, end_step + 1):
                h.profile.step(step, state)
                # Host-to-device prefetch is this loop's own order: dispatch is asynchronous and
                # up to `train.max_in_flight` (2) steps run on the device while the host reads
                # this batch (grain threads, or `data.workers` processes, fill it ahead) and starts
                # its copy. No batch is drawn ahead of its step, so the checkpointed iterator
                # position is exactly the next step's.
                batch = mesh_lib.global_batch(model_inputs(next(data.train_iter)), mesh)
                state, metrics = parts.train_step(state, batch)
                h.throttle(metrics["loss"])
                window.add(metrics)

                preempted = h.preemption.requested(step)
                last = step == parts.num_steps
                evaluate_now = loop.every(step, every_eval) or last
                save = loop.every(step, tc.ckpt_every) or evaluate_now or preempted
                if loop.every(step, tc.log_every) or save:
                    extra = data.log_scalars() if data.log_scalars else {}
                    log_train_step(h, step, metrics, extra)
                if evaluate_now:
                    eval_metrics, outputs = task.evaluate_during_training(
                        config, parts, state, data, mesh, window.read()
                    )
                    if parts.steps_per_epoch:  # the epoch just finished (the last may be partial)
                        eval_metrics = {"epoch": -(-step // parts.steps_per_epoch), **eval_metrics}
                    writer.write_scalars(step, eval_metrics)
                    images = task.figure(
                        config, parts, state, data, mesh, step, eval_metrics, outputs
                    )
                    if writer.enabled and images:
                        writer.write_images(step, images)
                    if ec.best_metric and ec.best_metric in eval_metrics:
                        es = early_stopping.update(
                            es,
                            eval_metrics[ec.best_metric],
                            step,
                            patience=ec.early_stopping_patience,
                            mode=ec.best_mode,
                            min_delta=ec.early_stopping_min_delta,
                        )
                if save:
                    checkpoint.save(
                        manager,
                        step,
                        state,
                        data.train_iter,
                        metrics=eval_metrics if evaluate_now else None,
                        loop_state={"early_stopping": es, "train_window": window.to_json()},
                    )
                if preempted:
                    loop.log_preempted(step)
                    break
                if early_stopping.should_stop(es):
                    logging.info(
                        "Early stopping at step %d: %s has not improved on %.6g (step %s) for "
                        "%d evaluations.",
                        step,
                        ec.best_metric,
                        es["best"],
                        es["best_at"],
                        ec.early_stopping_patience,
                    )
                    break
        close = getattr(data.train_iter, "close", None)
        if callable(close):  # worker processes (data.workers) stop now, not at garbage collection
            close()
    best = float("nan") if es["best"] is None else float(es["best"])
    stopped = -1 if es["stopped_at"] is None else int(es["stopped_at"])
    summary = {**eval_metrics, "step": int(state.step), "stopped_at": stopped, "best": best}
    if parts.steps_per_epoch:
        summary["epoch"] = -(-summary["step"] // parts.steps_per_epoch)
    return summary
