"""Small helpers for the explicit train loops: cadence, progress, NaN guard, preemption, profiling.

Each task's `train.py` owns its `for step in range(...)` loop; these functions only answer
questions the loop asks ("log now?", "was SIGTERM received?", "is this loss finite?").
"""

from __future__ import annotations

import collections
import logging as py_logging
import math
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging

from jaxlab.core import console

T = TypeVar("T")


def every(step: int, n: int | None) -> bool:
    """True on multiples of `n` (never when n is 0/None). `step` counts steps done, from 1."""
    return bool(n) and n > 0 and step % n == 0


class StepThrottle:
    """Bounds how many dispatched steps may be unfinished at once (default 2).

    JAX dispatches asynchronously, so a loop without host syncs can queue hundreds of steps. That
    holds every queued step's input buffers, and with several CPU devices in one process XLA's
    in-process collectives deadlock once a few dozen multi-device programs are queued (seen with
    jax 0.10 and 8 fake devices). Waiting for step N-2 before dispatching step N is not a host
    transfer and still overlaps the next step's input work with the device computation.
    """

    def __init__(self, max_in_flight: int = 2):
        self.max_in_flight = max(1, int(max_in_flight))
        self._pending: collections.deque = collections.deque()

    def __call__(self, step_output: Any) -> None:
        """Registers a just-dispatched step's output (any small array of it, e.g. the loss)."""
        self._pending.append(step_output)
        while len(self._pending) > self.max_in_flight:
            jax.block_until_ready(self._pending.popleft())


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf; the message names the step and the metric."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
    """Raises NonFiniteError naming the step and every non-finite metric (host values)."""
    bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        names = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise NonFiniteError(
            f"Non-finite metric at step {step}: {names}. Stopping; the last good checkpoint is "
            "kept. Lower the learning rate, enable clipping (optim.clip_norm) or check the input."
        )


def log_preempted(step: int) -> None:
    logging.warning("Preempted: checkpointed step %d, exiting.", step)


class Progress:
    """Step / total, the step's metrics, steps/s, examples/s and ETA: on a terminal one live bar
    (`console.open_bar`; log lines print above it), otherwise a log line per report.

    Call `report(step, scalars)` at log time only (it reads host values); it returns the rates so
    the caller can write them with the other metrics. Timing starts at the first report: the
    steps before it include compilation (and restoring), which would make the first rates and
    the ETA wrong, so the first report returns no rates ({}) and later ones measure from it.
    `live` says whether the reports go to a bar (the writer then keeps its copy of the step's
    metrics off the screen); `close()` ends the bar early (a run stopped before its last step).
    """

    def __init__(self, total_steps: int, global_batch_size: int, start_step: int = 0):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step: int | None = None  # set by the first report
        self._last_time = 0.0
        self._bar = None
        if _is_live():
            self._bar = console.open_bar(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            )
        self.live = self._bar is not None

    def report(self, step: int, scalars: Mapping[str, Any] | None = None) -> dict[str, float]:
        now = time.perf_counter()
        rates: dict[str, float] = {}
        if self._last_step is not None and step > self._last_step:
            steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
            rates = {
                "steps_per_sec": steps_per_sec,
                "examples_per_sec": steps_per_sec * self.global_batch_size,
            }
        self._last_step, self._last_time = step, now
        steps_per_sec = rates.get("steps_per_sec", 0.0)
        eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
        loss = (scalars or {}).get("loss")
        parts = [f"loss {float(loss):.4g}"] if loss is not None else []
        if rates:
            parts += [f"{steps_per_sec:.2f} steps/s", f"{rates['examples_per_sec']:.1f} ex/s"]
        parts.append(f"ETA {format_seconds(eta)}")
        if self._bar is not None:
            # The bar is the step's only copy on screen: all its metrics, after the rates and
            # ETA (a narrow terminal cuts the end of the line). The bar stays open after the
            # last step (its evaluation logs above it) until `close()`.
            parts += [f"{k} {float(v):.4g}" for k, v in (scalars or {}).items() if k != "loss"]
            self._bar.set_postfix_str(" | ".join(parts), refresh=False)
            self._bar.n = step
            self._bar.refresh()
        elif not self.live:
            percent = 100.0 * step / max(self.total_steps, 1)
            logging.info(
                "step %d/%d (%.0f%%) | %s", step, self.total_steps, percent, " | ".join(parts)
            )
        return rates

    def close(self) -> None:
        """Ends the bar (it stays on screen as it was); a no-op off a terminal or when done."""
        if self._bar is not None:
            console.close_bar(self._bar)
            self._bar = None


