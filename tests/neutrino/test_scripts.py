"""The binaries on the neutrino task: SIGTERM + resume gives the same run (slow, subprocesses)."""

import os
import signal
import time

import jax
import numpy as np
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.neutrino import steps
from tests.core import scripts_util

pytestmark = pytest.mark.slow  # every test here launches scripts/train.py


def _final_state(workdir, step):
    """The checkpoint of `step`, restored on a 2-device mesh like the runs'."""
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:2])
    parts = steps.build(neutrino_config.get_config("tiny"), mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    state = checkpoint.restore(manager, parts.abstract_state, step=step)
    manager.close()
    return jax.device_get(state)


def _train_rows(workdir):
    return {m["step"]: m for m in read_metrics(workdir) if "grad_norm" in m}


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
    """SIGTERM goes out once 20 steps are logged (step 20 checkpointed), leaving 40 (~2
    CPU-seconds of training, far more than the poll's few milliseconds), so the run cannot
    finish first. The reference is a launch of the script too: it fills the compilation cache
    that the other two read (an in-process run would not, its XLA flags name 8 devices)."""
    num_steps = 60
    overrides = (
        f"--config.train.num_steps={num_steps}",
        "--config.train.log_every=1",
        "--config.train.ckpt_every=20",
        "--config.train.eval_every=0",
        f"--config.data.root={tmp_path / 'data'}",
    )
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    result = scripts_util.run("train.py", "neutrino.py:tiny", reference, *overrides, num_devices=2)
    assert result.returncode == 0, result.stdout[-3000:]

    process = scripts_util.start("train.py", "neutrino.py:tiny", resumed, *overrides, num_devices=2)
    metrics_file = os.path.join(resumed, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metrics_file) and len(read_metrics(resumed)) >= 20:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    stopped_at = max(_train_rows(resumed))
    assert stopped_at < num_steps, "the run finished before SIGTERM arrived"

    result = scripts_util.run("train.py", "neutrino.py:tiny", resumed, *overrides, num_devices=2)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"Restored step {stopped_at}" in result.stdout
    want, got = _train_rows(reference), _train_rows(resumed)
    assert sorted(got) == list(range(1, num_steps + 1))
    for step in range(1, num_steps + 1):
        for key in ("loss", "events", "pulses_truncated"):
            assert got[step][key] == want[step][key], (step, key)
    # The final parameters and optimizer state are bitwise those of the uninterrupted run.
    want_state, got_state = _final_state(reference, num_steps), _final_state(resumed, num_steps)
    for want_leaf, got_leaf in zip(
        jax.tree.leaves(want_state), jax.tree.leaves(got_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(want_leaf))
