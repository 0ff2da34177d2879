"""Preemption and early stopping of the glitch loop, in-process on the `tiny` config.

A run that receives a real SIGTERM mid-epoch and is rerun must be the uninterrupted run bit for
bit: parameters, per-step losses, epoch metrics (including the interrupted epoch's) and where it
stops. Early stopping is driven by a planted validation-accuracy curve so the stopping epoch and
the best checkpoint are known in advance.

The runs use 2 of the 8 fake devices (`_two_devices`) and share their jitted functions
(`_share_compiles`): rebuilding them compiles the same programs again (several CPU-seconds each)
and does not change what is checked, which is that everything the loop carries across a restart
is saved and restored exactly.
"""

import dataclasses
import itertools
import logging
import os
import signal

import jax
import numpy as np
import pytest

from jaxlab.configs import glitch as glitch_config
from jaxlab.core import checkpoint, restore
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.glitch import evaluate, steps, train
from tests.conftest import pin_config_meshes

BATCH = 48  # 195 tiny training samples: 4 steps per epoch
STEPS_PER_EPOCH = 195 // BATCH


def _config(data_dir: str, num_epochs: int):
    config = glitch_config.get_config("tiny")
    config.data.dir = data_dir  # one synthetic dataset shared by the runs of a test
    config.train.global_batch_size = BATCH
    config.train.num_epochs = num_epochs
    config.train.log_every = 1
    return config


@pytest.fixture(autouse=True)
def _share_compiles(monkeypatch):
    """Within a test, `steps.build` returns its first `Parts` for the same arguments, so the runs
    of the test reuse one set of compiled programs."""
    build, cache = steps.build, {}

    def shared_build(config, mesh, **kwargs):
        weights = kwargs.get("class_weights")
        key = (
            config.to_json_best_effort(),
            mesh.devices.shape,
            kwargs.get("num_train"),
            kwargs.get("num_classes"),
            None if weights is None else tuple(weights),
        )
        if key not in cache:
            cache[key] = build(config, mesh, **kwargs)
        return cache[key]

    monkeypatch.setattr(steps, "build", shared_build)


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch):
    """The runs draw no per-epoch confusion-matrix figure (18 of them, 0.15 CPU-seconds
    each): figures never feed back into the state, the logs or the checkpoints compared here,
    and tests/glitch/test_train.py trains with them."""
    monkeypatch.setattr(train, "figure", lambda *args, **kwargs: {})


@pytest.fixture(autouse=True)
def _two_devices(monkeypatch):
    """Meshes span 2 of the 8 fake devices: resume and early stopping are this file's subject,
    not sharding, and a tiny ViT step on 8 fake CPU devices costs more than on 2."""
    pin_config_meshes(monkeypatch, 2)


def _sigterm_after_step(monkeypatch, at_step: int) -> None:
    """The next run sends itself SIGTERM right after dispatching step `at_step` (from step 1)."""
    build = steps.build

    def build_with_signal(*args, **kwargs):
        parts = build(*args, **kwargs)
        calls = itertools.count(1)

        def step(state, batch):
            out = parts.train_step(state, batch)
            if next(calls) == at_step:
                os.kill(os.getpid(), signal.SIGTERM)  # caught by loop.Preemption
            return out

        return dataclasses.replace(parts, train_step=step)

    monkeypatch.setattr(steps, "build", build_with_signal)


def _saved_steps(workdir: str) -> list[int]:
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def _latest_params(config, workdir: str):
    parts = steps.build(config, mesh_lib.make_mesh(config.mesh), num_train=195, num_classes=22)
    state, _ = restore.restore_for_eval(config, workdir, parts, which="latest")
    return jax.device_get(state.params)


def _loop_state(workdir: str, step: int):
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    loop_state = checkpoint.restore_loop_state(manager, step)
    manager.close()
    return loop_state


def _logged(workdir: str):
    """(per-step records, per-epoch records) with the wall-clock rates left out."""
    timing = {"steps_per_sec", "examples_per_sec"}
    records = [{k: v for k, v in m.items() if k not in timing} for m in read_metrics(workdir)]
    steps = [m for m in records if "loss" in m]
    epochs = [m for m in records if "epoch" in m]
    return steps, epochs


# Validation accuracy by epoch: best at epoch 2, a tie at epoch 4 (not an improvement), and
# improvements from epoch 6 that a run which failed to stop at epoch 5 would log.
PLANTED = (0.2, 0.5, 0.4, 0.5, 0.3, 0.6, 0.7, 0.8)


def _plant_val_accuracy(monkeypatch, epochs) -> None:
    """Validation inside train_and_evaluate returns PLANTED[next(epochs)] as its accuracy."""

    def planted(eval_step, params, source, mesh, batch_size):
        del eval_step, params, source, mesh, batch_size
        correct = round(20 * PLANTED[next(epochs)])
        confusion = np.zeros((22, 22), np.int64)
        confusion[0, 0], confusion[0, 1] = correct, 20 - correct
        return {"confusion": confusion, "loss": 1.0 - correct / 20}

    monkeypatch.setattr(evaluate, "predict_split", planted)


