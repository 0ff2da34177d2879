"""Preemption and early stopping of the glitch loop, in-process on the `tiny` config.

A run that receives a real SIGTERM mid-epoch and is rerun must be the uninterrupted run bit for
bit: parameters, per-step losses, epoch metrics (including the interrupted epoch's) and where it
stops. Early stopping is driven by a planted validation-accuracy curve so the stopping epoch and
the best checkpoint are known in advance.

The runs of a test share their jitted functions (`_share_compiles`): rebuilding them compiles the
same programs again (several CPU-seconds each) and does not change what is checked, which is that
everything the loop carries across a restart is saved and restored exactly.
"""

import importlib
import itertools
import os
import signal

import jax
import numpy as np
import pytest

import jaxlab.glitch as glitch_task
from jaxlab.configs import glitch as glitch_config
from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import read_metrics
from jaxlab.glitch import train

# The module (jaxlab.glitch.evaluate is the function of the same name).
evaluate_lib = importlib.import_module("jaxlab.glitch.evaluate")

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
    """Within a test, `build`, `make_train_step` and `make_eval_step` return their first result
    for the same arguments, so the runs of the test reuse one set of compiled programs."""
    build, make_train_step, make_eval_step = (
        train.build,
        train.make_train_step,
        evaluate_lib.make_eval_step,
    )
    cache = {}

    def memo(key, fn, *args):
        if key not in cache:
            cache[key] = fn(*args)
        return cache[key]

    def shared_build(config, num_classes, num_train):
        key = ("build", config.to_json_best_effort(), num_classes, num_train)
        return memo(key, build, config, num_classes, num_train)

    def shared_train_step(config, model, tx, shardings, mesh, num_classes, class_weights=None):
        key = ("train_step", id(model), id(tx), num_classes, class_weights is None)
        args = (config, model, tx, shardings, mesh, num_classes, class_weights)
        return memo(key, make_train_step, *args)

    def shared_eval_step(model, mesh, loss_config):
        return memo(("eval_step", id(model)), make_eval_step, model, mesh, loss_config)

    monkeypatch.setattr(train, "build", shared_build)
    monkeypatch.setattr(train, "make_train_step", shared_train_step)
    monkeypatch.setattr(train, "make_eval_step", shared_eval_step)
    monkeypatch.setattr(evaluate_lib, "make_eval_step", shared_eval_step)


def _sigterm_after_step(monkeypatch, at_step: int) -> None:
    """The next run sends itself SIGTERM right after dispatching step `at_step` (from step 1)."""
    make_train_step = train.make_train_step

    def make_with_signal(*args, **kwargs):
        step_fn = make_train_step(*args, **kwargs)
        calls = itertools.count(1)

        def step(state, batch):
            out = step_fn(state, batch)
            if next(calls) == at_step:
                os.kill(os.getpid(), signal.SIGTERM)  # caught by loop.Preemption
            return out

        return step

    monkeypatch.setattr(train, "make_train_step", make_with_signal)


def _saved_steps(workdir: str) -> list[int]:
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def _latest_params(config, workdir: str):
    mesh = mesh_lib.make_mesh(config.mesh)
    _, _, init_fn, _, _ = train.build(config, 22, 195)
    target, _ = state_lib.abstract_state(init_fn, jax.random.key(0), mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    state = checkpoint.restore(manager, target)
    manager.close()
    return jax.device_get(state.params)


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

    def planted(step, params, source, mesh, batch_size):
        del step, params, source, mesh, batch_size
        correct = round(20 * PLANTED[next(epochs)])
        confusion = np.zeros((22, 22), np.int64)
        confusion[0, 0], confusion[0, 1] = correct, 20 - correct
        return {"confusion": confusion, "loss": 1.0 - correct / 20}

    monkeypatch.setattr(train, "predict_split", planted)


def test_sigterm_resume_is_bitwise_and_early_stopping_survives_it(tmp_path, monkeypatch):
    config = _config(str(tmp_path / "data"), num_epochs=len(PLANTED))
    config.train.patience = 3
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
    assert train.read_loop_states(split)[stop_at]["epoch_steps"] == 2
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
    assert glitch_task.evaluate(config, full)["checkpoint_step"] == 4 * STEPS_PER_EPOCH


def test_loop_state_file_is_atomic_and_drops_later_steps(tmp_path):
    workdir = str(tmp_path)
    for step in (4, 8, 10):
        train.write_loop_state(workdir, step, {"best_val": step / 10})
    assert sorted(train.read_loop_states(workdir)) == [4, 8, 10]
    # A rerun from step 8 that saves step 9: the stale step-10 entry (its checkpoint never
    # committed) goes, and no temporary file is left behind.
    train.write_loop_state(workdir, 9, {"best_val": 0.9})
    assert train.read_loop_states(workdir) == {
        4: {"best_val": 0.4},
        8: {"best_val": 0.8},
        9: {"best_val": 0.9},
    }
    assert os.listdir(workdir) == [train.LOOP_STATE]
