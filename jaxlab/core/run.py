"""The plumbing every task's train.py and evaluate.py share, as small functions.

A task's `steps.build(config, mesh)` returns its `Parts` (model, optimizer, `init_fn(rng)`,
`abstract_state`, `shardings`, `num_steps`, the jitted steps). These helpers take those parts and
do the repeated work around the loop: restore-or-initialise, restore for evaluation, jit a step
with its shardings, write a log step, and set up / tear down the loop's helpers. The `for step in
...` loop itself stays written out in each task's train.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import checkpoint, loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter


def open_workdir(config: ml_collections.ConfigDict, workdir: str) -> MetricWriter:
    """Opens `workdir` for a training run: its metric writer, with the config recorded.

    The first line of every task's `train_and_evaluate`. Closing the writer (done by
    `loop_helpers` on exit) ends the run's hold on the workdir.
    """
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())
    return writer


def jit_train_step(step_fn: Callable, shardings: Any, mesh: jax.sharding.Mesh) -> Callable:
    """`step_fn(state, batch) -> (state, metrics)` jitted once; the state's buffers are donated.

    The state keeps `shardings`, the batch is split on the mesh's batch axes and the metrics
    come back replicated (scalars).
    """
    return jax.jit(
        step_fn,
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(step_fn: Callable, mesh: jax.sharding.Mesh, num_extra_args: int = 0) -> Callable:
    """`step_fn(params, batch, valid, *extra) -> (sums, outputs)` jitted once for `mesh`.

    Params and any extra arguments are replicated, the batch and its `valid` mask [B] are split
    on the batch axes; sums and outputs come back replicated.
    """
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(replicated, mesh_lib.data_sharding(mesh), None)
        + (replicated,) * num_extra_args,
        out_shardings=(replicated, replicated),
    )


def init_or_restore(
    manager: ocp.CheckpointManager,
    parts: Any,
    rng: jax.Array,
    data_iterator: Any = None,
    init_fn: Callable[[jax.Array], Any] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """(state, loop_state): the latest checkpoint's, or a fresh state and None.

    A fresh state is born sharded: `jax.jit(init_fn, out_shardings=parts.shardings)(rng)`.
    `init_fn` defaults to `parts.init_fn`; pass another (e.g. one loading pretrained weights) to
    change only how a *new* run starts. The data iterator's position is restored in place.
    """
    step = manager.latest_step()
    if step is None:
        init = parts.init_fn if init_fn is None else init_fn
        state = jax.jit(init, out_shardings=parts.shardings)(rng)
        logging.info("New run: %d parameters", state_lib.param_count(state.params))
        return state, None
    state = checkpoint.restore(manager, parts.abstract_state, data_iterator, step=step)
    return state, checkpoint.restore_loop_state(manager, step)


def restore_for_eval(
    config: ml_collections.ConfigDict, workdir: str, parts: Any, which: str | None = None
) -> tuple[Any, int]:
    """(state, step) of the checkpoint `which` (default `config.eval.checkpoint`) in workdir.

    Read-only: safe while a training run writes the same workdir.
    """
    manager = checkpoint.manager_from_config(config, workdir, read_only=True)
    which = config.eval.checkpoint if which is None else which
    step = checkpoint.select_step(manager, which, config.eval.best_metric, config.eval.best_mode)
    state = checkpoint.restore(manager, parts.abstract_state, step=step)
    manager.close()
    return state, step


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

    The SIGTERM handler is installed for the `with` block only.
    """
    tc = config.train
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
            checkpoint.wait(manager)
            manager.close()
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
    host = jax.device_get({**metrics, **(extra or {})})
    loop.check_finite(step, {k: v for k, v in host.items() if k in metrics})
    scalars = {k: float(v) for k, v in host.items()}
    scalars.update(helpers.progress.report(step, scalars))
    helpers.writer.write_scalars(step, scalars)
    return scalars
