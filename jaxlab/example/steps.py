"""The example task's parts and pure steps: what train.py, evaluate.py and the benchmark share.

`build(config, mesh)` returns `Parts`: the model, the optimizer, `init_fn(rng) -> TrainState`, the
state's abstract shape with the mesh's shardings (the restore target), the number of steps and
the two steps jitted once. The pure `train_step` / `eval_step` are module functions, testable
without a mesh.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.example import model as model_lib


def train_step(
    state: state_lib.TrainState, batch: dict[str, jax.Array], *, model: model_lib.MLP, tx: Any
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean squared error. batch: x [B, F], y [B], index [B]."""

    def loss_fn(params):
        pred = model.apply({"params": params}, batch["x"])
        return jnp.mean(jnp.square(pred - batch["y"]))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    return state, state_lib.step_metrics(loss, grads, batch)


def eval_step(params: Any, batch: dict[str, jax.Array], valid: jax.Array, *, model: Any):
    """Sums over valid rows: squared error, count. Also returns predictions [B] for plots."""
    pred = model.apply({"params": params}, batch["x"])
    weight = valid.astype(jnp.float32)
    sums = {"sq_err": jnp.sum(weight * jnp.square(pred - batch["y"])), "count": jnp.sum(weight)}
    return sums, pred


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> parts_lib.Parts[None]:
    """Model, optimizer, sharded abstract state and jitted steps for `config` on `mesh`."""
    schedule = parts_lib.step_schedule(config)
    model = model_lib.make_model(config)
    tx = schedule.optimizer()
    init_fn = functools.partial(
        model_lib.init_state, model=model, tx=tx, num_features=config.data.num_features
    )
    train_fn = functools.partial(train_step, model=model, tx=tx)
    eval_fn = functools.partial(eval_step, model=model)
    return parts_lib.assemble(config, mesh, model, tx, init_fn, train_fn, eval_fn, schedule)


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, extras {}) for the benchmark; no files."""
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    batch_size, num_features = config.train.global_batch_size, config.data.num_features
    gen = np.random.default_rng(config.seed)
    batch = {
        "x": gen.normal(size=(batch_size, num_features)).astype(np.float32),
        "y": gen.normal(size=(batch_size,)).astype(np.float32),
        "index": np.arange(batch_size, dtype=np.int32),
    }
    return parts.train_step, state, mesh_lib.global_batch(batch, mesh), {}
