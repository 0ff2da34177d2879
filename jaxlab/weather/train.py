"""Training of the conditional diffusion forecaster: what it gives `core/trainer.py`.

`sources` converts GRIB2 to Zarr (synthetic when configured), pairs states at the configured
leads, crops them at random and measures the residual scale of the training pairs (which `build`
puts into a *new* state; a resumed one has its own, in the checkpoint). With `data.resident`
(`data_resident.py`) the training states are loaded onto the devices once and the host sends
only index rows; the step's inputs are bit for bit the streamed path's. The EMA of the params is
updated inside the step (steps.py); the evaluation inside the loop scores the EMA params, the
ones ensembles are drawn with, and its figure shows members sampled with them.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import rng, trainer
from jaxlab.core import writer as writer_lib
from jaxlab.data import pipeline
from jaxlab.weather import data, data_resident, ensemble, evaluate, plots, steps


def members_image(step_fn, state, source, config, step: int) -> dict[str, np.ndarray]:
    """{"eval/members": image}: REFC of the first held-out case's next state and of members
    sampled with the EMA params (a fixed key, so images of successive evaluations compare)."""
    lead = int(config.data.leads[0])
    i = evaluate.case_indices(source, lead, 1, 1)[0]
    hour = float(data.hour_of_day(source.times[i]))
    members = ensemble.rollout(
        step_fn,
        state.extra["ema"],
        jnp.asarray(source.state(i)),
        lead,
        hour,
        rng.stream(config.seed, "train_figure"),
        int(config.eval.train_figure_members),
        1,
        data.residual_scale(state.extra),
    )[0]
    members = np.asarray(jax.device_get(members))  # [M, H, W, C]
    if jax.process_index() != 0:
        return {}
    c = data.VARIABLES.index("refc")
    fig = plots.members_figure(
        source.state(i + lead)[..., c], members[..., c], "refc", f"+{lead} h, step {step}"
    )
    return {"eval/members": writer_lib.figure_to_image(fig)}


def sources(config: ml_collections.ConfigDict, workdir: str) -> trainer.Input:
    """Random crops of the training pairs, the eval pairs, and the residual scale for `build`.

    When `data_resident.plan` places the training states on the devices (`data.resident`), the
    train iterator yields only index rows {"rows": [B, 6] int32} drawn exactly as the streamed
    records are, and `build` gets the loaded store (its train step gathers from it)."""
    store = data.prepare(config, workdir)
    leads, preload = tuple(config.data.leads), config.data.preload_max_mb
    pairs = data.PairSource(store, "train", leads, preload)
    train_source = data.WithHour(pairs)
    eval_source = data.WithHour(data.PairSource(store, config.eval.split, leads, preload))
    data.check_grid(pairs, store, config.data.shape)
    residual_std = data.residual_std(pairs)
    residual_mean = data.residual_mean(pairs, residual_std)
    logging.info("Residual std per variable %s: %s", data.VARIABLES, np.round(residual_std, 3))
    logging.info("Scaled residual mean: %s", np.round(residual_mean, 3))
    build_kwargs = {"residual_std": residual_std, "residual_mean": residual_mean}
    crop = tuple(config.data.crop)
    mesh = mesh_lib.make_mesh(config.mesh)
    placement = data_resident.plan(config, pairs, mesh)
    logging.info("Training data placement: %s (%s)", placement.placement, placement.reason)
    if placement.resident:
        build_kwargs["resident"] = data_resident.load(pairs, placement, mesh, crop)
        records = data_resident.IndexSource(pairs)
        random_transform = data_resident.crop_columns(crop, pairs.shape[:2])
    else:
        records, random_transform = train_source, data.random_crop(crop)
    train_iter = pipeline.train_iterator(
        records,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        random_transform=random_transform,
        workers=pipeline.resolve_workers(config),
    )
    return trainer.Input(
        train_iter=train_iter,
        eval_source=eval_source,
        build_kwargs=build_kwargs,
        model_inputs=rows_batch if placement.resident else None,
        info={"sampler": None},  # the figure's sampler, built at the first figure
    )


def rows_batch(rows: np.ndarray) -> dict[str, np.ndarray]:
    """The resident train step's input: the index pipeline's rows [B, 6] under "rows"."""
    return {"rows": rows}


def build(config, mesh, *, residual_std, residual_mean, resident=None):
    """`steps.build` with the training pairs' residual scale (for a new state); with a
    device-resident store (`sources`), its train step takes index rows and gathers on device."""
    parts = steps.build(config, mesh, residual_std, residual_mean)
    if resident is None:
        return parts
    return dataclasses.replace(
        parts, train_step=steps.resident_train_step(config, mesh, parts, resident)
    )


def evaluate_during_training(config, parts, state, inputs: trainer.Input, mesh, train_window):
    """({"eval_loss"}: the EMA params' denoising loss on the eval pairs, no outputs)."""
    del train_window  # no train-metric sums
    metrics = evaluate.denoising_loss(
        parts.eval_step,
        state.extra["ema"],
        state.extra["residual_std"],
        inputs.eval_source,
        mesh,
        config.eval,
    )
    return metrics, None


def figure(config, parts, state, inputs: trainer.Input, mesh, step: int, metrics, outputs):
    """{"eval/members"} when `eval.train_figure_members` > 0: see `members_image`."""
    del metrics, outputs
    members = int(config.eval.train_figure_members)
    if not members:
        return {}
    if inputs.info["sampler"] is None:
        inputs.info["sampler"] = ensemble.make_forecast_step(
            parts.model, parts.extras.schedule, config, mesh, members
        )
    return members_image(inputs.info["sampler"], state, inputs.eval_source, config, step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns the last eval loss."""
    return trainer.run(config, workdir, sys.modules[__name__])
