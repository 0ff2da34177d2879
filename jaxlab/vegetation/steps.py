"""The vegetation task's parts and pure steps: what train.py, evaluate.py and the benchmark share.

`build(config, mesh, num_train_records)` returns `Parts`: the forecaster, AdamW with the
warmup-then-plateau schedule sized in epochs of the training windows, `init_fn(rng)`, the sharded
abstract state (the restore target) and the two steps jitted once. `train_step` / `eval_step` are
pure module functions on a record batch (see data.py for the record's fields and shapes).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.vegetation import losses
from jaxlab.vegetation import model as model_lib


def train_step(state, batch, *, model, tx, config):
    """One AdamW step on the masked delta loss. batch: records stacked [B, ...]."""

    def loss_of(params):
        pred = model.apply({"params": params}, batch)
        return losses.loss_fn(pred, batch, config)

    (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    metrics = state_lib.step_metrics(loss, grads, batch)
    return state, {**metrics, **terms, "coeff_scale": state.params["coeff_scale"]}


def eval_step(params, batch, valid, *, model, config):
    """Sums over valid records: loss, clear-pixel squared delta error of model and persistence.

    Also returns the forecast deltas [B, T, H, W, 4] (normalised units) for scoring and plots.
    """
    pred = model.apply({"params": params}, batch)
    w = valid.astype(jnp.float32)
    per_record = jax.vmap(
        lambda p, b: losses.loss_fn(p[None], jax.tree.map(lambda x: x[None], b), config)[0]
    )(pred, batch)
    mask = batch["target_mask"][..., None] * w[:, None, None, None, None]
    true = batch["target_delta"]
    sums = {
        "loss": jnp.sum(w * per_record),
        "records": jnp.sum(w),
        "sq_err": jnp.sum(mask * jnp.square(pred - true)),
        "sq_err_persistence": jnp.sum(mask * jnp.square(true)),
        "count": jnp.sum(mask),
    }
    return sums, pred


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    num_train_records: int | None = None,
) -> parts_lib.Parts[None]:
    """Model, optimizer, sharded abstract state and jitted steps for `config` on `mesh`.

    `num_train_records` (training windows) sets the epoch length and with it the number of steps
    and the schedule. None (benchmark, evaluation: nothing there depends on the schedule, and the
    optimizer state's shape does not) counts one global batch as an epoch.
    """
    records = config.train.global_batch_size if num_train_records is None else num_train_records
    schedule = parts_lib.epoch_schedule(config, records)
    model = model_lib.make_model(config)
    tx = schedule.optimizer()
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, config=config)
    train_fn = functools.partial(train_step, model=model, tx=tx, config=config)
    eval_fn = functools.partial(eval_step, model=model, config=config)
    return parts_lib.assemble(config, mesh, model, tx, init_fn, train_fn, eval_fn, schedule)


def random_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, np.ndarray]:
    """A record batch of plausible random values at the config's sizes (benchmark input)."""
    gen = np.random.default_rng(config.seed)
    batch = jax.tree.map(np.asarray, model_lib.dummy_batch(config, batch_size))
    out = {k: gen.normal(size=v.shape).astype(np.float32) * 0.2 for k, v in batch.items()}
    out["target_mask"] = (gen.random(batch["target_mask"].shape) > 0.4).astype(np.float32)
    lc = gen.integers(0, batch["landcover"].shape[-1], batch["landcover"].shape[:-1])
    out["landcover"] = np.eye(batch["landcover"].shape[-1], dtype=np.float32)[lc]
    num_target = batch["target_doy"].shape[1]
    out["target_doy"] = np.tile(100 + 5 * np.arange(num_target, dtype=np.float32), (batch_size, 1))
    out["index"] = np.arange(batch_size, dtype=np.int32)
    return out


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, extras {}) at the config's sizes; no files."""
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    batch = random_batch(config, config.train.global_batch_size)
    return parts.train_step, state, mesh_lib.global_batch(batch, mesh), {}


def bundle_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """Files an exported bundle carries besides the parameters: the training normalisation."""
    del config
    path = os.path.join(workdir, "normalisation.json")
    return {"normalisation.json": path} if os.path.exists(path) else {}
