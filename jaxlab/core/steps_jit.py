"""Jitted steps with their shardings, and the ordered evaluation pass over a source.

A task's `steps.build` jits its pure steps once with `jit_train_step` / `jit_eval_step`;
`eval_pass` runs an eval step over every record of a source, in order, dropping padding rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.core import loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.data import pipeline


def jit_train_step(step_fn: Callable, shardings: Any, mesh: jax.sharding.Mesh) -> Callable:
    """`step_fn(state, batch) -> (state, metrics)` jitted once; the state's buffers are donated.

    The state keeps `shardings`, the batch is split on the mesh's batch axes and the metrics
    come back replicated (scalars).
    """
    return jax.jit(
        step_fn,
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(step_fn: Callable, mesh: jax.sharding.Mesh, num_extra_args: int = 0) -> Callable:
    """`step_fn(params, batch, valid, *extra) -> (sums, outputs)` jitted once for `mesh`.

    Params and any extra arguments are replicated, the batch and its `valid` mask [B] are split
    on the batch axes; sums and outputs come back replicated.
    """
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(replicated, mesh_lib.data_sharding(mesh), None)
        + (replicated,) * num_extra_args,
        out_shardings=(replicated, replicated),
    )


def eval_pass(
    eval_step: Callable,
    params: Any,
    source: Any,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    *extra: Any,
    keep_outputs: bool = True,
) -> tuple[Any, Any]:
    """One ordered pass over `source` with a `jit_eval_step` function; (totals, outputs) on host.

    `totals` is the step's sums added over batches (on device, read once at the end). `outputs`
    is the step's outputs concatenated over batches and cut to `len(source)` records (padding
    rows dropped), or None with `keep_outputs=False`. `extra` goes to every step call.
    """
    totals, outputs = None, []
    throttle = loop.StepThrottle()
    for local_batch, valid in pipeline.eval_batches(source, global_batch_size=batch_size):
        batch = mesh_lib.global_batch(local_batch, mesh)
        sums, out = eval_step(params, batch, mesh_lib.global_batch(valid, mesh), *extra)
        throttle(sums)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if keep_outputs:
            outputs.append(out)
    totals, outputs = jax.device_get((totals, outputs))
    if not keep_outputs:
        return totals, None
    return totals, jax.tree.map(lambda *xs: np.concatenate(xs)[: len(source)], *outputs)