@pytest.mark.slow  # five in-process training runs of the tiny config
def test_sigterm_resume_is_bitwise_and_early_stopping_survives_it(tmp_path, monkeypatch, caplog):
    config = _config(str(tmp_path / "data"), num_epochs=len(PLANTED))
    config.eval.early_stopping_patience = 3
    config.train.max_to_keep = 1  # only the latest and the best by val_accuracy are kept
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    last_step = 5 * STEPS_PER_EPOCH

    # Uninterrupted: stops after epoch 5, three epochs after the best (epoch 2).
    with monkeypatch.context() as m:
        _plant_val_accuracy(m, itertools.count())
        expected = train.train_and_evaluate(config, full)
    assert expected["stopped_epoch"] == 5 and expected["best_val_accuracy"] == 0.5
    full_steps, full_epochs = _logged(full)
    assert [e["val_accuracy"] for e in full_epochs] == list(PLANTED[:5])
    names = ("loss", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted")
    assert all(f"{s}_{n}" in e for e in full_epochs for s in ("train", "val") for n in names)
    assert [m["step"] for m in full_steps] == list(range(1, last_step + 1))
    # Kept: epoch 5 (latest) and epoch 4, the later of the two best (orbax's BestN keeps it).
    assert _saved_steps(full) == [4 * STEPS_PER_EPOCH, last_step]

    # SIGTERM two steps into epoch 5, after the tie at epoch 4; then rerun. The resumed run must
    # count patience from epoch 2 (the kept checkpoints alone would say epoch 4 and run on), and
    # log epoch 5's train metrics over all its steps, those before the restart included.
    stop_at = 4 * STEPS_PER_EPOCH + 2
    epochs = itertools.count()  # one validation curve across both parts
    with monkeypatch.context() as m:
        _plant_val_accuracy(m, epochs)
        _sigterm_after_step(m, stop_at)
        train.train_and_evaluate(config, split)
    assert _saved_steps(split)[-1] == stop_at
    assert max(s["step"] for s in _logged(split)[0]) == stop_at
    saved = _loop_state(split, stop_at)  # committed with the checkpoint, no side file
    window = saved["train_window"]  # the epoch's train-metric sums so far
    assert window["steps"] == 2 and len(window["sums"]["confusion"]["value"]) == 22
    assert saved["early_stopping"]["best_at"] == 2 * STEPS_PER_EPOCH
    assert saved["early_stopping"]["bad_evals"] == 2
    assert "loop_state.json" not in os.listdir(split)  # the side file of earlier versions
    with monkeypatch.context() as m:
        _plant_val_accuracy(m, epochs)
        assert train.train_and_evaluate(config, split) == expected
    split_steps, split_epochs = _logged(split)
    assert split_steps == full_steps  # loss, grad_norm, data_checksum, lr at every step
    assert split_epochs == full_epochs
    jax.tree.map(
        np.testing.assert_array_equal, _latest_params(config, split), _latest_params(config, full)
    )

    # A rerun of a stopped run trains no further.
    with monkeypatch.context() as m:
        _plant_val_accuracy(m, itertools.count(5))
        assert train.train_and_evaluate(config, full)["stopped_epoch"] == 5
    assert _saved_steps(full)[-1] == last_step
    assert _logged(full) == (full_steps, full_epochs)

    # evaluate's default (eval.checkpoint = "best") restores the best, not the latest, step.
    assert evaluate.evaluate(config, full)["checkpoint_step"] == 4 * STEPS_PER_EPOCH

    # A checkpoint saved without loop state (by an older version) restarts early stopping, with a
    # warning: interrupted after epoch 2 (best 0.5), the rerun counts from scratch (best 0.4 at
    # epoch 3, then 0.5), so only epoch 5 is bad and it trains through to epoch 8.
    old = str(tmp_path / "old")
    save = checkpoint.save

    def save_without_loop_state(*args, **kwargs):
        save(*args, **{**kwargs, "loop_state": None})

    with monkeypatch.context() as m:
        _plant_val_accuracy(m, itertools.count())
        _sigterm_after_step(m, 2 * STEPS_PER_EPOCH)
        m.setattr(checkpoint, "save", save_without_loop_state)
        train.train_and_evaluate(config, old)
    assert _loop_state(old, 2 * STEPS_PER_EPOCH) is None
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING):
        _plant_val_accuracy(m, itertools.count(2))
        restarted = train.train_and_evaluate(config, old)
    assert "holds no loop state" in caplog.text
    assert restarted["stopped_epoch"] == len(PLANTED) and restarted["best_val_accuracy"] == 0.8
