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
import json
import os
import signal
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxlab.core import lock as lock_lib
from jaxlab.core.writer import MetricWriter

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
    # Early-stopping keys before they moved to eval.* (they decide when to stop, not the steps).
    "train.patience",
    "train.early_stopping_patience",
    "train.early_stopping_min_delta",
    "train.eval_every_epochs",
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
