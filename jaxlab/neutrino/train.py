"""Training of the neutrino task: what it gives `core/trainer.py` (which owns the loop).

`sources` reads the train and eval splits and packs training events into batches of
`train.global_batch_size` packs; the pack shapes come from the config (`PackSpec`), so the
iterator needs no parts. A pack holds a varying number of events, so the core's
`examples_per_sec` counts packs: `PackingWindow` keeps, host-side, the batches since the last
log step and reports their padding efficiency, truncation and `events_per_sec`. It is empty after
every log step, and every checkpoint is a log step, so it needs no loop state. Each evaluation
also logs the predicted-vs-true zenith histogram (`eval/zenith`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import trainer
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.neutrino import data, data_packing, data_pipeline, evaluate, plots, steps
from jaxlab.neutrino.metrics import vector_to_angles


def build(config: ml_collections.ConfigDict, mesh, **build_kwargs):
    """The task's parts: `steps.build` with what `sources` read from the data."""
    return steps.build(config, mesh, **build_kwargs)


class PackingWindow:
    """The host batches since the last log step: packing statistics and events per second."""

    def __init__(self):
        self._batches: list[dict[str, np.ndarray]] = []
        self._events = 0.0
        self._start = time.perf_counter()

    def model_inputs(self, host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Records the batch's packing counters; returns the model's part of it."""
        self._batches.append({k: host_batch[k] for k in data_packing.STAT_KEYS})
        self._events += float(np.sum(host_batch["event_valid"]))
        return data_packing.model_inputs(host_batch)

    def scalars(self) -> dict[str, float]:
        """The window's packing statistics and events/s; starts the next window."""
        now = time.perf_counter()
        out = dict(data_packing.packing_stats(self._batches))
        out["events_per_sec"] = self._events / max(now - self._start, 1e-9)
        self._batches, self._events, self._start = [], 0.0, now
        return out


def sources(config: ml_collections.ConfigDict, workdir: str) -> trainer.Input:
    """Packed training batches and the eval split, with the event processor."""
    root = data.prepare(config, workdir)
    train_source = data.load_split(config, root, "train")
    eval_source = data.load_split(config, root, config.eval.split)
    processor = data_packing.make_processor(config, root)
    train_iter = data_pipeline.train_iterator(
        train_source,
        processor,
        data_packing.PackSpec.from_config(config),
        packs_per_batch=config.train.global_batch_size,
        seed=config.seed,
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
        block_events=config.data.block_events,
        workers=pipeline.resolve_workers(config),  # processes for the block processing
    )
    logging.info("%d train / %d %s events", len(train_source), len(eval_source), config.eval.split)
    window = PackingWindow()
    return trainer.Input(
        train_iter=train_iter,
        eval_source=eval_source,
        model_inputs=window.model_inputs,
        log_scalars=window.scalars,
        info={"processor": processor},
    )


def evaluate_during_training(config, parts, state, inputs: trainer.Input, mesh, train_window):
    """(mean / median angular error, the per-event predictions) on the eval split."""
    del train_window  # no train-metric sums
    result = evaluate.predict_split(
        parts.eval_step,
        state.params,
        inputs.eval_source,
        inputs.info["processor"],
        parts.extras.spec,
        mesh,
        config.eval.global_batch_size,
    )
    return evaluate.scalar_metrics(result), result


def figure(config, parts, state, inputs, mesh, step: int, metrics, result: dict[str, np.ndarray]):
    """{"eval/zenith": predicted-vs-true zenith}; none for a split without labels."""
    del parts, state, inputs, mesh
    if not metrics:
        return {}
    _, zen_true = vector_to_angles(result["direction"])
    _, zen_pred = vector_to_angles(result["pred"])
    title = f"step {step}: zenith, {config.eval.split} split"
    return {"eval/zenith": figure_to_image(plots.zenith_figure(zen_true, zen_pred, title))}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    return trainer.run(config, workdir, sys.modules[__name__])
