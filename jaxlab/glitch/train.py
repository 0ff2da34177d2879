"""Training loop of the glitch classifier: epochs, per-epoch validation, early stopping.

Stages: logging, mesh, input, model + optimizer, state (restored or initialised, optionally with
timm weights), step, loop. Once per epoch the loop logs train and validation loss, accuracy,
balanced accuracy and F1 (macro, weighted), saves a checkpoint carrying `val_accuracy` (the
manager keeps the best by it and the latest ones) and stops after `train.patience` epochs without
a better validation accuracy. A SIGTERM checkpoints the current step and exits; rerunning resumes.

What the loop carries between steps besides the `TrainState` (the early-stopping state and the
current epoch's train-metric accumulators) goes to `workdir/loop_state.json`, one entry per saved
step, written atomically before that step's checkpoint. A resumed run therefore stops at the same
epoch and logs the same epoch metrics as an uninterrupted one.
"""

from __future__ import annotations

import copy
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
from jaxlab.data import pipeline
from jaxlab.glitch import data, losses, metrics, timm_import
from jaxlab.glitch import model as model_lib
from jaxlab.glitch.evaluate import make_eval_step, predict_split

LOOP_STATE = "loop_state.json"


def read_loop_states(workdir: str) -> dict[int, dict[str, Any]]:
    """{step: loop state} from `workdir/loop_state.json` ({} when there is none)."""
    return checkpoint.read_step_entries(os.path.join(workdir, LOOP_STATE))


def write_loop_state(workdir: str, step: int, entry: dict[str, Any]) -> None:
    """Adds `step`'s entry to loop_state.json; called before the step's checkpoint is saved."""
    checkpoint.write_step_entry(os.path.join(workdir, LOOP_STATE), step, entry)


def initial_loop_state(workdir: str, manager: Any, step: int, steps_per_epoch: int) -> dict:
    """The loop state saved with checkpoint `step`; a fresh one at step 0.

    Checkpoints written without loop_state.json (older runs) fall back to the best kept
    checkpoint's val_accuracy; that ignores ties and the partial epoch's train metrics.
    """
    fresh = {
        "stopped": False,
        "best_val": -1.0,
        "best_epoch": 0,
        "epoch_loss": 0.0,
        "epoch_steps": 0,
        "epoch_confusion": None,
        "val_record": {},
    }
    if step == 0:
        return fresh
    states = read_loop_states(workdir)
    if step in states:
        return {**fresh, **states[step]}
    logging.warning(
        "No entry for step %d in %s; early stopping state is approximate.", step, LOOP_STATE
    )
    best = checkpoint.best_step(manager, "val_accuracy", "max")
    if best is not None:
        fresh["best_val"] = float(manager.metrics(best)["val_accuracy"])
        fresh["best_epoch"] = best // steps_per_epoch
    return fresh


