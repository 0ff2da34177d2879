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
import optax
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


def apply_gradients(state: TrainState, tx: Any, grads: Any, loss: jax.Array) -> TrainState:
    """The state after one optimizer update with `grads`: step + 1, new params and opt_state.

    `loss` goes to optax as `value` (reduce_on_plateau reads it; other transforms ignore it).
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def step_metrics(loss: jax.Array, grads: Any, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """What every train step reports: loss, gradient norm and "data_checksum", the sum of the
    batch's record ids (tests compare it step by step to prove the data order resumes)."""
    return {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "data_checksum": jnp.sum(batch["index"]),
    }


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
