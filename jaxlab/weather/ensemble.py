"""Ensemble forecasts: members vmapped over keys `fold_in(case_key, member)`, sharded on `data`.

A member's randomness depends only on (seed, stream, case, member, lead step), never on the
ensemble size or the device count, so member 3 of a 4-member run equals member 3 of a 16-member
run. Case keys are named streams, e.g. `rng.stream(config.seed, "ensemble", case)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import data, diffusion
from jaxlab.weather import model as model_lib


def apply_eps(model, params, sched, prediction, xt, cond, t, lead, hour, use_hour):
    """The network's output converted to an epsilon prediction (the samplers' `eps_fn`)."""
    out = model_lib.apply(model, params, xt, cond, t, lead, hour, use_hour)
    return out if prediction == "eps" else diffusion.eps_from_v(sched, xt, t, out)


def forecast_step(
    params, cond, lead, hour, keys, scale, x_init=None, *, model, sched, config, start_step=None
):
    """One lead-time step for a batch of members: cond [B, H, W, C] -> next state [B, H, W, C].

    lead [B] hours, hour [B] hour of day of `cond` (used with `model.use_hour`), keys [B]
    per-member keys, scale {"std", "mean"} [C]: each member samples the scaled change with the
    configured sampler and spacing, starting from the prior N(mean, 1) at the first step, then
    x_next = cond + std * change (or the sampled state directly, prior N(0, 1)).
    `x_init` [B, H, W, C] / `start_step` start the sampler from a given (partially noised)
    input instead (DEF mode).
    """
    dc = config.diffusion
    prior = (scale["mean"], 1.0) if dc.residual else (0.0, 1.0)

    def one(key, c, ld, hr, x0_init):
        def eps_fn(x, t):
            return apply_eps(
                model,
                params,
                sched,
                dc.prediction,
                x[None],
                c[None],
                jnp.reshape(t, (1,)),
                ld[None],
                hr[None],
                config.model.use_hour,
            )[0]

        return diffusion.sample(
            dc.sampler,
            eps_fn,
            sched,
            c.shape,
            key,
            dc.sample_steps,
            dc.eta,
            x_init=x0_init,
            start_step=start_step,
            clip_x0=dc.clip_x0 or None,
            min_alpha_bar=dc.min_alpha_bar,
            spacing=dc.spacing,
            prior=prior,
        )

    if x_init is None:
        change = jax.vmap(lambda k, c, ld, hr: one(k, c, ld, hr, None))(keys, cond, lead, hour)
    else:
        change = jax.vmap(one)(keys, cond, lead, hour, x_init)
    return data.decode_change(scale, cond, change, dc.residual)


def make_forecast_step(
    model,
    sched,
    config,
    mesh,
    num_members: int,
    with_init: bool = False,
    start_step: int | None = None,
):
    """`forecast_step` jitted once: (params, cond, lead, hour, keys, scale[, x_init]); members
    sharded over devices when they divide evenly.

    with_init: the jitted function takes `x_init` as a seventh argument (DEF mode).
    """
    shard = num_members % mesh_lib.batch_size_divisor(mesh) == 0
    member = mesh_lib.data_sharding(mesh) if shard else mesh_lib.replicated(mesh)
    rep = mesh_lib.replicated(mesh)
    return jax.jit(
        functools.partial(
            forecast_step, model=model, sched=sched, config=config, start_step=start_step
        ),
        in_shardings=(rep, member, member, member, member, rep) + ((member,) if with_init else ()),
        out_shardings=member,
    )


def member_keys(case_key: jax.Array, num_members: int, lead_step: int) -> jax.Array:
    """[M] keys fold_in(fold_in(case_key, member), lead_step), member = 0 .. M - 1.

    Member m's key does not depend on M: a larger ensemble only adds members.
    """
    members = jnp.arange(num_members)
    return jax.vmap(lambda m: jax.random.fold_in(jax.random.fold_in(case_key, m), lead_step))(
        members
    )


def rollout(step_fn, params, init, lead_hours, hour, case_key, num_members, num_steps, scale):
    """Autoregressive ensemble: init [H, W, C] at `hour` (UTC) -> [num_steps, M, H, W, C]."""
    state = jnp.broadcast_to(init, (num_members, *init.shape))
    lead = jnp.full((num_members,), lead_hours, jnp.float32)
    out = []
    for k in range(num_steps):
        hours = jnp.full((num_members,), (hour + k * lead_hours) % 24.0, jnp.float32)
        keys = member_keys(case_key, num_members, k)
        state = step_fn(params, state, lead, hours, keys, scale)
        out.append(state)
    return jnp.stack(out)
