"""The core driven end to end by its tiny regression task (jaxlab/example).

Fast tests run in-process; the `slow` ones launch scripts/train.py and scripts/evaluate.py as a
user or a cluster launcher would: SIGTERM + resume, several processes, another device count.
"""

import functools
import json
import os
import signal
import socket
import time

import chex
import jax
import pytest

from jaxlab.configs import example as example_config
from jaxlab.core import checkpoint, loop, rng, steps_jit
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core.writer import read_metrics
from jaxlab.data import pipeline
from jaxlab.example import data, evaluate, steps, train
from tests.conftest import pin_config_meshes
from tests.core import scripts_util


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def tiny_config(**train_overrides):
    config = example_config.get_config("tiny")
    config.train.update(train_overrides)
    return config


def _state_and_step(config, mesh):
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    return state, parts.train_step


def _batches(config, workdir, count):
    source = data.load(data.prepare(config, workdir), "train")
    it = pipeline.train_iterator(
        source, global_batch_size=config.train.global_batch_size, seed=0, process_count=1
    )
    return [next(it) for _ in range(count)], source.num_features


def test_sharded_step_equals_single_device_step(tmp_path):
    config = tiny_config()
    batches, _ = _batches(config, str(tmp_path), 3)
    params = {}
    for name, devices in (("8", jax.devices()), ("1", jax.devices()[:1])):
        mesh = mesh_lib.make_mesh([("data", -1)], devices=devices)
        state, step = _state_and_step(config, mesh)
        for batch in batches:
            state, _ = step(state, mesh_lib.global_batch(batch, mesh))
        params[name] = jax.device_get(state.params)
    assert jax.tree.leaves(params["8"])  # non-empty
    chex.assert_trees_all_close(params["8"], params["1"], rtol=1e-5, atol=1e-6)


def test_train_step_compiles_once(tmp_path):
    config = tiny_config()
    batches, _ = _batches(config, str(tmp_path), 4)
    mesh = mesh_lib.make_mesh([("data", -1)])
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, jax.random.key(0))
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(steps.train_step, n=1)
    step = steps_jit.jit_train_step(
        functools.partial(counted, model=parts.model, tx=parts.optimizer), parts.shardings, mesh
    )
    for batch in batches:  # a second trace would raise AssertionError
        state, _ = step(state, mesh_lib.global_batch(batch, mesh))
    assert int(state.step) == len(batches)


def test_train_learns_planted_signal_and_evaluate_restores_best(tmp_path):
    config = tiny_config(num_steps=150, eval_every=50, ckpt_every=50, log_every=25)
    config.optim.lr = 3e-2
    workdir = str(tmp_path)
    final = train.train_and_evaluate(config, workdir)

    result = evaluate.evaluate(config, workdir)
    assert result["eval_mse"] < 0.35 * result["baseline_mse"], result
    logged = [m for m in read_metrics(workdir) if "eval_mse" in m]
    assert [m["step"] for m in logged] == [50, 100, 150]
    best = min(logged, key=lambda m: m["eval_mse"])
    assert result["checkpoint_step"] == best["step"]
    assert result["eval_mse"] == pytest.approx(best["eval_mse"], rel=1e-6)
    assert final["eval_mse"] == pytest.approx(logged[-1]["eval_mse"], rel=1e-6)
    out = os.path.join(workdir, "eval", "eval")
    assert _read_json(os.path.join(out, "metrics.json"))["checkpoint_step"] == best["step"]
    assert os.path.getsize(os.path.join(out, "predictions.png")) > 1000


def test_nan_guard_stops_naming_step_and_keeps_a_finite_checkpoint(tmp_path):
    config = tiny_config(log_every=1, ckpt_every=1, eval_every=100)
    config.optim.name = "sgd"
    config.optim.schedule = "constant"
    config.optim.lr = 1e30  # step 1 is finite (and saved), the loss overflows after it
    workdir = str(tmp_path)
    with pytest.raises(loop.NonFiniteError, match=r"Non-finite (metric|values) at step (\d+)") as e:
        train.train_and_evaluate(config, workdir)
    failed = int(e.value.args[0].split("at step ")[1].split()[0].rstrip(":"))
    records = read_metrics(workdir)
    assert records[-1]["step"] == failed  # the failing step's metrics are written
    mesh = mesh_lib.make_mesh([("data", -1)])
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    step, state = checkpoint.restore_latest_intact(
        manager, steps.build(config, mesh).abstract_state
    )
    assert 1 <= step < failed and not checkpoint.nonfinite_leaves(state)
    assert not [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in n]


