"""Training loop of the neutrino task, in the stages of `jaxlab/example/train.py`.

Stages: writer, mesh, input (packed batches of `train.global_batch_size` packs), parts
(`steps.build`), state (restored or new), loop. The loop keeps, host-side, the batches since the
last log to report padding efficiency and truncation per log window (`packing_stats`) and the
per-step event counts (device scalars, read at log time) for `events_per_sec`: a pack holds a
varying number of events, so the core's `examples_per_sec` counts packs. Both windows are empty
after every checkpoint (a save step is a log step), so there is no loop state to save. Each
evaluation also logs the predicted-vs-true zenith histogram (a TensorBoard image, `eval/zenith`).
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import checkpoint, loop, restore, rng, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import figure_to_image
from jaxlab.neutrino import data, data_packing, data_pipeline, evaluate, plots, steps
from jaxlab.neutrino.metrics import vector_to_angles


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    tc = config.train
    writer = workdir_lib.open_workdir(config, workdir)

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Parts (they check the batch sizes against the mesh) and input.
    parts = steps.build(config, mesh)
    root = data.prepare(config, workdir)
    train_source = data.load_split(config, root, "train")
    eval_source = data.load_split(config, root, config.eval.split)
    processor = data_packing.make_processor(config, root)
    train_iter = data_pipeline.train_iterator(
        train_source,
        processor,
        parts.extras.spec,
        packs_per_batch=tc.global_batch_size,
        seed=config.seed,
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
    )
    logging.info("%d train / %d %s events", len(train_source), len(eval_source), config.eval.split)

    # State (restored when the workdir has a checkpoint).
    manager = checkpoint.manager_from_config(config, workdir)
    state, _ = restore.init_or_restore(manager, parts, rng.stream(config.seed, "init"), train_iter)

    # Loop.
    start_step = int(state.step)
    eval_metrics: dict[str, float] = {}
    window: list[dict[str, np.ndarray]] = []  # host batches since the last log (packing stats)
    window_events: list[jax.Array] = []  # device event counts since the last log
    window_start = time.perf_counter()
    with trainer.loop_helpers(
        config, workdir, manager, writer, start_step, parts.num_steps, tc.global_batch_size
    ) as h:
        for step in range(start_step + 1, parts.num_steps + 1):
            h.profile.step(step, state)
            host_batch = next(train_iter)
            window.append({k: host_batch[k] for k in data_packing.STAT_KEYS})
            batch = mesh_lib.global_batch(data_packing.model_inputs(host_batch), mesh)
            state, metrics = parts.train_step(state, batch)
            window_events.append(metrics["events"])
            h.throttle(metrics["loss"])

            preempted = h.preemption.requested(step)
            last = step == parts.num_steps
            save = loop.every(step, tc.ckpt_every) or last or preempted
            if loop.every(step, tc.log_every) or save:
                extra = {
                    **data_packing.packing_stats(window),
                }
                events = float(np.sum(jax.device_get(window_events)))
                now = time.perf_counter()  # the window's end, as for the core's steps_per_sec
                extra["events_per_sec"] = events / max(now - window_start, 1e-9)
                trainer.log_train_step(h, step, metrics, extra)
                window, window_events, window_start = [], [], now
            metrics_for_ckpt = None
            if loop.every(step, tc.eval_every) or last:
                result = evaluate.predict_split(
                    parts.eval_step,
                    state.params,
                    eval_source,
                    processor,
                    parts.extras.spec,
                    mesh,
                    config.eval.global_batch_size,
                )
                eval_metrics = evaluate.scalar_metrics(result)
                writer.write_scalars(step, eval_metrics)
                if writer.enabled and eval_metrics:  # a split without labels has no figure
                    _, zen_true = vector_to_angles(result["direction"])
                    _, zen_pred = vector_to_angles(result["pred"])
                    title = f"step {step}: zenith, {config.eval.split} split"
                    fig = plots.zenith_figure(zen_true, zen_pred, title)
                    writer.write_images(step, {"eval/zenith": figure_to_image(fig)})
                metrics_for_ckpt = eval_metrics
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=metrics_for_ckpt)
            if preempted:
                loop.log_preempted(step)
                break
    return eval_metrics
