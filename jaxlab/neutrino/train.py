"""Training loop of the neutrino task, in the stages every task's train.py follows."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import checkpoint, loop, optim
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter
from jaxlab.neutrino import data, losses
from jaxlab.neutrino import model as model_lib
from jaxlab.neutrino.evaluate import make_eval_step, predict_split, scalar_metrics


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: model_lib.HierarchicalTransformer,
    tx: Any,
    loss_name: str,
    dropout_key: jax.Array,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean per-event loss over the batch's valid events."""
    valid = batch["event_valid"].astype(jnp.float32)  # [G, E]
    num_valid = jnp.maximum(jnp.sum(valid), 1.0)
    rng = jax.random.fold_in(dropout_key, state.step)
    # Empty event slots have a zero target; give them a unit one so no NaN can enter the sum.
    target = jnp.where(valid[..., None] > 0, batch["direction"], jnp.array([0.0, 0.0, 1.0]))

    def loss_fn(params):
        pred = model.apply(
            {"params": params}, batch, deterministic=False, rngs={"dropout": rng}
        )  # [G, E, 3]
        per_event = losses.direction_loss(loss_name, pred, target)
        return jnp.sum(per_event * valid) / num_valid, pred

    (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    error = losses.angular_distance(jax.lax.stop_gradient(pred), target)
    metrics = {
        "loss": loss,
        "angular_error": jnp.sum(error * valid) / num_valid,
        "grad_norm": optax.tree.norm(grads),
        "events": jnp.sum(valid),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(config, model, tx, shardings, mesh):
    """`train_step` jitted once with explicit shardings; the input state's buffers are donated."""
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        loss_name=config.train.loss,
        dropout_key=jax.random.fold_in(jax.random.key(config.seed), 1),
    )
    return jax.jit(
        step,
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Model, optimizer, pack spec, init function and abstract state (target, shardings)."""
    spec = data.PackSpec.from_config(config)
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, spec=spec)
    target, shardings = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    return model, tx, spec, init_fn, target, shardings


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, per-step counts) for scripts/benchmark.py.

    The batch is packed from synthetic events with the long-tailed sizes of the synthetic writer
    (no files); the counts give tokens/s, events/s and the padding efficiency.
    """
    model, tx, spec, init_fn, _, shardings = build(config, mesh)
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(config.seed))
    batch = synthetic_batch(config, spec)
    stats = packing_stats([batch])
    logging.info(
        "Benchmark batch: %d pulse tokens (%d real, efficiency %.3f), %d DOM tokens "
        "(efficiency %.3f), %d events per step; tokens/s and events/s = these x steps/s.",
        batch["pulse_segment"].size,
        int(np.sum(batch["pulse_segment"] > 0)),
        stats["pulse_token_efficiency"],
        batch["dom_segment"].size,
        stats["dom_token_efficiency"],
        int(np.sum(batch["event_valid"])),
    )
    step = make_train_step(config, model, tx, shardings, mesh)
    counts = {
        "pulse_tokens_per_step": int(batch["pulse_segment"].size),
        "real_pulse_tokens_per_step": int(np.sum(batch["pulse_segment"] > 0)),
        "dom_tokens_per_step": int(batch["dom_segment"].size),
        "events_per_step": int(np.sum(batch["event_valid"])),
        "pulse_token_efficiency": float(stats["pulse_token_efficiency"]),
        "dom_token_efficiency": float(stats["dom_token_efficiency"]),
    }
    return step, state, mesh_lib.global_batch(data.model_inputs(batch), mesh), counts


def synthetic_batch(config: ml_collections.ConfigDict, spec: data.PackSpec) -> dict:
    """One global batch packed from freshly simulated events (no files written)."""
    from jaxlab.neutrino import synthetic

    rng = np.random.default_rng(config.seed)
    positions = synthetic.geometry()
    processor = data.EventProcessor(
        positions.astype(np.float32), config.data.max_doms, config.data.max_pulses_per_dom
    )
    s = config.data.synth
    packs: list[dict[str, np.ndarray]] = []
    builder = data.PackBuilder(spec)
    event_id = 0
    while len(packs) < config.data.packs_per_batch:
        pulses, azimuth, zenith = synthetic.simulate_event(
            rng,
            positions,
            max_pulses=s.max_pulses,
            energy_scale=s.energy_scale,
            energy_cap=s.energy_cap,
            track_half_length=s.track_half_length,
            noise_hits=s.noise_hits,
        )
        event = processor({**pulses, "event_id": event_id, "azimuth": azimuth, "zenith": zenith})
        event_id += 1
        if not builder.add(event):
            packs.append(builder.finish())
            builder = data.PackBuilder(spec)
            builder.add(event)
    return jax.tree.map(lambda *xs: np.stack(xs), *packs)


def packing_stats(batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Padding efficiency (real / total tokens) at both levels, events per pack, truncation."""
    pulses = sum(int(np.sum(b["pulse_segment"] > 0)) for b in batches)
    doms = sum(int(np.sum(b["dom_segment"] > 0)) for b in batches)
    events = sum(int(np.sum(b["event_valid"])) for b in batches)
    num_packs = sum(b["event_valid"].shape[0] for b in batches)
    b0 = batches[0]
    return {
        "pulse_token_efficiency": pulses / (num_packs * b0["pulse_segment"][0].size),
        "dom_token_efficiency": doms / (num_packs * b0["dom_segment"][0].size),
        "events_per_pack": events / num_packs,
        "pulses_truncated": float(sum(int(np.sum(b["pulses_truncated"])) for b in batches)),
        "doms_truncated": float(sum(int(np.sum(b["doms_truncated"])) for b in batches)),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    tc = config.train
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)
    if config.data.packs_per_batch % mesh_lib.batch_size_divisor(mesh):
        raise ValueError(
            f"data.packs_per_batch ({config.data.packs_per_batch}) must be a multiple of the "
            f"{mesh_lib.batch_size_divisor(mesh)} devices on the batch axes."
        )

    # Input.
    root = data.prepare(config, workdir)
    train_source = data.load_split(config, root, "train")
    eval_source = data.load_split(config, root, config.eval.split)
    processor = data.make_processor(config, root)

    # Model, optimizer and state (restored when the workdir has a checkpoint).
    model, tx, spec, init_fn, target, shardings = build(config, mesh)
    train_iter = data.train_iterator(
        train_source,
        processor,
        spec,
        packs_per_batch=config.data.packs_per_batch,
        seed=config.seed,
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
    )
    rng = jax.random.key(config.seed)
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=tc.max_to_keep,
        best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode,
        keep_best=tc.keep_best,
        async_save=tc.async_checkpoint,
    )
    state = checkpoint.restore_or_init(
        manager, target, lambda: jax.jit(init_fn, out_shardings=shardings)(rng), train_iter
    )
    logging.info(
        "Parameters: %d; %d train / %d %s events",
        state_lib.param_count(state.params),
        len(train_source),
        len(eval_source),
        config.eval.split,
    )

    # Step.
    step_fn = make_train_step(config, model, tx, shardings, mesh)
    eval_step_fn = make_eval_step(model, mesh)
    lr_fn = jax.jit(functools.partial(optim.current_learning_rate, config.optim, tc.num_steps))

    # Loop.
    start_step = int(state.step)
    progress = loop.Progress(tc.num_steps, config.data.packs_per_batch, start_step)
    profile = loop.ProfileWindow(tc.profile_start, tc.profile_stop, os.path.join(workdir, "tb"))
    throttle = loop.StepThrottle(tc.max_in_flight)
    eval_metrics: dict[str, float] = {}
    window: list[dict[str, np.ndarray]] = []  # host batches since the last log, for packing stats
    with loop.Preemption() as preemption:
        for step in range(start_step + 1, tc.num_steps + 1):
            profile.step(step, state)
            host_batch = next(train_iter)
            window.append({k: host_batch[k] for k in _STAT_KEYS})
            batch = mesh_lib.global_batch(data.model_inputs(host_batch), mesh)
            state, metrics = step_fn(state, batch)
            throttle(metrics)

            preempted = preemption.requested(step)
            last = step == tc.num_steps
            save = loop.every(step, tc.ckpt_every) or last or preempted
            if loop.every(step, tc.log_every) or save:
                metrics = jax.device_get(metrics)
                loop.check_finite(step, metrics)
                lr = lr_fn(state.opt_state, state.step)
                stats = packing_stats(window)
                window = []
                writer.write_scalars(
                    step, {**metrics, **stats, **progress.report(step, metrics), "lr": lr}
                )
            metrics_for_ckpt = None
            if loop.every(step, tc.eval_every) or last:
                result = predict_split(
                    eval_step_fn,
                    state.params,
                    eval_source,
                    processor,
                    spec,
                    mesh,
                    config.eval.packs_per_batch,
                )
                eval_metrics = scalar_metrics(result)
                writer.write_scalars(step, eval_metrics)
                metrics_for_ckpt = eval_metrics
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=metrics_for_ckpt)
            if preempted:
                logging.warning("Preempted: checkpointed step %d, exiting.", step)
                break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return eval_metrics


_STAT_KEYS = ("pulse_segment", "dom_segment", "event_valid", "pulses_truncated", "doms_truncated")