def _is_live() -> bool:
    """A live bar only for a person watching: stderr is a terminal, and on process 0 only."""
    return console.is_live()


def progress_bar(
    iterable: Iterable[T], total: int | None = None, desc: str = "", log_every_s: float = 30.0
) -> Iterator[T]:
    """Yields `iterable`'s items, showing progress: tqdm on a tty, else a log line every
    `log_every_s` seconds and at the end. For long evaluations and data conversions.

    `total` defaults to `len(iterable)` when it has one.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if _is_live():
        bar = console.open_bar(total=total, desc=desc)
        try:
            for item in iterable:
                yield item
                bar.update(1)
        finally:
            console.close_bar(bar)
        return
    start = last = time.perf_counter()
    count = 0
    for item in iterable:
        yield item
        count += 1
        now = time.perf_counter()
        if now - last >= log_every_s:
            last = now
            _log_progress(desc, count, total, now - start)
    _log_progress(desc, count, total, time.perf_counter() - start)


def _log_progress(desc: str, count: int, total: int | None, elapsed: float) -> None:
    rate = count / max(elapsed, 1e-9)
    if total:
        eta = (total - count) / rate if rate > 0 else float("inf")
        logging.info(
            "%s %d/%d (%.0f%%) | %.2f it/s | ETA %s",
            desc,
            count,
            total,
            100.0 * count / total,
            rate,
            format_seconds(eta),
        )
    else:
        logging.info("%s %d | %.2f it/s", desc, count, rate)


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# Signals that `workdir`'s before-the-loop handler could not act on: it ran inside a garbage-
# collection callback, where Python prints and ignores a raised SystemExit. The loop exits on
# entry instead (`Preemption.__enter__`), before training a step.
SIGNALLED_BEFORE_LOOP: list[int] = []


class Preemption:
    """Catches SIGTERM (the preemption notice of cloud VMs and SLURM) so the loop can checkpoint.

    Use as a context manager around the loop; `requested(step)` is cheap. With several processes
    the flag is agreed across processes (any process signalled -> all stop at the same step), but
    only every `sync_every` steps, since agreeing costs a host collective.
    """

    def __init__(self, sync_every: int = 10):
        self.sync_every = sync_every
        self._flag = False
        self._previous = None

    def __enter__(self) -> Preemption:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        if SIGNALLED_BEFORE_LOOP:
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
            logging.warning(
                "Received signal %d before the training loop: nothing to save (the workdir's "
                "checkpoints are unchanged). Exiting.",
                SIGNALLED_BEFORE_LOOP[0],
            )
            raise SystemExit(0)
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Received signal %d: will checkpoint and exit.", signum)
        self._flag = True

    def requested(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self._flag
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))


class ProfileWindow:
    """A `jax.profiler` trace of steps [start, stop) into `logdir` (TensorBoard / Perfetto)."""

    def __init__(self, start: int, stop: int, logdir: str):
        self.start, self.stop, self.logdir = start, stop, logdir
        self._active = False

    def step(self, step: int, sync: Any = None) -> None:
        """Call once per step with the step about to run; `sync` is blocked on before stopping."""
        if self.stop <= self.start:
            return
        if step == self.start and not self._active:
            jax.profiler.start_trace(self.logdir)
            self._active = True
        elif step == self.stop and self._active:
            if sync is not None:
                jax.block_until_ready(sync)
            jax.profiler.stop_trace()
            self._active = False
            logging.info("Profile of steps [%d, %d) in %s", self.start, self.stop, self.logdir)


class _DropLibraryInfo(py_logging.Filter):
    """Drops the INFO records orbax and grain log on every save and restore, and their warnings
    about things we do on purpose (saves without eval metrics, read-only restores)."""

    BENIGN = ("did not provide metrics", "read_only=True", "read only")

    def filter(self, record: py_logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname and "/grain/" not in record.pathname:
            return True
        if record.levelno <= py_logging.INFO:
            return False
        return record.levelno > py_logging.WARNING or not any(
            text in str(record.msg) for text in self.BENIGN
        )


def quiet_library_logs() -> None:
    """Keeps the binaries' logs readable: our progress lines, library warnings and errors."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())
