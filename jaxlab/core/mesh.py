"""Device mesh, shardings and process-local -> global batches.

One `jax.sharding.Mesh` serves every task. Its axes come from `config.mesh`, a sequence of
`(name, size)` pairs such as `[("data", -1)]` or `[("data", 2), ("fsdp", 4)]`; one size may be -1
and takes the devices left over. Batches are sharded over the batch axes (`data` and, when present,
`fsdp`); parameters are replicated, or with an `fsdp` axis their largest divisible dimension is
sharded over it once they hold at least `fsdp_min_size` values.

Multi-host jobs call `maybe_initialize_distributed()` before anything touches a device. Each
process then reads only its slice of every global batch (see `jaxlab.data.pipeline`) and
`global_batch` stitches the slices into one `jax.Array` without any host-to-host copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")

# Environment variables a launcher sets for a multi-process job on machines without a cluster
# scheduler that JAX detects by itself (SLURM, Cloud TPU, Kubernetes/MPI are auto-detected).
ENV_COORDINATOR = "JAXLAB_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXLAB_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLAB_PROCESS_ID"
ENV_CPU_COLLECTIVES = "JAXLAB_CPU_COLLECTIVES"


def maybe_initialize_distributed() -> bool:
    """Initialises `jax.distributed` when this process is one of several; returns whether it did.

    Explicit launch: `JAXLAB_COORDINATOR_ADDRESS=host:port JAXLAB_NUM_PROCESSES=n
    JAXLAB_PROCESS_ID=i`. On CPU, cross-process collectives need gloo, so set
    `JAXLAB_CPU_COLLECTIVES=gloo` (the default when the explicit variables are used). Cluster
    launches (SLURM, TPU pods, Open MPI) are detected by JAX itself when `JAXLAB_DISTRIBUTED=auto`.
    """
    if os.environ.get(ENV_COORDINATOR):
        for name in (ENV_NUM_PROCESSES, ENV_PROCESS_ID):
            if not os.environ.get(name, "").isdigit():
                raise ValueError(
                    f"{ENV_COORDINATOR} is set, so {name} must be a non-negative integer; "
                    f"got {os.environ.get(name)!r}."
                )
        jax.config.update(
            "jax_cpu_collectives_implementation", os.environ.get(ENV_CPU_COLLECTIVES, "gloo")
        )
        jax.distributed.initialize(
            coordinator_address=os.environ[ENV_COORDINATOR],
            num_processes=int(os.environ[ENV_NUM_PROCESSES]),
            process_id=int(os.environ[ENV_PROCESS_ID]),
        )
        return True
    if os.environ.get("JAXLAB_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    return False


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over all (or the given) devices; at most one axis size may be -1 (the rest).

    Args:
      axes: `(name, size)` pairs, e.g. `[("data", -1)]` or `[("data", 2), ("fsdp", -1)]`.
      devices: defaults to `jax.devices()` (every device of every process).
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(str(name) for name, _ in axes)
    sizes = [int(size) for _, size in axes]
    if not names:
        raise ValueError("config.mesh must name at least one axis, e.g. [('data', -1)].")
    unknown = [n for n in names if n not in ("data", "fsdp", "model")]
    if unknown:
        raise ValueError(f"config.mesh: unknown axis {unknown}; use 'data', 'fsdp' or 'model'.")
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may have size -1, got {list(axes)}.")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"config.mesh {list(axes)}: {len(devices)} devices do not divide by {known}."
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"config.mesh {list(axes)} needs {int(np.prod(sizes))} devices, have {len(devices)}."
        )
    device_grid = np.asarray(devices).reshape(sizes)
    return Mesh(device_grid, names)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the leading (batch) dimension is split over."""
    return tuple(name for name in mesh.axis_names if name in BATCH_AXES)


def batch_size_divisor(mesh: Mesh) -> int:
    """Global batch sizes must be a multiple of this (devices along the batch axes)."""
    return int(np.prod([mesh.shape[name] for name in batch_axes(mesh)]))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading dimension split over the batch axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def leaf_sharding(mesh: Mesh, shape: Sequence[int], fsdp_min_size: int) -> NamedSharding:
    """Replicated, or with an `fsdp` axis: the largest dimension it divides, once big enough."""
    if "fsdp" not in mesh.axis_names or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
        return replicated(mesh)
    fsdp = mesh.shape["fsdp"]
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def tree_shardings(mesh: Mesh, abstract_tree: Any, fsdp_min_size: int = 2**18) -> Any:
    """Shardings for a pytree of arrays or `jax.ShapeDtypeStruct`s (params, optimizer state)."""
    return jax.tree.map(lambda x: leaf_sharding(mesh, x.shape, fsdp_min_size), abstract_tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """This process's numpy batch (its rows of the global batch) -> global sharded `jax.Array`s.

    Every process passes arrays of shape [B_local, ...]; the result has shape
    [B_local * process_count, ...] and rows in process order, sharded over the batch axes.
    """
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def log_topology(mesh: Mesh) -> None:
    logging.info(
        "JAX process %d/%d, %d local / %d global devices (%s), mesh %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
        dict(mesh.shape),
    )
