"""The training loop's helpers: progress, profiler, throttle, SIGTERM flag, log step.

`loop_helpers` sets them up around a loop and tears them down (waits for the last checkpoint
save, closes the manager and writer, releases the workdir). On entry metrics.jsonl drops the
records of steps after the restored one, so each step is recorded once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import checkpoint, loop
from jaxlab.core.workdir import close_workdir
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
    after its last checkpoint). The SIGTERM flag handler is installed for the `with` block only;
    on exit the workdir lock is released and the SIGTERM handler from before `open_workdir` is
    back.
    """
    tc = config.train
    writer.truncate_after(start_step)  # records of steps the restored state has not trained
    try:
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
                _finish(manager, writer)
    finally:
        close_workdir(workdir)


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
    host = jax.device_get({**metrics, **(extra or {})})
    scalars = {k: float(v) for k, v in host.items()}
    scalars.update(helpers.progress.report(step, scalars))
    helpers.writer.write_scalars(step, scalars)  # the failing step's record too
    loop.check_finite(step, {k: v for k, v in host.items() if k in metrics})
    return scalars
