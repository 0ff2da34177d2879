"""Checkpoints: state + iterator as one step, retention, resharding onto another device count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.data import pipeline


def _init_fn(rng):
    params = {
        "kernel": jax.random.normal(rng, (16, 8)),
        "bias": jnp.zeros((8,)),
    }
    return state_lib.create_train_state(params, optax.adam(1e-3))


def _init_sharded(init_fn, rng, mesh, fsdp_min_size=2**18):
    """(state, shardings): `init_fn(rng)` under jit, every leaf born with its mesh sharding."""
    _, shardings = state_lib.abstract_state(init_fn, rng, mesh, fsdp_min_size)
    return jax.jit(init_fn, out_shardings=shardings)(rng), shardings


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_state_and_iterator_round_trip(tmp_path):
    mesh = mesh_lib.make_mesh([("data", -1)])
    rng = jax.random.key(0)
    state, _ = _init_sharded(_init_fn, rng, mesh)
    state = state.replace(step=state.step + 5)
    source = [np.int32(i) for i in range(40)]
    it = pipeline.train_iterator(source, global_batch_size=8, seed=0, process_count=1)
    for _ in range(3):
        next(it)
    manager = checkpoint.make_manager(str(tmp_path), max_to_keep=2)
    checkpoint.save(manager, 5, state, it)
    expected_next = next(it)  # the loop moves on while the async save runs
    checkpoint.wait(manager)

    target, _ = state_lib.abstract_state(_init_fn, rng, mesh)
    fresh_it = pipeline.train_iterator(source, global_batch_size=8, seed=0, process_count=1)
    restored = checkpoint.restore(manager, target, fresh_it)
    _assert_trees_equal(restored, state)
    np.testing.assert_array_equal(next(fresh_it), expected_next)


def test_keeps_latest_n_plus_best(tmp_path):
    mesh = mesh_lib.make_mesh([("data", -1)])
    state, _ = _init_sharded(_init_fn, jax.random.key(0), mesh)
    manager = checkpoint.make_manager(
        str(tmp_path), max_to_keep=2, best_metric="eval_loss", best_mode="min", keep_best=1
    )
    losses = {1: 3.0, 2: 0.5, 3: 2.0, 4: 4.0, 5: 5.0}
    for step, loss in losses.items():
        checkpoint.save(manager, step, state, metrics={"eval_loss": loss})
        checkpoint.wait(manager)
    assert sorted(manager.all_steps()) == [2, 4, 5]  # best (2) plus the latest two
    assert checkpoint.best_step(manager, "eval_loss", "min") == 2
    assert checkpoint.select_step(manager, "best", "eval_loss", "min") == 2
    assert checkpoint.select_step(manager, "latest", "eval_loss", "min") == 5
    with pytest.raises(ValueError, match="not in"):
        checkpoint.select_step(manager, "3", "eval_loss", "min")


def test_written_on_8_devices_restores_on_1(tmp_path):
    rng = jax.random.key(1)
    mesh8 = mesh_lib.make_mesh([("fsdp", -1)])
    state8, shardings8 = _init_sharded(_init_fn, rng, mesh8, fsdp_min_size=64)
    assert shardings8.params["kernel"].spec == jax.sharding.PartitionSpec("fsdp", None)
    assert len(state8.params["kernel"].sharding.device_set) == 8
    manager = checkpoint.make_manager(str(tmp_path))
    checkpoint.save(manager, 1, state8)
    checkpoint.wait(manager)

    mesh1 = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    target, _ = state_lib.abstract_state(_init_fn, rng, mesh1)
    restored = checkpoint.restore(checkpoint.make_manager(str(tmp_path), read_only=True), target)
    assert restored.params["kernel"].sharding.device_set == {jax.devices()[0]}
    _assert_trees_equal(restored, state8)


def test_saving_a_small_replicated_state_compiles_no_slice_per_leaf(tmp_path):
    """Small replicated leaves are written whole by replica 0: the save compiles one program (the
    finite check over the tree), not orbax's replica-parallel slice program per leaf shape."""
    mesh = mesh_lib.make_mesh([("data", -1)])
    assert mesh.size == 8
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shapes = [(37, 8), (37,), (3, 8, 11), (8, 13), (5, 8)]  # shapes no other test saves
    tree = {f"w{i}": jnp.full(s, float(i), jnp.float32) for i, s in enumerate(shapes)}
    tree = jax.device_put(tree, replicated)
    compiles = []

    def count(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    manager = checkpoint.make_manager(str(tmp_path), async_save=False)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        checkpoint.save(manager, 1, tree)
        checkpoint.wait(manager)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert len(compiles) <= 1, len(compiles)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree
    )
    _assert_trees_equal(checkpoint.restore(manager, target), tree)


def test_missing_checkpoint(tmp_path):
    mesh = mesh_lib.make_mesh([("data", -1)])
    target, _ = state_lib.abstract_state(_init_fn, jax.random.key(2), mesh)
    manager = checkpoint.make_manager(str(tmp_path))
    assert checkpoint.restore_latest_intact(manager, target) == (None, None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        checkpoint.restore(manager, target)
