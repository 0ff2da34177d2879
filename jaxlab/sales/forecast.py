"""The LSTM forecasters of the augmentation study: their parts, pure steps and checkpoints.

Three forecasters are trained from the same seed and initial parameters (train.py's second
loop): "real" (real windows), "augmented" (real + generated, ratio configurable) and "synthetic"
(generated only: train on synthetic, test on real). Each lives in `workdir/forecast_<name>/` with
its own checkpoints (the best kept by validation MAE) and metrics.jsonl. `build` mirrors
`steps.build`: one `parts_lib.Parts[None]` (jitted once) serves all three runs.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from jaxlab.core import checkpoint
from jaxlab.core import parts as parts_lib
from jaxlab.core import state as state_lib
from jaxlab.sales import gan
from jaxlab.sales import model as model_lib
from jaxlab.sales.model import Forecaster

NAMES = ("real", "augmented", "synthetic")
BEST_METRIC = "val_mae"


def forecast_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, f"forecast_{name}")


def init_state(
    rng: jax.Array, *, config: ml_collections.ConfigDict, model: Forecaster, tx: Any
) -> state_lib.TrainState:
    params = model.init(rng, *gan.dummy_condition(config))["params"]
    return state_lib.create_train_state(params, tx)


LOSSES = ("mae", "mse")


def point_loss(pred: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    """Mean absolute ("mae") or squared ("mse") error over [B, T].

    MAE is the study's headline metric, and its minimiser is the conditional median, not the
    mean: on daily counts where ~40% of target days sell nothing, the median sits well below
    the mean, so a forecaster fitted on squared error (the conditional mean) loses on MAE even
    to the history median (see README, "The forecaster").
    """
    if kind == "mae":
        return jnp.mean(jnp.abs(pred - target))
    if kind == "mse":
        return jnp.mean(jnp.square(pred - target))
    raise ValueError(f"config.forecaster.loss must be one of {LOSSES}, got {kind!r}.")


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: Forecaster,
    tx: Any,
    loss: str = "mae",
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One step on `point_loss` over the T target days; batch: windows [B, ...]."""
    kind = loss

    def loss_fn(params):
        pred = model.apply({"params": params}, *model_lib.condition(batch))
        return point_loss(pred, batch["target"], kind)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    return state, state_lib.step_metrics(loss, grads, batch)


def eval_step(params: Any, batch: dict[str, jax.Array], valid: jax.Array, *, model: Forecaster):
    """Forecasts [B, T] and sums over valid rows: abs_err_sum, sq_err_sum, count (values)."""
    pred = model.apply({"params": params}, *model_lib.condition(batch))
    weight = valid.astype(jnp.float32)[:, None]
    err = pred - batch["target"]
    sums = {
        "abs_err_sum": jnp.sum(weight * jnp.abs(err)),
        "sq_err_sum": jnp.sum(weight * jnp.square(err)),
        "count": jnp.sum(weight) * pred.shape[1],
    }
    return sums, pred


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> parts_lib.Parts[None]:
    """Forecaster, optimizer (`config.forecaster.optim`), abstract state and jitted steps.

    Built once per (config, mesh) in a process, on a frozen copy of `config`, as `steps.build`:
    training, evaluation, a resumed run and the study's cells reuse the compiled steps.
    """
    return _build_frozen(ml_collections.FrozenConfigDict(config), mesh)


@functools.lru_cache(maxsize=8)
def _build_frozen(
    config: ml_collections.FrozenConfigDict, mesh: jax.sharding.Mesh
) -> parts_lib.Parts[None]:
    schedule = parts_lib.step_schedule(config, config.forecaster.num_steps, config.forecaster.optim)
    if config.forecaster.loss not in LOSSES:
        raise ValueError(
            f"config.forecaster.loss must be one of {LOSSES}, got {config.forecaster.loss!r}."
        )
    model = model_lib.make_forecaster(config)
    tx = schedule.optimizer()
    init_fn = functools.partial(init_state, config=config, model=model, tx=tx)
    train_fn = functools.partial(train_step, model=model, tx=tx, loss=config.forecaster.loss)
    eval_fn = functools.partial(eval_step, model=model)
    return parts_lib.assemble(config, mesh, model, tx, init_fn, train_fn, eval_fn, schedule)


def make_manager(
    config: ml_collections.ConfigDict, forecaster_dir: str, *, read_only: bool = False
) -> ocp.CheckpointManager:
    """The manager of `forecaster_dir/checkpoints`: latest N plus the best by validation MAE."""
    return checkpoint.make_manager(
        os.path.join(forecaster_dir, "checkpoints"),
        max_to_keep=config.train.max_to_keep,
        best_metric=BEST_METRIC,
        best_mode="min",
        keep_best=1,
        async_save=config.train.async_checkpoint,
        read_only=read_only,
    )


def restore_params(
    config: ml_collections.ConfigDict, forecaster_dir: str, parts: parts_lib.Parts[None]
) -> tuple[Any, int]:
    """(params, step) of the checkpoint `config.eval.forecaster_checkpoint` of forecaster_dir."""
    manager = make_manager(config, forecaster_dir, read_only=True)
    which = config.eval.forecaster_checkpoint
    step = checkpoint.select_step(manager, which, BEST_METRIC, "min")
    state = checkpoint.restore(manager, parts.abstract_state, step=step)
    manager.close()
    return state.params, step
