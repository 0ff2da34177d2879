"""Device-resident training data (`data.resident`): the step's inputs are the streamed path's bit
for bit, training and resuming are too, and the placement follows the devices' memory.

The tiny synthetic store (18 training states of 16 x 24 x 7) is loaded replicated over 2 devices
or with its time axis split over 2 or 8 (padded to 24 / 8 x 3 states), so the sharded gather
crosses shards within every batch.
"""

import os

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.data import pipeline
from jaxlab.weather import data, data_resident, steps, train
from tests.conftest import DEFAULT_EMITTER_FLAGS
from tests.core import scripts_util
from tests.weather import train_util

GIB = 2**30


def tiny_config(data_dir: str):
    config = weather_config.get_config("tiny")
    config.data.dir = data_dir
    config.train.async_checkpoint = False
    return config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The tiny config's synthetic Zarr store, shared by the module."""
    directory = str(tmp_path_factory.mktemp("weather_resident"))
    return data.prepare(tiny_config(directory), directory)


def _mesh(num_devices: int):
    return mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:num_devices])


def _bits(x) -> np.ndarray:
    """The bytes of an array: equal bytes are equal bits (-0.0 and NaN payloads included)."""
    x = np.ascontiguousarray(np.asarray(x))
    return x.view(np.uint8)