def schedule(
    config: ml_collections.ConfigDict, num_train: int
) -> tuple[int, int, ml_collections.ConfigDict]:
    """(num_steps, steps_per_epoch, optim config with warmup_steps from train.warmup_epochs)."""
    tc = config.train
    steps_per_epoch = num_train // tc.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{num_train} training samples make no batch of {tc.global_batch_size}; lower "
            "config.train.global_batch_size."
        )
    num_steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * steps_per_epoch
    optim_config = copy.deepcopy(config.optim)
    optim_config.warmup_steps = min(tc.warmup_epochs * steps_per_epoch, num_steps - 1)
    return num_steps, steps_per_epoch, optim_config


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: Any,
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
    dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
        out = model.apply(
            {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng}
        )
        per_example = losses.per_example_loss(out["logits"], batch["label"], loss_config)
        return losses.weighted_mean(per_example, batch["label"], class_weights), out["logits"]

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    step_metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "data_checksum": jnp.sum(batch["index"]),
        "confusion": metrics.confusion_matrix_jax(
            batch["label"], jnp.argmax(logits, -1), num_classes
        ),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def make_train_step(config, model, tx, shardings, mesh, num_classes, class_weights=None):
    """`train_step` jitted once with explicit shardings; the input state is donated."""
    return jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            loss_config=config.loss,
            class_weights=None if class_weights is None else jnp.asarray(class_weights),
            num_classes=num_classes,
            seed=config.seed,
        ),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def build(config, num_classes: int, num_train: int):
    """(model, tx, init_fn, num_steps, optim_config) shared by train, evaluate and benchmark."""
    num_steps, _, optim_config = schedule(config, num_train)
    model = model_lib.make_model(config, num_classes)
    tx = optim.make_optimizer(optim_config, num_steps)
    init_fn = functools.partial(
        model_lib.init_state, model=model, tx=tx, image_shape=model_lib.input_shape(config)
    )
    return model, tx, init_fn, num_steps, optim_config


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch, extras) for scripts/benchmark.py; no files.

    extras: images_per_step (batch * views; the benchmark turns it into images/s).
    """
    batch_size = config.train.global_batch_size
    num_classes = 22
    model, tx, init_fn, _, _ = build(config, num_classes, num_train=100 * batch_size)
    state, shardings = state_lib.init_sharded(init_fn, jax.random.key(config.seed), mesh)
    rng = np.random.default_rng(config.seed)
    batch = {
        "image": rng.standard_normal((batch_size, *model_lib.input_shape(config)), np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
    }
    step_fn = make_train_step(config, model, tx, shardings, mesh, num_classes)
    views = len(config.data.durations) if config.data.multi_view else 1
    extras = {"images_per_step": batch_size * views}
    return step_fn, state, mesh_lib.global_batch(batch, mesh), extras


def shift_augment(max_shift: int):
    """A random time shift (columns) of up to `max_shift` pixels, edges repeated."""

    def augment(record: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        shift = int(rng.integers(-max_shift, max_shift + 1))
        if shift == 0:
            return record
        image = record["image"]
        axis = image.ndim - 2  # width axis of [..., S, S, 3]
        index = np.clip(np.arange(image.shape[axis]) - shift, 0, image.shape[axis] - 1)
        return {**record, "image": np.take(image, index, axis=axis)}

    return augment


def epoch_record(prefix: str, confusion: np.ndarray, loss: float) -> dict[str, float]:
    return {
        f"{prefix}_loss": loss,
        **{f"{prefix}_{k}": v for k, v in metrics.summary(confusion).items()},
    }


def initial_state(config, manager, target, shardings, init_fn, rng, train_iter):
    """Restored from the workdir, else initialised (with timm encoder weights if configured)."""

    def init():
        if not config.model.pretrained:
            return jax.jit(init_fn, out_shardings=shardings)(rng)
        encoder = timm_import.load_encoder(
            config.model.pretrained, target.params["encoder"], config.model.pos_embed_interpolation
        )
        logging.info("Encoder initialised from %s", config.model.pretrained)
        init_with = lambda r, e: init_fn(r, encoder_params=e)  # noqa: E731
        return jax.jit(init_with, out_shardings=shardings)(rng, encoder)

    return checkpoint.restore_or_init(manager, target, init, train_iter)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains for `train.num_epochs` (or until early stopping), resuming from `workdir`.

    Returns the last epoch's validation metrics plus best_val_accuracy and stopped_epoch.
    """
    tc = config.train
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input.
    data_dir = data.prepare(config, workdir)
    train_source = data.load(config, data_dir, "train")
    val_source = data.load(config, data_dir, "validation")
    num_classes = len(train_source.classes)
    logging.info(
        "%d classes; %d train / %d validation samples",
        num_classes,
        len(train_source),
        len(val_source),
    )
    random_transform = (
        shift_augment(config.data.augment_max_shift) if config.data.augment_max_shift else None
    )
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=tc.global_batch_size,
        seed=config.seed,
        random_transform=random_transform,
        num_threads=config.data.num_threads,
    )
    class_weights = None
    if config.data.use_class_weights:
        class_weights = data.class_weights(train_source.labels, num_classes)
        logging.info("Class weights: %s", np.round(class_weights, 3).tolist())

    # Model, optimizer and state.
    model, tx, init_fn, num_steps, optim_config = build(config, num_classes, len(train_source))
    steps_per_epoch = len(train_source) // tc.global_batch_size
    rng = jax.random.key(config.seed)
    target, shardings = state_lib.abstract_state(init_fn, rng, mesh, config.fsdp_min_size)
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=tc.max_to_keep,
        best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode,
        keep_best=tc.keep_best,
        async_save=tc.async_checkpoint,
    )
    state = initial_state(config, manager, target, shardings, init_fn, rng, train_iter)
    logging.info("Parameters: %d", state_lib.param_count(state.params))

    # Step.
    step_fn = make_train_step(config, model, tx, shardings, mesh, num_classes, class_weights)
    eval_step_fn = make_eval_step(model, mesh, config.loss)
    lr_fn = jax.jit(functools.partial(optim.current_learning_rate, optim_config, num_steps))

    # Early stopping state and the epoch's train-metric accumulators, as saved with the checkpoint.
    start_step = int(state.step)
    resumed = initial_loop_state(workdir, manager, start_step, steps_per_epoch)
    best_val, best_epoch = resumed["best_val"], resumed["best_epoch"]
    val_record: dict[str, float] = resumed["val_record"]
    epoch_confusion = jnp.zeros((num_classes, num_classes), jnp.int32)
    if resumed["epoch_confusion"] is not None:
        epoch_confusion = jnp.asarray(resumed["epoch_confusion"], jnp.int32)
    epoch_loss = jnp.asarray(resumed["epoch_loss"], jnp.float32)
    epoch_steps = resumed["epoch_steps"]

    def loop_state(stopped: bool, partial_epoch: bool) -> dict[str, Any]:
        """What the loop needs besides the TrainState to go on exactly (host values)."""
        return {
            "stopped": stopped,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "epoch_loss": float(jax.device_get(epoch_loss)),
            "epoch_steps": epoch_steps,
            "epoch_confusion": jax.device_get(epoch_confusion).tolist() if partial_epoch else None,
            "val_record": val_record,
        }

    # Loop.
    progress = loop.Progress(num_steps, tc.global_batch_size, start_step)
    profile = loop.ProfileWindow(tc.profile_start, tc.profile_stop, os.path.join(workdir, "tb"))
    epoch = start_step // steps_per_epoch
    throttle = loop.StepThrottle(tc.max_in_flight)
    if resumed["stopped"]:
        logging.info(
            "Early stopped at epoch %d (best %.4f at epoch %d).", epoch, best_val, best_epoch
        )
    first_step = num_steps + 1 if resumed["stopped"] else start_step + 1
    with loop.Preemption() as preemption:
        for step in range(first_step, num_steps + 1):
            profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, step_metrics = step_fn(state, batch)
            throttle(step_metrics["loss"])
            epoch_confusion = epoch_confusion + step_metrics["confusion"]  # on device
            epoch_loss, epoch_steps = epoch_loss + step_metrics["loss"], epoch_steps + 1

            preempted = preemption.requested(step)
            end_of_epoch = step % steps_per_epoch == 0
            if loop.every(step, tc.log_every) or end_of_epoch or preempted:
                scalars = jax.device_get(
                    {k: v for k, v in step_metrics.items() if k != "confusion"}
                )
                loop.check_finite(step, scalars)
                lr = lr_fn(state.opt_state, state.step)
                writer.write_scalars(step, {**scalars, **progress.report(step, scalars), "lr": lr})

            stopped = False
            if end_of_epoch:
                epoch = step // steps_per_epoch
                train_record = epoch_record(
                    "train", jax.device_get(epoch_confusion), float(epoch_loss) / epoch_steps
                )
                val = predict_split(
                    eval_step_fn, state.params, val_source, mesh, config.eval.global_batch_size
                )
                val_record = epoch_record("val", val["confusion"], val["loss"])
                writer.write_scalars(step, {"epoch": epoch, **train_record, **val_record})
                epoch_confusion = jnp.zeros_like(epoch_confusion)
                epoch_loss, epoch_steps = jnp.zeros((), jnp.float32), 0
                if val_record["val_accuracy"] > best_val:
                    best_val, best_epoch = val_record["val_accuracy"], epoch
                elif epoch - best_epoch >= tc.patience:
                    logging.info(
                        "Early stopping at epoch %d: val_accuracy %.4f has not improved on %.4f "
                        "(epoch %d) for %d epochs.",
                        epoch,
                        val_record["val_accuracy"],
                        best_val,
                        best_epoch,
                        tc.patience,
                    )
                    stopped = True
                write_loop_state(workdir, step, loop_state(stopped, partial_epoch=False))
                checkpoint.save(
                    manager,
                    step,
                    state,
                    train_iter,
                    metrics={"val_accuracy": val_record["val_accuracy"]},
                )
            elif preempted:
                write_loop_state(workdir, step, loop_state(False, partial_epoch=True))
                checkpoint.save(manager, step, state, train_iter)
            if stopped:
                break
            if preempted:
                logging.warning("Preempted: checkpointed step %d, exiting.", step)
                break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return {**val_record, "best_val_accuracy": best_val, "stopped_epoch": epoch}
