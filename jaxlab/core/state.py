"""The train state pytree and its sharded initialisation.

`TrainState` is a plain pytree: `step`, `params`, `opt_state` and `extra`, a free slot for whatever
else a task carries (EMA parameters, BatchNorm statistics, a GAN's second network and optimizer).
Updates happen in each task's pure step function with `state.replace(...)`; there are no methods
that hide control flow.

A state is never materialised unsharded (`parts.init_state`): `jax.eval_shape` gives the
shapes, the mesh rules give a sharding per leaf, and `jax.jit(init, out_shardings=...)` creates
each shard on its own device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxlab.core import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar, number of optimizer steps taken
    params: Any
    opt_state: Any
    extra: Any = None


def create_train_state(params: Any, tx: Any, extra: Any = None) -> TrainState:
    """A fresh state at step 0; `tx` is an optax GradientTransformation."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), extra=extra
    )


def abstract_state(
    init_fn: Callable[[jax.Array], TrainState],
    rng: jax.Array,
    mesh: Mesh,
    fsdp_min_size: int = 2**18,
) -> tuple[Any, Any]:
    """Shape/dtype/sharding of the state without computing it: the target for a restore."""
    abstract = jax.eval_shape(init_fn, rng)
    shardings = mesh_lib.tree_shardings(mesh, abstract, fsdp_min_size)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
    )
    return target, shardings


def param_count(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
