"""A training run's workdir: one run at a time, SIGTERM before the loop, the recorded config.

What a workdir guarantees (every task gets it through `open_workdir`):
  - one training run at a time: `open_workdir` takes `workdir/.lock` (see `lock.py`);
  - the resolved config is recorded in `workdir/config.json`; resuming with a config that would
    change the trained model is an error naming the keys (`train.allow_config_change` overrides);
  - SIGTERM at any moment ends the run with exit code 0: before the loop there is nothing to
    save, inside it `loop.Preemption` checkpoints first.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxlab.core import config as config_lib
from jaxlab.core import lock as lock_lib
from jaxlab.core import loop
from jaxlab.core.writer import MetricWriter

# workdir (absolute) -> {"lock": WorkdirLock | None, "sigterm": previous handler}
_OPEN: dict[str, dict[str, Any]] = {}


def open_workdir(config: ml_collections.ConfigDict, workdir: str) -> MetricWriter:
    """Opens `workdir` for a training run: its lock, the recorded config, the metric writer.

    The first line of every task's `train_and_evaluate`. In order: a SIGTERM handler that ends
    the run cleanly until the loop's own takes over; the workdir lock (process 0); the config
    check against `workdir/config.json` and its rewrite; the writer and hparams.json. Leaving
    `loop_helpers` (or process exit) releases the lock.

    Raises:
      lock_lib.WorkdirLockedError: another run trains in this workdir.
      ValueError: the config differs from the recorded one in keys that change the model.
    """
    key = os.path.abspath(workdir)
    if key not in _OPEN:
        previous = signal.signal(signal.SIGTERM, _sigterm_before_loop)
        _OPEN[key] = {"lock": None, "sigterm": previous}
    try:
        if jax.process_index() == 0 and _OPEN[key]["lock"] is None:
            _OPEN[key]["lock"] = lock_lib.acquire(workdir)
        config_lib.check_resume(config, workdir)
    except BaseException:
        close_workdir(workdir)
        raise
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())
    return writer


@contextlib.contextmanager
def opened(config: ml_collections.ConfigDict, workdir: str) -> Iterator[MetricWriter]:
    """`open_workdir` for the `with` block: the lock, SIGTERM handler and writer are released
    (and the previous SIGTERM handler restored) when it ends, on every path."""
    writer = open_workdir(config, workdir)
    try:
        yield writer
    finally:
        writer.close()
        close_workdir(workdir)


def close_workdir(workdir: str) -> None:
    """Releases what `open_workdir` took: the lock and the SIGTERM handler. Idempotent."""
    opened = _OPEN.pop(os.path.abspath(workdir), None)
    if opened is None:
        return
    if opened["lock"] is not None:
        opened["lock"].release()
    signal.signal(signal.SIGTERM, opened["sigterm"] or signal.SIG_DFL)


def _in_gc_callback(frame: Any) -> bool:
    """Whether `frame` runs inside a garbage-collection callback (jax registers one)."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _sigterm_before_loop(signum: int, frame: Any) -> None:
    if _in_gc_callback(frame):  # SystemExit would be printed and ignored there: the loop exits
        loop.SIGNALLED_BEFORE_LOOP.append(signum)
        return
    logging.warning(
        "Received signal %d outside the training loop: no step was trained since the last "
        "checkpoint, so there is nothing to save (the workdir's checkpoints are unchanged). "
        "Exiting.",
        signum,
    )
    raise SystemExit(0)