@pytest.mark.parametrize(
    "placement, crop, num_devices, preload_mb",
    [
        ("replicated", (8, 8), 2, 512.0),  # a small store, preloaded by PairSource
        ("sharded", (8, 8), 8, 0.0),  # read from Zarr per state, as the paper config does
        ("sharded", (), 2, 512.0),  # no crop: the full grid
    ],
)
def test_step_inputs_are_the_streamed_inputs_bit_for_bit(
    store, placement, crop, num_devices, preload_mb
):
    """Six steps (past an epoch: 17 pairs) of the streamed iterator vs the index rows gathered
    on the device: every array of every batch has the same dtype, shape and bytes."""
    mesh = _mesh(num_devices)
    batch_size = num_devices if num_devices > 2 else 4
    pairs = data.PairSource(store, "train", (1,), preload_mb)
    streamed = pipeline.train_iterator(
        data.WithHour(pairs),
        global_batch_size=batch_size,
        seed=0,
        random_transform=data.random_crop(crop),
    )
    t = data_resident.num_times(pairs)
    plan = data_resident.Plan(placement, t, t * 4 * int(np.prod(pairs.shape)), 0, None, "test")
    resident = data_resident.load(pairs, plan, mesh, crop)
    want_spec = PartitionSpec("data") if placement == "sharded" else PartitionSpec()
    assert resident.states.sharding.spec == want_spec
    gather = data_resident.gather_fn(resident, mesh)
    rows_iter = pipeline.train_iterator(
        data_resident.IndexSource(pairs),
        global_batch_size=batch_size,
        seed=0,
        random_transform=data_resident.crop_columns(crop, pairs.shape[:2]),
    )
    all_rows = []
    for step in range(6):
        want, rows = next(streamed), next(rows_iter)
        assert rows.dtype == np.int32 and rows.shape == (batch_size, 6)
        got = jax.device_get(gather(mesh_lib.global_batch(rows, mesh)))
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            np.testing.assert_array_equal(_bits(got[key]), _bits(want[key]), f"{key} step {step}")
        all_rows.append(rows)
    all_rows = np.concatenate(all_rows)
    if crop:  # the crops move (the comparison is not of zero offsets only)
        assert all_rows[:, data_resident.Y0].max() > 0 and all_rows[:, data_resident.X0].max() > 0
    if placement == "sharded":  # batches read states of more than one shard
        shard = -(-t // num_devices)
        assert len(set(all_rows[:, data_resident.TIME] // shard)) > 1


def test_placement_follows_the_device_memory_or_the_budget():
    """The paper's store (336 hourly states at 1059 x 1799 x 7, 18 GB) on one H100 / H200, on
    24 GB cards, and with no memory statistics (CPU)."""
    state = 1059 * 1799 * 7 * 4
    total = 336 * state
    assert 17.9e9 < total < 18.0e9  # the 18 GB (16.7 GiB)
    h100 = data_resident.device_budget([{"bytes_limit": 80 * GIB, "bytes_in_use": GIB}], 0.5, 0)
    assert h100[0] == int(0.5 * 79 * GIB) and "memory_stats" in h100[1]
    plan = data_resident.decide("auto", 336, state, 1, h100)
    assert plan.placement == "replicated" and plan.device_bytes == total and plan.resident
    h200 = data_resident.device_budget([{"bytes_limit": 141 * GIB}], 0.5, 0)
    assert data_resident.decide("auto", 336, state, 1, h200).placement == "replicated"
    # 24 GB cards: 12 GB each at 0.5 -> not replicated; 4 of them hold 84 states (4.5 GB) each.
    small = data_resident.device_budget([{"bytes_limit": 24 * GIB}] * 4, 0.5, 0)
    sharded = data_resident.decide("auto", 336, state, 4, small)
    assert sharded.placement == "sharded" and sharded.device_bytes == 84 * state
    # One 24 GB card: auto streams, True is one error with the sizes, False streams.
    assert data_resident.decide("auto", 336, state, 1, small).placement == "streamed"
    with pytest.raises(ValueError, match=r"resident = True.*= 16.69 GiB.*budget 12.00 GiB"):
        data_resident.decide(True, 336, state, 1, small)
    assert data_resident.decide(False, 336, state, 1, h200).placement == "streamed"
    # 5 devices: 68 states a device (336 padded to 340).
    assert data_resident.decide("auto", 336, state, 5, small).device_bytes == 68 * state
    # No memory statistics: the configured budget, else auto streams and True replicates.
    cpu = data_resident.device_budget([None, None], 0.5, 100.0)
    assert cpu == (100 * 2**20, "config.data.resident_budget_mb (no memory stats)")
    unknown = data_resident.device_budget([None], 0.5, 0.0)
    assert unknown[0] is None
    assert data_resident.decide("auto", 336, state, 1, unknown).placement == "streamed"
    assert data_resident.decide(True, 336, state, 1, unknown).placement == "replicated"
    for value, want in (("auto", "auto"), ("True", True), (" false", False), (True, True)):
        assert data_resident.setting(value) == want
    with pytest.raises(ValueError, match=r"config.data.resident must be 'auto', True or False"):
        data_resident.setting("yes")


def test_plan_on_this_backend_reads_the_config(store):
    """CPU devices have no memory statistics: `data.resident_budget_mb` decides (tiny store:
    18 states of 10.5 KiB = 189 KiB; over 2 devices 9 states = 94.5 KiB each)."""
    config = tiny_config("")
    pairs = data.PairSource(store, "train", (1,))
    mesh = _mesh(2)
    assert data_resident.plan(config, pairs, mesh).placement == "streamed"  # the default
    for budget_mb, placement in ((1.0, "replicated"), (0.1, "sharded"), (0.05, "streamed")):
        config.data.resident_budget_mb = budget_mb
        assert data_resident.plan(config, pairs, mesh).placement == placement, budget_mb
    config.data.resident = False
    assert data_resident.plan(config, pairs, mesh).placement == "streamed"


# --- Training: resident runs against the streamed run, straight and resumed.


def train_config(data_dir: str, resident):
    """tiny, batch 2 on 8 x 8 crops, 6 steps logged each, one evaluation at the end."""
    config = tiny_config(data_dir)
    config.train.update(global_batch_size=2, num_steps=6, log_every=1, ckpt_every=100)
    config.train.eval_every = 0
    config.data.crop = (8, 8)
    config.eval.loss_examples = 8
    if resident == "sharded":  # 94.5 KiB a device fits 0.1 MiB, 189 KiB replicated does not
        config.data.resident_budget_mb = 0.1
    else:
        config.data.resident = resident
    return config


@pytest.fixture
def shared_programs(monkeypatch):
    """The five runs below share one `steps.build` and one resident step per store layout
    (each run still loads and binds its own store): built anew, every run would trace and
    compile the same programs again."""
    monkeypatch.setattr(steps, "build", train_util.memoised_build(steps.build))
    program = train_util.memoised_resident_program(steps.resident_step_program)
    monkeypatch.setattr(steps, "resident_step_program", program)


@pytest.mark.slow
def test_resident_training_and_resume_equal_the_streamed_run_bit_for_bit(
    request, store, tmp_path, monkeypatch, two_devices, shared_programs
):
    """6 steps streamed, against: resident sharded stopped by SIGTERM after step 3 and rerun
    resident replicated (a smaller budget on the second machine), and streamed stopped there
    and rerun resident (the iterator position of either mode resumes the other). Params, EMA,
    optimizer state, per-step losses, data order and the final eval loss all bit for bit.

    Bitwise, not to rounding: the gathered inputs are the same bits (the test above) and the
    step runs the same XLA operations on them; the gather adds only slices and, sharded, an
    integer sum, which are exact. (Another backend may fuse the two programs differently; this
    test pins the CPU with its default code emitters, which users get: with the suite's
    `--xla_cpu_use_fusion_emitters=false` the two programs' conv-bias gradients differ in the
    last bit, so the test runs in a process of its own at `DEFAULT_EMITTER_FLAGS`.)"""
    if scripts_util.rerun_test_with_xla_flags(request, DEFAULT_EMITTER_FLAGS):
        return  # it ran, and passed, in that process
    data_dir = os.path.dirname(store)
    runs = {
        "streamed": False,
        "sharded_then_replicated": "sharded",
        "streamed_then_resident": False,
    }
    metrics, placements, loaded = {}, [], {}
    load = data_resident.load

    def spy(pairs, plan, mesh, crop):
        placements.append(plan.placement)
        return load(pairs, plan, mesh, crop)

    monkeypatch.setattr(data_resident, "load", spy)
    for name, first in runs.items():
        workdir = str(tmp_path / name)
        config = train_config(data_dir, first)
        if name != "streamed":
            with monkeypatch.context() as patch:
                train_util.sigterm_after_step(patch, train, at_step=3)
                train.train_and_evaluate(config, workdir)
            stopped_at = max(train_util.train_rows(workdir))
            assert stopped_at == 3, f"{name}: the run did not stop at the SIGTERM step"
            config = train_config(data_dir, True)  # data.resident may change on resume
        metrics[name] = train.train_and_evaluate(config, workdir)
        loaded[name], placements[:] = list(placements), []
    assert loaded == {
        "streamed": [],
        "sharded_then_replicated": ["sharded", "replicated"],
        "streamed_then_resident": ["replicated"],
    }
    want_state = train_util.final_state(train_config(data_dir, False), str(tmp_path / "streamed"))
    want_rows = train_util.train_rows(str(tmp_path / "streamed"))
    assert sorted(want_rows) == list(range(1, 7))
    for name in list(runs)[1:]:
        got = train_util.final_state(train_config(data_dir, False), str(tmp_path / name))
        assert int(got.step) == 6, name
        chex.assert_trees_all_equal(got, want_state)  # params, EMA, optimizer state, scale
        rows = train_util.train_rows(str(tmp_path / name))
        for step in range(1, 7):
            assert rows[step]["loss"] == want_rows[step]["loss"], (name, step)
            assert rows[step]["data_checksum"] == want_rows[step]["data_checksum"], (name, step)
        assert metrics[name]["eval_loss"] == metrics["streamed"]["eval_loss"], name
