"""Loop helpers: cadence, NaN guard, SIGTERM flag, progress rates."""

import os
import signal

import numpy as np
import pytest

from jaxlab.core import loop


def test_every():
    assert [s for s in range(1, 11) if loop.every(s, 3)] == [3, 6, 9]
    assert not any(loop.every(s, 0) for s in range(1, 5))
    assert not any(loop.every(s, None) for s in range(1, 5))


def test_check_finite_names_step_and_metric():
    loop.check_finite(3, {"loss": np.float32(1.0), "acc": 0.5})
    with pytest.raises(loop.NonFiniteError, match=r"step 7: grad_norm=inf, loss=nan"):
        loop.check_finite(7, {"loss": np.float32("nan"), "grad_norm": np.inf, "acc": 1.0})


def test_sigterm_sets_the_flag_and_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with loop.Preemption() as preemption:
        assert not preemption.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested(2)
    assert signal.getsignal(signal.SIGTERM) == before


def test_progress_reports_rates():
    progress = loop.Progress(total_steps=100, global_batch_size=32, start_step=0)
    assert progress.report(5, {"loss": 0.6}) == {}  # timing starts here, after compilation
    rates = progress.report(10, {"loss": 0.5})
    assert rates["steps_per_sec"] > 0
    assert rates["examples_per_sec"] == pytest.approx(32 * rates["steps_per_sec"])
    assert loop.format_seconds(3725) == "1:02:05"


def test_profile_window_writes_a_trace(tmp_path):
    import jax.numpy as jnp

    window = loop.ProfileWindow(start=2, stop=4, logdir=str(tmp_path))
    x = jnp.ones((64, 64))
    for step in range(1, 6):
        window.step(step, x)
        x = x @ x / 64.0
    traces = list(tmp_path.rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0


_QUEUED_COLLECTIVES = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxlab.core import loop
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.device_put(jnp.ones((64, 8)), NamedSharding(mesh, P("data")))
w = jax.device_put(jnp.ones((8, 8)), NamedSharding(mesh, P()))
step = jax.jit(lambda w, x: w - 1e-3 * jax.grad(lambda w: jnp.mean((x @ w) ** 2))(w))
throttle = loop.StepThrottle(2)
for _ in range(300):
    w = step(w, x)
    throttle(w)
print("finished", float(w.sum()))
"""


def test_step_throttle_keeps_queued_multi_device_steps_bounded():
    """300 queued 8-device steps deadlock XLA's CPU collectives without the throttle (jax 0.10)."""
    import subprocess
    import sys

    from tests.core import scripts_util

    result = subprocess.run(
        [sys.executable, "-c", _QUEUED_COLLECTIVES],
        env=scripts_util.script_env(8),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr[-2000:]
    throttle = loop.StepThrottle(2)
    for i in range(5):
        throttle(np.float32(i))
    assert len(throttle._pending) == 2


def test_train_window_sums_and_survives_a_json_round_trip_bitwise():
    """The trainer's train-metric sums (glitch's epoch confusion and loss) go through the
    checkpoint's JSON loop state without changing a bit, so a resumed epoch logs the same."""
    import json

    import jax.numpy as jnp

    from jaxlab.core import trainer

    window = trainer.TrainWindow(("loss", "confusion"))
    losses = np.float32([0.1, 1 / 3, 2.7182817])
    for k, loss in enumerate(losses):
        confusion = jnp.full((2, 2), k, jnp.int32)
        window.add({"loss": jnp.float32(loss), "confusion": confusion, "lr": jnp.float32(1.0)})
    saved = json.loads(json.dumps(window.to_json()))
    resumed = trainer.TrainWindow(("loss", "confusion"), saved)
    got, want = resumed.read(), window.read()
    assert got["steps"] == want["steps"] == 3 and set(got) == {"steps", "loss", "confusion"}
    assert got["loss"].dtype == np.float32 and got["loss"].tobytes() == want["loss"].tobytes()
    assert want["loss"] == np.float32(np.float32(losses[0] + losses[1]) + losses[2])
    np.testing.assert_array_equal(got["confusion"], np.full((2, 2), 3, np.int32))
    assert window.read() == {"steps": 0}  # reading starts a new window


def test_epoch_schedule_counts_whole_batches_and_warms_up_in_epochs():
    import ml_collections

    from jaxlab.core import optim
    from jaxlab.core import parts as parts_lib

    config = ml_collections.ConfigDict(
        {
            "train": {"global_batch_size": 8, "num_steps": 0, "num_epochs": 3, "warmup_epochs": 5},
            "optim": optim.default_optim_config(),
        }
    )
    config.optim.plateau_accumulation_size = 0
    schedule = parts_lib.epoch_schedule(config, num_train_records=30)  # 3 batches, 6 dropped
    assert (schedule.steps_per_epoch, schedule.num_steps) == (3, 9)
    assert schedule.optim_config.warmup_steps == 8  # 5 epochs capped at all steps but one
    assert schedule.optim_config.plateau_accumulation_size == 3  # one epoch
    config.train.num_steps = 4  # an explicit step count wins
    assert parts_lib.epoch_schedule(config, 30).num_steps == 4
    with pytest.raises(ValueError, match="7 training records make no batch of 8"):
        parts_lib.epoch_schedule(config, 7)