def test_bad_config_override_is_one_clear_error(tmp_path):
    result = scripts_util.run(
        "train.py", "example.py:tiny", str(tmp_path), "--config.optim.lrr=3", num_devices=1
    )
    assert result.returncode == 1
    assert "unknown config key 'optim.lrr'. Did you mean 'optim.lr'?" in result.stdout
    assert "Traceback" not in result.stdout


def _restore_final(config, workdir, num_devices=8):
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:num_devices])
    parts = steps.build(config, mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    return jax.device_get(checkpoint.restore(manager, parts.abstract_state))


def _train_rows(workdir):
    return {m["step"]: m for m in read_metrics(workdir) if "data_checksum" in m}


@pytest.mark.slow
def test_train_script_then_evaluate_on_one_device(tmp_path):
    workdir = str(tmp_path)
    trained = scripts_util.run("train.py", "example.py:tiny", workdir, num_devices=8)
    assert trained.returncode == 0, trained.stdout[-3000:]
    evaluated = scripts_util.run("evaluate.py", "example.py:tiny", workdir, num_devices=1)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:]
    metrics = _read_json(os.path.join(workdir, "eval", "eval", "metrics.json"))
    logged = {m["step"]: m["eval_mse"] for m in read_metrics(workdir) if "eval_mse" in m}
    assert metrics["eval_mse"] == pytest.approx(logged[metrics["checkpoint_step"]], rel=1e-5)


def _train_in_process(config, workdir, num_devices, monkeypatch):
    """`train_and_evaluate` here on the first `num_devices` of the 8 fake devices: the reference
    run a script's run is compared with, without a third process launch (imports, build: ~4 s)."""
    with monkeypatch.context() as m:
        pin_config_meshes(m, num_devices)
        train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_sigterm_then_resume_is_bitwise_identical(tmp_path, monkeypatch):
    """Resume, not sharding, is the subject (the sharded and multi-process tests cover that), so
    2 fake devices: each step is ~1.5x cheaper on the CPU than on 8. SIGTERM goes out once 100
    steps are logged, leaving 300 (~1.5 CPU-seconds of training, far more than the poll's few
    milliseconds), so the run cannot finish first. The uninterrupted reference is trained in
    this process, on 2 of its devices, with the same XLA flags."""
    num_steps, num_devices = 400, 2
    overrides = (
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        "--config.train.ckpt_every=100",
        "--config.train.eval_every=0",
    )
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    config = tiny_config(num_steps=num_steps, log_every=1, ckpt_every=100, eval_every=0)
    _train_in_process(config, reference, num_devices, monkeypatch)

    process = scripts_util.start(
        "train.py", "example.py:tiny", resumed, *overrides, num_devices=num_devices
    )
    metrics_file = os.path.join(resumed, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metrics_file) and len(read_metrics(resumed)) >= 100:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    stopped_at = max(_train_rows(resumed))
    assert stopped_at < num_steps, "the run finished before SIGTERM arrived"
    assert "Preempted: checkpointed step" in output

    result = scripts_util.run(
        "train.py", "example.py:tiny", resumed, *overrides, num_devices=num_devices
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"Restored step {stopped_at}" in result.stdout

    chex.assert_trees_all_equal(
        _restore_final(config, reference, num_devices), _restore_final(config, resumed, num_devices)
    )
    want, got = _train_rows(reference), _train_rows(resumed)
    assert sorted(got) == sorted(want) == list(range(1, num_steps + 1))
    for step in range(1, num_steps + 1):
        assert got[step]["data_checksum"] == want[step]["data_checksum"], step
        assert got[step]["loss"] == want[step]["loss"], step


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path, monkeypatch):
    multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
    port = _free_port()
    processes = [
        scripts_util.start(
            "train.py",
            "example.py:tiny",
            multi,
            num_devices=2,
            JAXLAB_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAXLAB_NUM_PROCESSES="2",
            JAXLAB_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "JAX process 1/2, 2 local / 4 global devices" in outputs[1]
    config = example_config.get_config("tiny")
    _train_in_process(config, single, 4, monkeypatch)  # one process, 4 devices

    multi_state, single_state = _restore_final(config, multi), _restore_final(config, single)
    assert int(multi_state.step) == config.train.num_steps
    chex.assert_trees_all_close(multi_state.params, single_state.params, rtol=1e-5, atol=1e-6)
    want, got = _train_rows(single), _train_rows(multi)
    assert {s: m["data_checksum"] for s, m in got.items()} == {
        s: m["data_checksum"] for s, m in want.items()
    }
