"""Training loop of the conditional diffusion forecaster (epsilon- or v-prediction, EMA params).

Stages, top to bottom: writer, mesh, input (GRIB2 -> Zarr, pairs, random crops), the residual
scale of the training pairs, parts (`steps.build`), state (restored or new), loop. The EMA of
the params is updated inside the step (steps.py); the periodic evaluation scores the EMA params,
the ones ensembles are drawn with.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import checkpoint, loop, optim, rng, run
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import writer as writer_lib
from jaxlab.data import pipeline
from jaxlab.weather import data, ensemble, evaluate, plots, steps


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns the last eval loss."""
    tc = config.train
    writer = run.open_workdir(config, workdir)

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input: GRIB2 -> Zarr (synthetic when configured), pairs, random crops.
    store = data.prepare(config, workdir)
    leads, preload = tuple(config.data.leads), config.data.preload_max_mb
    train_source = data.WithHour(data.PairSource(store, "train", leads, preload))
    eval_source = data.WithHour(data.PairSource(store, config.eval.split, leads, preload))
    data.check_grid(train_source.source, store, config.data.shape)
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=tc.global_batch_size,
        seed=config.seed,
        random_transform=data.random_crop(tuple(config.data.crop)),
    )
    # Used by a new run; a resumed one has its own (in the checkpoint).
    residual_std = data.residual_std(train_source.source)
    residual_mean = data.residual_mean(train_source.source, residual_std)
    logging.info("Residual std per variable %s: %s", data.VARIABLES, np.round(residual_std, 3))
    logging.info("Scaled residual mean: %s", np.round(residual_mean, 3))

    # Parts and state (restored when the workdir has a checkpoint).
    parts = steps.build(config, mesh, residual_std, residual_mean)
    manager = checkpoint.manager_from_config(config, workdir)
    state, _ = run.init_or_restore(manager, parts, rng.stream(config.seed, "init"), train_iter)
    lr_fn = jax.jit(functools.partial(optim.current_learning_rate, config.optim, parts.num_steps))
    figure_members = int(config.eval.get("train_figure_members", 0))
    figure_step = None  # the sampler for the members drawn to TensorBoard at each evaluation
    if figure_members:
        figure_step = ensemble.make_forecast_step(
            parts.model, parts.schedule, config, mesh, figure_members
        )

    # Loop.
    start_step = int(state.step)
    eval_metrics: dict[str, float] = {}
    with run.loop_helpers(
        config, workdir, manager, writer, start_step, parts.num_steps, tc.global_batch_size
    ) as h:
        for step in range(start_step + 1, parts.num_steps + 1):
            h.profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, metrics = parts.train_step(state, batch)
            h.throttle(metrics["loss"])

            preempted = h.preemption.requested(step)
            last = step == parts.num_steps
            save = loop.every(step, tc.ckpt_every) or last or preempted
            if loop.every(step, tc.log_every) or save:
                run.log_train_step(h, step, metrics, {"lr": lr_fn(state.opt_state, state.step)})
            metrics_for_ckpt = None
            if loop.every(step, tc.eval_every) or last:
                # The EMA params: what evaluate.py samples ensembles with.
                eval_metrics = evaluate.denoising_loss(
                    parts.eval_step,
                    state.extra["ema"],
                    state.extra["residual_std"],
                    eval_source,
                    mesh,
                    config.eval,
                )
                writer.write_scalars(step, eval_metrics)
                metrics_for_ckpt = eval_metrics
                if figure_step is not None:
                    writer.write_images(
                        step, members_image(figure_step, state, eval_source, config, step)
                    )
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=metrics_for_ckpt)
            if preempted:
                loop.log_preempted(step)
                break
    return eval_metrics
