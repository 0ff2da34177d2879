"""The plumbing every task's train.py and evaluate.py share, as small functions.

A task's `steps.build(config, mesh)` returns its `Parts` (model, optimizer, `init_fn(rng)`,
`abstract_state`, `shardings`, `num_steps`, the jitted steps). These helpers take those parts and
do the repeated work around the loop: restore-or-initialise, restore for evaluation, jit a step
with its shardings, write a log step, and set up / tear down the loop's helpers. The `for step in
...` loop itself stays written out in each task's train.py.

What a workdir guarantees (all inside these helpers, so every task gets it):
  - one training run at a time: `open_workdir` takes `workdir/.lock` (see `lock.py`);
  - the resolved config is recorded in `workdir/config.json`; resuming with a config that would
    change the trained model is an error naming the keys (`train.allow_config_change` overrides);
  - SIGTERM at any moment ends the run with exit code 0: before the loop there is nothing to
    save, inside it `loop.Preemption` checkpoints first;
  - resuming restores the newest intact checkpoint (`checkpoint.restore_latest_intact`) and
    drops metrics.jsonl records of steps after it, so each step is recorded once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import bundle, checkpoint, loop
from jaxlab.core import lock as lock_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter
from jaxlab.data import pipeline

CONFIG_FILE = "config.json"
# Config keys a resumed run may change without breaking exactness (prefixes); all others count.
HARMLESS_CONFIG_KEYS = (
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.max_to_keep",
    "train.keep_best",
    "train.async_checkpoint",
    "train.max_in_flight",
    "train.profile_start",
    "train.profile_stop",
    "train.allow_config_change",
    "eval.",
    "mesh",
    "fsdp_min_size",
)

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
        check_config(config, workdir)
    except BaseException:
        close_workdir(workdir)
        raise
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())
    return writer


def close_workdir(workdir: str) -> None:
    """Releases what `open_workdir` took: the lock and the SIGTERM handler. Idempotent."""
    opened = _OPEN.pop(os.path.abspath(workdir), None)
    if opened is None:
        return
    if opened["lock"] is not None:
        opened["lock"].release()
    signal.signal(signal.SIGTERM, opened["sigterm"] or signal.SIG_DFL)


def _sigterm_before_loop(signum: int, frame: Any) -> None:
    del frame
    logging.warning(
        "Received signal %d outside the training loop: no step was trained since the last "
        "checkpoint, so there is nothing to save (the workdir's checkpoints are unchanged). "
        "Exiting.",
        signum,
    )
    raise SystemExit(0)


def _config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The resolved config as JSON values (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def flat_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": [1]}} -> {"a.b": [1]}: values by dotted key (lists are leaves)."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flat_dict(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _has_checkpoint(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Compares `config` with `workdir/config.json`, then records it there (process 0).

    Differences in keys outside `HARMLESS_CONFIG_KEYS` (batch size, data, model, optimizer,
    dtype, seed, ...) would make a resumed run differ from an uninterrupted one: with a checkpoint
    to resume from they are one error listing the keys, unless `config.train.allow_config_change`.
    Harmless differences are logged.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    current = _config_record(config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                recorded = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path}: unreadable ({e}). It records the config this workdir was trained "
                "with; restore it or remove it to accept the current config."
            ) from e
        old, new = flat_dict(recorded), flat_dict(current)
        changed = sorted(
            k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>")
        )
        diff = {k: f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed}
        harmless = [k for k in changed if k.startswith(HARMLESS_CONFIG_KEYS)]
        breaking = [k for k in changed if k not in harmless]
        if breaking and _has_checkpoint(workdir):
            text = "; ".join(diff[k] for k in breaking)
            if not config.train.get("allow_config_change", False):
                raise ValueError(
                    f"{path}: this run's config differs from the one this workdir was trained "
                    f"with, in keys that change the trained model: {text}. Resuming would not "
                    "reproduce the uninterrupted run. Train in a new --workdir, restore these "
                    "values, or pass --config.train.allow_config_change=True to resume anyway."
                )
            logging.warning(
                "Config changed on resume (allowed by train.allow_config_change): %s", text
            )
        if harmless:
            logging.info("Config changes on resume: %s", "; ".join(diff[k] for k in harmless))
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


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


def eval_pass(
    eval_step: Callable,
    params: Any,
    source: Any,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    *extra: Any,
    keep_outputs: bool = True,
) -> tuple[Any, Any]:
    """One ordered pass over `source` with a `jit_eval_step` function; (totals, outputs) on host.

    `totals` is the step's sums added over batches (on device, read once at the end). `outputs`
    is the step's outputs concatenated over batches and cut to `len(source)` records (padding
    rows dropped), or None with `keep_outputs=False`. `extra` goes to every step call.
    """
    totals, outputs = None, []
    throttle = loop.StepThrottle()
    for local_batch, valid in pipeline.eval_batches(source, global_batch_size=batch_size):
        batch = mesh_lib.global_batch(local_batch, mesh)
        sums, out = eval_step(params, batch, mesh_lib.global_batch(valid, mesh), *extra)
        throttle(sums)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if keep_outputs:
            outputs.append(out)
    totals, outputs = jax.device_get((totals, outputs))
    if not keep_outputs:
        return totals, None
    return totals, jax.tree.map(lambda *xs: np.concatenate(xs)[: len(source)], *outputs)


def init_or_restore(
    manager: ocp.CheckpointManager,
    parts: Any,
    rng: jax.Array,
    data_iterator: Any = None,
    init_fn: Callable[[jax.Array], Any] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """(state, loop_state): the newest intact checkpoint's, or a fresh state and None.

    Damaged newer steps are logged and moved aside (`checkpoint.restore_latest_intact`). A fresh
    state is born sharded: `jax.jit(init_fn, out_shardings=parts.shardings)(rng)`. `init_fn`
    defaults to `parts.init_fn`; pass another (e.g. one loading pretrained weights) to change only
    how a *new* run starts. The data iterator's position is restored in place.
    """
    step, state = checkpoint.restore_latest_intact(manager, parts.abstract_state, data_iterator)
    if step is None:
        init = parts.init_fn if init_fn is None else init_fn
        state = jax.jit(init, out_shardings=parts.shardings)(rng)
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
    bundle's inference parameters instead (see `bundle.state_from_bundle`): `jaxlab evaluate
    --model=BUNDLE` evaluates a bundle with the task's own evaluate.
    """
    if which is None and config.eval.get("model", ""):
        return bundle.state_from_bundle(config, config.eval.model, parts)
    return checkpoint.restore_selected(config, workdir, parts.abstract_state, which)


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
                helpers.progress.close()  # a run stopped early: its bar ends where it stopped
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
    # The failing step's record too; on a terminal the bar shows these values already.
    helpers.writer.write_scalars(step, scalars, shown_on_bar=helpers.progress.live)
    loop.check_finite(step, {k: v for k, v in host.items() if k in metrics})
    return scalars
