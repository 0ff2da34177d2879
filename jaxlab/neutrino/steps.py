"""The neutrino task's parts and pure steps: what train.py, evaluate.py and the benchmark share.

`build(config, mesh)` returns `Parts`: the hierarchical transformer, the optimizer, the pack shapes
(`spec`), `init_fn(rng) -> TrainState`, the state's abstract shape with the mesh's shardings (the
restore target), the number of steps and the two steps jitted once. A batch is G =
`train.global_batch_size` packs (`data_packing.py`); the number of real events in it varies a
little, so the loss is the mean over the batch's valid events.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.neutrino import data_packing, losses
from jaxlab.neutrino import model as model_lib


@dataclasses.dataclass(frozen=True)
class Extras:
    spec: data_packing.PackSpec  # the static shapes of one pack


# The target given to empty event slots so that no NaN can enter the (masked) loss sum.
_PAD_DIRECTION = (0.0, 0.0, 1.0)


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: Any,  # model_lib.make_model: the hierarchical or the flat transformer
    tx: Any,
    loss_name: str,
    dropout_key: jax.Array,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean per-event loss over the batch's valid events.

    batch: `data_packing.MODEL_KEYS` arrays with G packs leading; `dropout_key` is the run's
    "dropout" stream, folded with the step here. metrics["events"]: the batch's real events.
    """
    valid = batch["event_valid"].astype(jnp.float32)  # [G, E]
    num_valid = jnp.maximum(jnp.sum(valid), 1.0)
    step_key = jax.random.fold_in(dropout_key, state.step)
    target = jnp.where(valid[..., None] > 0, batch["direction"], jnp.array(_PAD_DIRECTION))

    def loss_fn(params):
        pred = model.apply(
            {"params": params}, batch, deterministic=False, rngs={"dropout": step_key}
        )  # [G, E, 3]
        per_event = losses.direction_loss(loss_name, pred, target)
        return jnp.sum(per_event * valid) / num_valid, pred

    (loss, pred), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    error = losses.angular_distance(jax.lax.stop_gradient(pred), target)
    metrics = {
        "loss": loss,
        "angular_error": jnp.sum(error * valid) / num_valid,
        "grad_norm": optax.tree.norm(grads),
        "events": jnp.sum(valid),
    }
    return state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], valid: jax.Array, *, model: Any):
    """Deterministic predictions [G, E, 3] and sums over the valid events [G, E].

    sums: "angular_error" (radians, float32) and "events". The reported metrics are computed on
    the host from the predictions (float64, the competition formula, and the median); the sums
    are the on-device cross-check of the mean.
    """
    pred = model.apply({"params": params}, batch, deterministic=True)
    weight = valid.astype(jnp.float32)
    target = jnp.where(weight[..., None] > 0, batch["direction"], jnp.array(_PAD_DIRECTION))
    error = losses.angular_distance(pred, target)
    sums = {"angular_error": jnp.sum(weight * error), "events": jnp.sum(weight)}
    return sums, pred


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> parts_lib.Parts[Extras]:
    """Model, optimizer, pack spec, sharded abstract state and jitted steps for `config`."""
    schedule = parts_lib.step_schedule(config)
    divisor = mesh_lib.batch_size_divisor(mesh)
    if config.train.global_batch_size % divisor or config.eval.global_batch_size % divisor:
        raise ValueError(
            f"train.global_batch_size ({config.train.global_batch_size}) and "
            f"eval.global_batch_size ({config.eval.global_batch_size}), in packs, must be "
            f"multiples of the {divisor} devices on the batch axes."
        )
    spec = data_packing.PackSpec.from_config(config)
    model = model_lib.make_model(config)
    tx = schedule.optimizer()
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, spec=spec)
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        loss_name=config.train.loss,
        dropout_key=rng.stream(config.seed, "dropout"),
    )
    eval_fn = functools.partial(eval_step, model=model)
    return parts_lib.assemble(
        config, mesh, model, tx, init_fn, step, eval_fn, schedule, extras=Extras(spec=spec)
    )


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, per-step counts) for scripts/benchmark.py.

    The batch is packed from synthetic events with the long-tailed sizes of the synthetic writer
    (no files); the counts give tokens/s, events/s and the padding efficiency.
    """
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    batch = data_packing.synthetic_batch(config, parts.extras.spec, config.seed)
    stats = data_packing.packing_stats([batch])
    counts = {
        "pulse_tokens_per_step": int(batch["pulse_segment"].size),
        "real_pulse_tokens_per_step": int(np.sum(batch["pulse_segment"] > 0)),
        "dom_tokens_per_step": int(batch["dom_segment"].size),
        "events_per_step": int(np.sum(batch["event_valid"])),
        "pulse_token_efficiency": float(stats["pulse_token_efficiency"]),
        "dom_token_efficiency": float(stats["dom_token_efficiency"]),
    }
    logging.info("Benchmark batch: %s (rates = these x steps/s)", counts)
    inputs = mesh_lib.global_batch(data_packing.model_inputs(batch), mesh)
    return parts.train_step, state, inputs, counts
