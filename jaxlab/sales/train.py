"""Training of the sales task, in three stages that each resume from `workdir`:

1. WGAN-GP (`train_gan`): the explicit loop over `steps.train_step` (n_critic critic steps + 1
   generator step per iteration), logging the Wasserstein estimate, gradient penalty and both
   losses, evaluating sample statistics on validation windows (and logging a few generated
   sequences beside the real ones, `eval/generated`), checkpointing state + data
   iterator together in `workdir/checkpoints`.
2. Generation from the GAN checkpoint: `gan.samples_per_window` sequences per training window ->
   `workdir/generated/train.parquet` (written once, atomically).
3. Forecasters (`train_forecaster`, the second explicit loop) from the same seed on real,
   real + generated (ratio `augment.ratio`) and generated-only windows, each in
   `workdir/forecast_<name>/` (see forecast.py).

With `study.mode` "only" (the `study` variant) or "also" (`paper`: after the three stages),
the augmentation study of study.py runs instead / afterwards; its cells resume too.

A SIGTERM checkpoints the stage running and returns; rerunning continues where it stopped.

Why sales keeps its own loops instead of `core/trainer.run`: its training is not one step
function with one evaluation. A WGAN-GP iteration updates two networks with two optimizers (no
single learning rate), generation sits between the stages, and each of the three forecasters
trains in its own workdir (own lock, checkpoints and metrics) from the same initial parameters;
the study then repeats GAN and forecasters per training fraction and seed. The two loops are
built from the trainer's pieces: `workdir.opened`, `restore.init_or_restore`,
`trainer.loop_helpers` and `trainer.log_train_step`, and `parts.assemble` builds both parts.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from jaxlab.core import checkpoint, loop, restore, rng, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import state as state_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import MetricWriter, figure_to_image
from jaxlab.data import pipeline
from jaxlab.sales import (
    data,
    data_windows,
    evaluate,
    forecast,
    plots,
    steps,
    study,
    study_report,
)

GENERATED_FILE = os.path.join("generated", "train.parquet")
NUM_IMAGE_WINDOWS = 4  # validation windows in the GAN's evaluation figure


def generated_image(source, generated: np.ndarray, step: int) -> np.ndarray:
    """Real and generated targets of `NUM_IMAGE_WINDOWS` windows spread over `source` (the same
    ones at every evaluation), as an image; generated [N, T] in `source` order."""
    picks = np.linspace(0, len(source) - 1, min(NUM_IMAGE_WINDOWS, len(source)))
    records = [source[int(i)] for i in picks.round()]
    history = np.stack([r["history_sales"] for r in records])
    real = np.stack([r["target"] for r in records])
    title = f"step {step}: validation windows, real vs generated (normalised)"
    fig = plots.generated_vs_real(history, real, generated[picks.round().astype(int)], title)
    return figure_to_image(fig)


def train_gan(
    config: ml_collections.ConfigDict,
    workdir: str,
    writer: MetricWriter,
    mesh: jax.sharding.Mesh,
    sources: dict,
) -> bool:
    """The WGAN-GP loop to `config.train.num_steps`; False when preempted (checkpointed)."""
    tc = config.train
    train_iter = pipeline.train_iterator(
        sources["train"],
        global_batch_size=tc.global_batch_size,
        seed=config.seed,
        workers=pipeline.resolve_workers(config),
    )
    eval_source = data_windows.spread_subset(sources["val"], config.eval.max_windows)
    eval_key = rng.stream(config.seed, "gan_eval_samples")

    parts = steps.build(config, mesh)
    manager = checkpoint.manager_from_config(config, workdir)
    state, _ = restore.init_or_restore(manager, parts, rng.stream(config.seed, "init"), train_iter)
    logging.info("Critic: %d parameters", state_lib.param_count(state.extra.params))

    start_step, preempted = int(state.step), False
    with trainer.loop_helpers(
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
                trainer.log_train_step(h, step, metrics)
            eval_metrics = None
            if loop.every(step, tc.eval_every) or last:
                eval_metrics, generated = evaluate.generate(
                    parts.eval_step,
                    state.params,
                    eval_source,
                    mesh,
                    config.eval.global_batch_size,
                    eval_key,
                )
                writer.write_scalars(step, eval_metrics)
                if writer.enabled:
                    image = generated_image(eval_source, generated, step)
                    writer.write_images(step, {"eval/generated": image})
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=eval_metrics)
            if preempted:
                loop.log_preempted(step)
                break
    return not preempted


def write_generated(
    config: ml_collections.ConfigDict, workdir: str, train_source, mesh: jax.sharding.Mesh
) -> str:
    """`gan.samples_per_window` sequences per training window from the GAN checkpoint
    `gan.generate_checkpoint`; kept when already written (a resumed run)."""
    path = os.path.join(workdir, GENERATED_FILE)
    if os.path.exists(path):
        return path
    parts = steps.build(config, mesh)
    state, step = restore.restore_for_eval(config, workdir, parts, config.gan.generate_checkpoint)
    samples = [
        evaluate.generate(
            parts.eval_step,
            state.params,
            train_source,
            mesh,
            config.eval.global_batch_size,
            rng.stream(config.seed, "generate", s),
        )[1]
        for s in range(config.gan.samples_per_window)
    ]
    samples = np.stack(samples, axis=1)  # [W, S, T]
    if jax.process_index() == 0:
        data_windows.write_generated(path, train_source, samples)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("sales: generated sequences written")
    logging.info("Generated %s sequences from GAN step %d -> %s", samples.shape, step, path)
    return path


def forecaster_sources(config: ml_collections.ConfigDict, sources: dict, generated_path: str):
    """The training sets of the three forecasters, by name."""
    window, target = data_windows.read_generated(generated_path, config.data.horizon)
    common = {"seed": config.seed, "ratio": config.augment.ratio}
    return {
        "real": sources["train"],
        "augmented": data_windows.AugmentedSource(sources["train"], window, target, **common),
        "synthetic": data_windows.AugmentedSource(
            sources["train"], window, target, include_real=False, **common
        ),
    }


def train_forecaster(
    config: ml_collections.ConfigDict,
    forecaster_dir: str,
    parts: parts_lib.Parts,
    train_source,
    val_source,
    mesh: jax.sharding.Mesh,
) -> bool:
    """One forecaster to `config.forecaster.num_steps`, evaluated and checkpointed every
    `forecaster.eval_every` steps (the best kept by validation MAE); False when preempted."""
    fc = config.forecaster
    with workdir_lib.opened(config, forecaster_dir) as writer:
        train_iter = pipeline.train_iterator(
            train_source,
            global_batch_size=fc.global_batch_size,
            seed=config.seed,
            workers=pipeline.resolve_workers(config),
        )
        manager = forecast.make_manager(config, forecaster_dir)
        # The same initial parameters for the three forecasters: the study compares training sets.
        init_key = rng.stream(config.seed, "forecaster_init")
        state, _ = restore.init_or_restore(manager, parts, init_key, train_iter)

        start_step, preempted = int(state.step), False
        with trainer.loop_helpers(
            config,
            forecaster_dir,
            manager,
            writer,
            start_step,
            parts.num_steps,
            fc.global_batch_size,
        ) as h:
            for step in range(start_step + 1, parts.num_steps + 1):
                batch = mesh_lib.global_batch(next(train_iter), mesh)
                state, metrics = parts.train_step(state, batch)
                h.throttle(metrics["loss"])

                preempted = h.preemption.requested(step)
                last = step == parts.num_steps
                evaluate_now = loop.every(step, fc.eval_every) or last
                if loop.every(step, config.train.log_every) or evaluate_now or preempted:
                    trainer.log_train_step(h, step, metrics)
                val_metrics = None
                if evaluate_now:
                    val_metrics, _ = evaluate.forecast_pass(
                        parts.eval_step,
                        state.params,
                        val_source,
                        mesh,
                        config.eval.global_batch_size,
                    )
                    writer.write_scalars(step, val_metrics)
                if evaluate_now or preempted:
                    checkpoint.save(manager, step, state, train_iter, metrics=val_metrics)
                if preempted:
                    loop.log_preempted(step)
                    break
        return not preempted


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """GAN, generation and forecasters (each resumed from workdir); returns each forecaster's
    validation MAE of its kept checkpoint (`eval.forecaster_checkpoint`), or {} when preempted."""
    with workdir_lib.opened(config, workdir) as writer:
        # Mesh.
        mesh = mesh_lib.make_mesh(config.mesh)
        mesh_lib.log_topology(mesh)

        # Input.
        sources = data_windows.load_windows(config, data.prepare(config, workdir))

        mode = config.study.mode
        if mode not in ("off", "only", "also"):
            raise ValueError(f"config.study.mode must be 'off', 'only' or 'also', got {mode!r}.")
        if mode == "only":
            return study_report.flat(study.run_study(config, workdir, mesh, sources, train_gan))

        summary: dict[str, float] = {}
        # Between the stages' own handlers a SIGTERM is noted here and honoured before the next one.
        with loop.Preemption() as between_stages:
            logging.info("=== sales: WGAN-GP")
            if not train_gan(config, workdir, writer, mesh, sources):
                return summary
            generated_path = write_generated(config, workdir, sources["train"], mesh)
            train_sets = forecaster_sources(config, sources, generated_path)
            parts = forecast.build(config, mesh)
            for name in forecast.NAMES:
                if between_stages.requested(0):
                    logging.warning("Preempted between stages, before the %s forecaster.", name)
                    return {}
                logging.info(
                    "=== sales: forecaster on %s windows (%d)", name, len(train_sets[name])
                )
                forecaster_dir = forecast.forecast_dir(workdir, name)
                if not train_forecaster(
                    config, forecaster_dir, parts, train_sets[name], sources["val"], mesh
                ):
                    return {}
                params, _ = forecast.restore_params(config, forecaster_dir, parts)
                val_metrics, _ = evaluate.forecast_pass(
                    parts.eval_step, params, sources["val"], mesh, config.eval.global_batch_size
                )
                summary[f"{name}_val_mae"] = val_metrics["val_mae"]
        logging.info("Validation MAE of the forecasters: %s", summary)
        if mode == "also":
            summary.update(
                study_report.flat(study.run_study(config, workdir, mesh, sources, train_gan))
            )
        return summary
