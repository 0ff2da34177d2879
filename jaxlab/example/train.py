"""Training loop of the example task: the reference for every task's train.py.

Stages, top to bottom: writer, mesh, input, parts (`steps.build`), state (restored or new), loop.
The loop is written out: step, log every `log_every`, evaluate every `eval_every` (metrics and
one figure, the eval split's prediction-vs-target scatter, under `eval/predictions`), checkpoint
every `ckpt_every`, at the end and on SIGTERM.
"""

from __future__ import annotations

import ml_collections

from jaxlab.core import checkpoint, loop, restore, rng, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.example import data, evaluate, plots, steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    tc = config.train
    writer = workdir_lib.open_workdir(config, workdir)

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input.
    data_dir = data.prepare(config, workdir)
    train_source = data.load(data_dir, "train", config.data.num_features)
    eval_source = data.load(data_dir, config.eval.split, config.data.num_features)
    train_iter = pipeline.train_iterator(
        train_source, global_batch_size=tc.global_batch_size, seed=config.seed
    )

    # Parts and state (restored when the workdir has a checkpoint).
    parts = steps.build(config, mesh)
    manager = checkpoint.manager_from_config(config, workdir)
    state, _ = restore.init_or_restore(manager, parts, rng.stream(config.seed, "init"), train_iter)

    # Loop.
    start_step = int(state.step)
    eval_metrics: dict[str, float] = {}
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
            metrics_for_ckpt = None
            if loop.every(step, tc.eval_every) or last:
                eval_metrics, predictions = evaluate.evaluate_split(
                    parts.eval_step, state.params, eval_source, mesh, config.eval.global_batch_size
                )
                writer.write_scalars(step, eval_metrics)
                if writer.enabled:
                    title = f"step {step}: eval MSE {eval_metrics['eval_mse']:.4f}"
                    fig = plots.prediction_scatter(eval_source.y, predictions, title)
                    writer.write_images(step, {"eval/predictions": figure_to_image(fig)})
                metrics_for_ckpt = eval_metrics
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=metrics_for_ckpt)
            if preempted:
                loop.log_preempted(step)
                break
    return eval_metrics
