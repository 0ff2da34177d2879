"""Mesh construction, sharding rules and process-local -> global batches."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxlab.core import mesh as mesh_lib


def test_make_mesh_fills_minus_one():
    mesh = mesh_lib.make_mesh([("data", -1)])
    assert dict(mesh.shape) == {"data": 8}
    mesh = mesh_lib.make_mesh([("data", 2), ("fsdp", -1)])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    assert mesh_lib.batch_size_divisor(mesh) == 8


@pytest.mark.parametrize(
    "axes, message",
    [
        ([("data", 3)], "needs 3 devices"),
        ([("data", -1), ("fsdp", -1)], "at most one axis"),
        ([("batch", -1)], "unknown axis"),
        ([("data", 3), ("fsdp", -1)], "do not divide"),
    ],
)
def test_make_mesh_errors_name_the_problem(axes, message):
    with pytest.raises(ValueError, match=message):
        mesh_lib.make_mesh(axes)


def test_fsdp_rule_shards_largest_divisible_dim_of_big_leaves():
    mesh = mesh_lib.make_mesh([("data", 2), ("fsdp", 4)])
    big = jax.ShapeDtypeStruct((6, 64), np.float32)
    small = jax.ShapeDtypeStruct((8,), np.float32)
    odd = jax.ShapeDtypeStruct((7, 9), np.float32)
    shardings = mesh_lib.tree_shardings(mesh, {"big": big, "small": small, "odd": odd}, 50)
    assert shardings["big"].spec == PartitionSpec(None, "fsdp")
    assert shardings["small"].spec == PartitionSpec()
    assert shardings["odd"].spec == PartitionSpec()
    # Without an fsdp axis everything is replicated.
    data_mesh = mesh_lib.make_mesh([("data", -1)])
    assert mesh_lib.tree_shardings(data_mesh, big, 1).spec == PartitionSpec()


def test_global_batch_is_sharded_over_data_and_keeps_values():
    mesh = mesh_lib.make_mesh([("data", 4), ("fsdp", 2)])
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3), "i": np.arange(16)}
    batch = mesh_lib.global_batch(local, mesh)
    assert batch["x"].shape == (16, 3)
    assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert len(batch["x"].addressable_shards) == 8
    assert batch["x"].addressable_shards[0].data.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(batch["x"]), local["x"])
    np.testing.assert_array_equal(np.asarray(batch["i"]), local["i"])
