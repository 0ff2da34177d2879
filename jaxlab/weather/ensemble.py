"""Ensemble forecasts: members vmapped over keys `fold_in(case_key, member)`, sharded on `data`.

A member's randomness depends only on (seed, case, member, lead step), never on the ensemble
size or the device count, so member 3 of a 4-member run equals member 3 of a 16-member run.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import diffusion
from jaxlab.weather.train import apply_eps


def forecast_step(
    params, cond, lead, keys, res_std, x_init=None, *, model, sched, config, start_step=None
):
    """One lead-time step for a batch of members: cond [B, H, W, C] -> next state [B, H, W, C].

    keys [B] are per-member keys; each member samples the scaled change with the configured
    sampler, then x_next = cond + residual_std * change (or the sampled state directly).
    `x_init` [B, H, W, C] / `start_step` start the sampler from a given (partially noised)
    input instead of pure noise (DEF mode).
    """
    dc = config.diffusion

    def one(key, c, ld, x0_init):
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
        )

    if x_init is None:
        change = jax.vmap(lambda k, c, ld: one(k, c, ld, None))(keys, cond, lead)
    else:
        change = jax.vmap(one)(keys, cond, lead, x_init)
    return cond + res_std * change if dc.residual else change


def make_forecast_step(
    model,
    sched,
    config,
    mesh,
    num_members: int,
    with_init: bool = False,
    start_step: int | None = None,
):
    """`forecast_step` jitted once; members sharded over devices when they divide evenly.

    with_init: the jitted function takes `x_init` as a sixth argument (DEF mode, ODE forecasts).
    """
    shard = num_members % mesh_lib.batch_size_divisor(mesh) == 0
    member = mesh_lib.data_sharding(mesh) if shard else mesh_lib.replicated(mesh)
    rep = mesh_lib.replicated(mesh)
    return jax.jit(
        functools.partial(
            forecast_step, model=model, sched=sched, config=config, start_step=start_step
        ),
        in_shardings=(rep, member, member, member, rep) + ((member,) if with_init else ()),
        out_shardings=member,
    )


def member_keys(root: jax.Array, case: int, num_members: int, lead_step: int) -> jax.Array:
    """[M] keys: fold_in(fold_in(fold_in(root, case), member), lead_step)."""
    case_key = jax.random.fold_in(root, case)
    return jnp.stack(
        [jax.random.fold_in(jax.random.fold_in(case_key, m), lead_step) for m in range(num_members)]
    )


def rollout(step_fn, params, init, lead_hours, root, case, num_members, num_steps, res_std):
    """Autoregressive ensemble: init [H, W, C] -> [num_steps, M, H, W, C] (jax arrays)."""
    state = jnp.broadcast_to(init, (num_members, *init.shape))
    lead = jnp.full((num_members,), lead_hours, jnp.float32)
    out = []
    for k in range(num_steps):
        state = step_fn(params, state, lead, member_keys(root, case, num_members, k), res_std)
        out.append(state)
    return jnp.stack(out)


def benchmark_sampling(config, mesh: jax.sharding.Mesh) -> dict[str, float]:
    """Sampling speed at the config's full grid, for scripts/benchmark.py (its sampling hook).

    One forecast step draws `config.eval.bench_members` members (sharded over devices when they
    divide evenly) with `config.diffusion.sample_steps` solver steps each, i.e. that many network
    evaluations per member at the full `data.shape` grid. Compiled ahead of time (timed
    separately), then run `config.eval.bench_repeats` times; random params, no files. At
    1059 x 1799 on a CPU one member of 20 DPM-Solver++ steps takes minutes, so fullres_minimal
    times a single member once.
    """
    from jaxlab.weather.train import build

    ec = config.eval
    grid = (*config.data.shape, len(config.data.variables))
    res_std = np.ones(grid[-1], np.float32)
    model, _, sched, init_fn, _, shardings = build(config, mesh, grid, res_std)
    params = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(config.seed)).params
    members = ec.bench_members or ec.num_members
    step_fn = make_forecast_step(model, sched, config, mesh, members)
    cond = jnp.zeros((members, *grid), jnp.float32)
    lead = jnp.ones((members,), jnp.float32)
    keys = member_keys(jax.random.key(config.seed), 0, members, 0)
    start = time.perf_counter()
    compiled = step_fn.lower(params, cond, lead, keys, res_std).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    logging.info(
        "benchmark_sampling: %d member(s) x %d %s steps on %s, %d run(s) (compiled in %.1f s)",
        members,
        config.diffusion.sample_steps,
        config.diffusion.sampler,
        grid,
        ec.bench_repeats,
        compile_s,
    )
    start = time.perf_counter()
    for _ in range(ec.bench_repeats):
        jax.block_until_ready(compiled(params, cond, lead, keys, res_std))
    seconds = (time.perf_counter() - start) / ec.bench_repeats
    return {
        "sampling_grid": list(config.data.shape),
        "sampling_sampler": config.diffusion.sampler,
        "sampling_members": members,
        "sampling_solver_steps": config.diffusion.sample_steps,
        "sampling_repeats": ec.bench_repeats,
        "sampling_compile_s": compile_s,
        "sampling_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "sampling_s_per_member": seconds / members,
        "sampling_members_per_sec": members / seconds,
    }
