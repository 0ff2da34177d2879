"""Workdirs you can trust: the lock, verified restore with fallback, the NaN guard at save time,
the recorded config, metrics.jsonl after a resume, SIGTERM at any moment.

Fast tests run in-process on tiny states; the `slow` ones launch scripts/train.py as a user would
(a second train on a busy workdir, SIGTERM during startup, kill -9 then resume).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlab.core import checkpoint, loop
from jaxlab.core import config as config_lib
from jaxlab.core import lock as lock_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter, read_metrics
from jaxlab.data import pipeline
from tests.core import scripts_util


def _init_fn(rng):
    params = {"kernel": jax.random.normal(rng, (16, 8)), "bias": jnp.zeros((8,))}
    return state_lib.create_train_state(params, optax.adam(1e-3))


def _init_sharded(init_fn, rng, mesh, fsdp_min_size=2**18):
    """(state, shardings): `init_fn(rng)` under jit, every leaf born with its mesh sharding."""
    _, shardings = state_lib.abstract_state(init_fn, rng, mesh, fsdp_min_size)
    return jax.jit(init_fn, out_shardings=shardings)(rng), shardings


def _trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _iterator():
    source = [np.int32(i) for i in range(40)]
    return pipeline.train_iterator(source, global_batch_size=8, seed=0, process_count=1)


def _two_steps(directory):
    """Steps 1 and 2 saved with iterator, loop state and metrics; returns (target, states)."""
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    state, _ = _init_sharded(_init_fn, jax.random.key(0), mesh)
    target, _ = state_lib.abstract_state(_init_fn, jax.random.key(0), mesh)
    manager = checkpoint.make_manager(directory, max_to_keep=3, best_metric="eval_loss")
    it, states = _iterator(), {}
    for step in (1, 2):
        next(it)
        state = state.replace(
            step=state.step + 1, params=jax.tree.map(lambda p: p + 1, state.params)
        )
        states[step] = jax.device_get(state)
        checkpoint.save(manager, step, state, it, metrics={"eval_loss": 1.0 / step}, loop_state={})
    checkpoint.wait(manager)
    manager.close()
    return target, states


def _largest_file(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


def _flip_byte(path):
    with open(path, "rb+") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x10
        f.seek(0)
        f.write(data)


def _truncate(path):
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


CORRUPTIONS = {
    "bit_flip_in_array_bytes": (lambda d: _flip_byte(_largest_file(d + "/state")), "state"),
    "truncated_array_file": (lambda d: _truncate(_largest_file(d + "/state")), "state"),
    "deleted_item": (lambda d: __import__("shutil").rmtree(d + "/loop"), "loop"),
    "garbage_json": (lambda d: _write(d + "/loop/metadata", "{not json"), "loop"),
    "garbage_metrics": (lambda d: _write(d + "/metrics/metrics", "\x00garbage"), "metrics"),
    "edited_data_position": (
        lambda d: _write(d + "/data/process_0-of-1.json", '{"next_index": 0}'),
        "data",
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_step_falls_back_to_intact_one(tmp_path, kind):
    directory = str(tmp_path / "checkpoints")
    target, states = _two_steps(directory)
    corrupt, item = CORRUPTIONS[kind]
    corrupt(os.path.join(directory, "2"))

    status, problem = checkpoint.verify_step(directory, 2)
    assert status == "corrupt" and f"item '{item}'" in problem and directory in problem, problem
    read_only = checkpoint.make_manager(directory, read_only=True)  # evaluation: moves nothing
    if kind == "garbage_metrics":  # orbax cannot even list it: hidden from evaluation
        assert list(read_only.all_steps()) == [1]
    else:
        with pytest.raises(checkpoint.CorruptCheckpointError, match=rf"step 2.*item '{item}'"):
            checkpoint.restore(read_only, target, step=2)
    assert os.path.isdir(os.path.join(directory, "2"))

    manager = checkpoint.make_manager(directory, max_to_keep=3, best_metric="eval_loss")
    it = _iterator()
    step, state = checkpoint.restore_latest_intact(manager, target, it)
    assert step == 1
    _trees_equal(state, states[1])
    np.testing.assert_array_equal(next(it), next(_skip(_iterator(), 1)))  # position of step 1
    assert os.path.isdir(os.path.join(directory, "2.corrupt"))  # moved aside, not deleted
    assert list(manager.all_steps()) == [1]
    checkpoint.save(manager, 2, jax.tree.map(jnp.asarray, states[2]), it)  # resumes cleanly
    checkpoint.wait(manager)
    assert checkpoint.verify_step(directory, 2) == ("ok", "")


def _skip(it, n):
    for _ in range(n):
        next(it)
    return it


def test_unverified_step_still_falls_back_and_intact_mismatch_is_a_config_error(tmp_path):
    directory = str(tmp_path / "checkpoints")
    target, states = _two_steps(directory)
    os.remove(os.path.join(directory, "2", "checksums.json"))  # e.g. written before checksums
    _truncate(_largest_file(os.path.join(directory, "2", "state")))
    manager = checkpoint.make_manager(directory)
    step, state = checkpoint.restore_latest_intact(manager, target)
    assert step == 1
    _trees_equal(state, states[1])

    wrong = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((3,) + x.shape, x.dtype, sharding=x.sharding), target
    )
    with pytest.raises(ValueError, match="intact.*another model or optimizer config"):
        checkpoint.restore_latest_intact(manager, wrong)
    assert list(manager.all_steps()) == [1]  # a config mismatch moves nothing aside


def test_nan_state_is_not_saved_and_the_finite_checkpoint_survives_retention(tmp_path):
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    state, _ = _init_sharded(_init_fn, jax.random.key(0), mesh)
    target, _ = state_lib.abstract_state(_init_fn, jax.random.key(0), mesh)
    manager = checkpoint.make_manager(str(tmp_path), max_to_keep=1)
    checkpoint.save(manager, 1, state)
    bad = state.replace(params={**state.params, "bias": state.params["bias"].at[3].set(jnp.nan)})
    with pytest.raises(loop.NonFiniteError, match=r"step 2 in .*'bias'.*step 1 is kept"):
        checkpoint.save(manager, 2, bad)
    with pytest.raises(loop.NonFiniteError, match=r"metrics\['eval_loss'\]"):
        checkpoint.save(manager, 3, state, metrics={"eval_loss": float("inf")})
    assert list(manager.all_steps()) == [1]
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]  # no abandoned save
    _trees_equal(checkpoint.restore(manager, target), state)


def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    workdir = str(tmp_path)
    held = lock_lib.acquire(workdir)
    with pytest.raises(lock_lib.WorkdirLockedError, match=rf"pid {os.getpid()} on host"):
        lock_lib.acquire(workdir)
    # The holder recorded is a process that is gone (a child inherited the descriptor): stale.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    _write(held.path, json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    taken = lock_lib.acquire(workdir)
    assert _read_json(taken.path)["pid"] == os.getpid()
    held.release()
    taken.release()
    assert os.path.getsize(taken.path) == 0  # released cleanly
    lock_lib.acquire(workdir).release()


def _config(batch_size=16):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.train = ml_collections.ConfigDict(
        {"global_batch_size": batch_size, "num_steps": 10, "allow_config_change": False}
    )
    config.model = ml_collections.ConfigDict({"hidden": (16,), "dtype": "float32"})
    return config


def test_config_change_on_resume_names_the_keys(tmp_path):
    workdir = str(tmp_path)
    config_lib.check_resume(_config(), workdir)
    config_lib.check_resume(_config(batch_size=32), workdir)  # no checkpoint yet: a new run
    os.makedirs(os.path.join(workdir, "checkpoints", "5"))
    changed = _config(batch_size=16)
    changed.train.num_steps = 20  # harmless: logged
    changed.model.dtype = "bfloat16"
    with pytest.raises(
        ValueError,
        match=r"model.dtype: 'float32' -> 'bfloat16'; train.global_batch_size: 32 -> 16\.",
    ):
        config_lib.check_resume(changed, workdir)
    assert _read_json(os.path.join(workdir, "config.json"))["train"]["global_batch_size"] == 32
    changed.train.allow_config_change = True
    config_lib.check_resume(changed, workdir)
    assert _read_json(os.path.join(workdir, "config.json"))["model"]["dtype"] == "bfloat16"


def test_metrics_drop_a_torn_line_and_steps_after_the_restored_one(tmp_path):
    workdir = str(tmp_path)
    with MetricWriter(workdir) as writer:
        for step in range(1, 6):
            writer.write_scalars(step, {"loss": float(step)})
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    with MetricWriter(workdir) as writer:
        writer.truncate_after(3)  # the checkpoint the run resumes from
        writer.write_scalars(4, {"loss": 40.0})
    assert [(m["step"], m["loss"]) for m in read_metrics(workdir)] == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 40.0),
    ]


def _wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not predicate():
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[0][-3000:]


def _locked(workdir):
    path = os.path.join(workdir, lock_lib.LOCK_FILE)
    return os.path.exists(path) and os.path.getsize(path) > 0


@pytest.mark.slow
def test_second_train_on_a_busy_workdir_and_sigterm_during_startup(tmp_path):
    workdir = str(tmp_path / "busy")
    long_run = ("--config.train.num_steps=1000000", "--config.train.eval_every=0")
    first = scripts_util.start("train.py", "example.py:tiny", workdir, *long_run, num_devices=1)
    _wait_for(lambda: _locked(workdir), first)
    second = scripts_util.run("train.py", "example.py:tiny", workdir, *long_run, num_devices=1)
    assert second.returncode == 1
    assert f"in use by another training run (pid {first.pid} on host" in second.stdout
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and "Preempted: checkpointed step" in output, output[-3000:]

    startup = str(tmp_path / "startup")
    process = scripts_util.start("train.py", "example.py:tiny", startup, num_devices=1)
    _wait_for(lambda: _locked(startup), process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "nothing to save" in output and "Traceback" not in output
    assert not os.path.exists(os.path.join(startup, "checkpoints", "10"))


def _train_rows(workdir):
    rows = [m for m in read_metrics(workdir) if "data_checksum" in m]
    return {m["step"]: m for m in rows}, [m["step"] for m in rows]


@pytest.mark.slow
def test_kill_9_then_resume_records_each_step_once_and_matches(tmp_path):
    overrides = (
        "--config.train.num_steps=150",
        "--config.train.log_every=1",
        "--config.train.ckpt_every=50",
        "--config.train.eval_every=0",
    )
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    result = scripts_util.run("train.py", "example.py:tiny", reference, *overrides, num_devices=1)
    assert result.returncode == 0, result.stdout[-3000:]

    process = scripts_util.start("train.py", "example.py:tiny", killed, *overrides, num_devices=1)
    committed = os.path.join(killed, "checkpoints", "50")
    _wait_for(lambda: os.path.isdir(committed) and len(read_metrics(killed)) >= 60, process)
    process.kill()
    process.communicate(timeout=60)
    result = scripts_util.run("train.py", "example.py:tiny", killed, *overrides, num_devices=1)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Restored step 50" in result.stdout and "dropped" in result.stdout
    assert "ended without releasing the workdir" in result.stdout

    want, _ = _train_rows(reference)
    got, order = _train_rows(killed)
    assert order == list(range(1, 151))  # one record per step, in order
    for step in order:
        assert got[step]["loss"] == want[step]["loss"], step
        assert got[step]["data_checksum"] == want[step]["data_checksum"], step


def test_sigterm_inside_a_gc_callback_stops_the_run_at_the_loop(monkeypatch):
    """A SIGTERM handled inside a garbage-collection callback (where a raised SystemExit would be
    printed and ignored, and training would go on) is recorded and ends the run at the loop."""
    import gc

    from jaxlab.core import loop
    from jaxlab.core import workdir as workdir_lib

    monkeypatch.setattr(loop, "SIGNALLED_BEFORE_LOOP", [])
    calls = []

    def callback(phase, info):
        if phase == "start" and not calls:
            calls.append(phase)
            workdir_lib._sigterm_before_loop(signal.SIGTERM, sys._getframe())

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert calls and loop.SIGNALLED_BEFORE_LOOP == [signal.SIGTERM]
    with pytest.raises(SystemExit) as exit_info, loop.Preemption():
        pass
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit):  # outside a gc callback the handler exits at once
        workdir_lib._sigterm_before_loop(signal.SIGTERM, sys._getframe())
