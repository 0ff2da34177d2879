"""The glitch classifier's parts and pure steps: what train.py, evaluate.py and the benchmark share.

`build(config, mesh, num_train=..., num_classes=...)` returns `Parts`: the model, the optimizer,
`init_fn(rng) -> TrainState`, the state's abstract shape with the mesh's shardings (the restore
target), the epoch schedule and the two steps jitted once. Training counts epochs, so the number
of steps depends on the training-set size; the class count comes from the data too (22 for
Gravity Spy). The pure `train_step` / `eval_step` are module functions, testable without a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.glitch import losses, metrics, timm_import
from jaxlab.glitch import model as model_lib

# Steps of one epoch when no training set is given (benchmark, evaluation): the schedule does
# not change the state's structure, only the learning rate of each step.
NOMINAL_STEPS_PER_EPOCH = 100


@dataclasses.dataclass(frozen=True)
class Extras:
    num_classes: int


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: Any,
    loss_config: ml_collections.ConfigDict,
    class_weights: jax.Array | None,
    num_classes: int,
    seed: int,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step. batch: image [B, V, S, S, 3] or [B, S, S, 3], label [B], index [B].

    Returns metrics: loss, grad_norm, data_checksum (scalars) and confusion [C, C] int32 of this
    batch's training-mode predictions (summed over an epoch by the loop, on device).
    """
    dropout_rng = rng.stream(seed, "dropout", state.step)

    def loss_fn(params):
        out = model.apply(
            {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng}
        )
        per_example = losses.per_example_loss(out["logits"], batch["label"], loss_config)
        return losses.weighted_mean(per_example, batch["label"], class_weights), out["logits"]

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    predicted = jnp.argmax(logits, -1)
    confusion = metrics.confusion_matrix_jax(batch["label"], predicted, num_classes)
    return state, {**state_lib.step_metrics(loss, grads, batch), "confusion": confusion}


def eval_step(
    params: Any,
    batch: dict[str, jax.Array],
    valid: jax.Array,
    *,
    model: nn.Module,
    loss_config: ml_collections.ConfigDict,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({"loss_sum"} over valid rows, {"probs" [B, C], "view_weights" [B, V]})."""
    out = model.apply({"params": params}, batch["image"], train=False)
    per_example = losses.per_example_loss(out["logits"], batch["label"], loss_config)
    sums = {"loss_sum": jnp.sum(per_example * valid.astype(jnp.float32))}
    outputs = {"probs": jax.nn.softmax(out["logits"], axis=-1), "view_weights": out["view_weights"]}
    return sums, outputs


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    num_train: int | None = None,
    num_classes: int | None = None,
    class_weights: np.ndarray | None = None,
) -> parts_lib.Parts[Extras]:
    """Model, optimizer, sharded abstract state and jitted steps for `config` on `mesh`.

    Args:
      num_train: training-set size, which sets the epoch length and so the schedule; None
        (benchmark, evaluation) takes a nominal epoch of NOMINAL_STEPS_PER_EPOCH steps.
      num_classes: classes of the dataset; None takes `len(config.data.classes)`, the label set
        the model is trained with (recorded in its config and bundle).
      class_weights: [C] loss weights by class, or None for an unweighted mean.
    """
    if num_train is None:
        num_train = NOMINAL_STEPS_PER_EPOCH * config.train.global_batch_size
    schedule = parts_lib.epoch_schedule(config, num_train)
    if num_classes is None:
        num_classes = len(config.data.classes)
    model = model_lib.make_model(config, num_classes)
    tx = schedule.optimizer()
    init_fn = functools.partial(
        model_lib.init_state, model=model, tx=tx, image_shape=model_lib.input_shape(config)
    )
    step_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        loss_config=config.loss,
        class_weights=None if class_weights is None else jnp.asarray(class_weights),
        num_classes=num_classes,
        seed=config.seed,
    )
    eval_fn = functools.partial(eval_step, model=model, loss_config=config.loss)
    extras = Extras(num_classes=num_classes)
    return parts_lib.assemble(
        config, mesh, model, tx, init_fn, step_fn, eval_fn, schedule, extras=extras
    )


def with_pretrained_encoder(
    config: ml_collections.ConfigDict, parts: parts_lib.Parts, state: state_lib.TrainState
) -> state_lib.TrainState:
    """A fresh `state` with its encoder replaced by the timm weights of `config.model.pretrained`.

    Equal to `init_fn(rng, encoder_params=...)`: a fresh optimizer state holds no parameter
    values (zero moments), so only the parameters change. The weights are placed with the
    encoder's shardings instead of being traced into the init program as constants.
    """
    encoder = timm_import.load_encoder(
        config.model.pretrained,
        parts.abstract_state.params["encoder"],
        config.model.pos_embed_interpolation,
    )
    encoder = jax.device_put(encoder, parts.shardings.params["encoder"])
    return state.replace(params={**state.params, "encoder": encoder})


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, extras) for scripts/benchmark.py; no files.

    extras: images_per_step (batch * views; the benchmark turns it into images/s).
    """
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    batch_size = config.train.global_batch_size
    gen = np.random.default_rng(config.seed)
    batch = {
        "image": gen.standard_normal((batch_size, *model_lib.input_shape(config)), np.float32),
        "label": gen.integers(0, parts.extras.num_classes, batch_size).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
    }
    views = len(config.data.durations) if config.data.multi_view else 1
    extras = {"images_per_step": batch_size * views}
    return parts.train_step, state, mesh_lib.global_batch(batch, mesh), extras
