"""DEF (Millard et al. 2025, arXiv 2506.07324): a deterministic forecaster turned into an ensemble.

A deterministic network G (the demo's U-Net trained with MSE on the next hour's scaled change,
config variant `deterministic`, its own checkpoint) forecasts; the conditional diffusion model
(the direct sampler's checkpoint) generates structured perturbations of the state G starts from,
at *every* autoregressive step, and each member runs G from its own perturbed state:

    for k = 0 .. K - 1:        (prev, state) = (x_{i-1}, x_i) broadcast to M members at k = 0
        c      = (state - prev) / s                    the state's last-hour change, scaled
        c_L    = sqrt(abar_L) c + sqrt(1 - abar_L) z   forward process to level L    (eq. 1)
        c'     = DPM-Solver++ from c_L at step L to 0, conditioned on prev, with
                 D <- D + gamma (c - D) at every solver step (guidance)              (eq. 2)
        state' = prev + s c'                           the perturbed initial condition
        (prev, state) = (state', G(state'))           G(x) = x + s_G f(0, x, 0, lead, hour)

Config: `eval.def_level` is L (a diffusion step index: the perturbation's noise level; 0 is
no perturbation), `eval.def_guidance` is gamma in eq. 2 (0: free denoising, the perturbation
is a sample of the diffusion model's conditional; 1: the denoiser returns c, no perturbation),
`eval.def_workdir` the deterministic forecaster's workdir (empty: DEF off). The paper's text
says the guidance term controls the perturbation's size; the exact form of its guidance
equation was not available here, so eq. 2 (a pull of the data prediction towards the
unperturbed state, equivalent to adding gamma alpha (D - c) / sigma to eps) is this
implementation's choice. Randomness: streams `def_noise` (z) and `def_sampler`, folded with the
case, member and lead step like the direct ensemble's keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import diffusion, ensemble
from jaxlab.weather import model as model_lib


def perturb(params, prev, state, hour_prev, keys, scale, guidance, *, model, sched, config):
    """Eq. 1-2 for a batch of members: prev, state [B, H, W, C] -> perturbed state [B, H, W, C].

    hour_prev [B]: hour of day of `prev`; keys [B]: per-member keys (noise and sampler);
    scale {"std", "mean"} [C]: the diffusion model's change scale; guidance [] gamma of eq. 2 (an
    argument, so a sweep over it compiles once). The level L is `config.eval.def_level`.
    """
    dc = config.diffusion
    level, gamma = int(config.eval.def_level), guidance
    change = (state - prev) / scale["std"]
    if level <= 0:
        return state

    def one(key, p, c, hr):
        noise_key, sampler_key = jax.random.split(key)
        z = jax.random.normal(noise_key, c.shape)
        c_level = diffusion.q_sample(sched, c[None], jnp.array([level]), z[None])[0]

        def eps_fn(x, t):
            eps = ensemble.apply_eps(
                model,
                params,
                sched,
                dc.prediction,
                x[None],
                p[None],
                jnp.reshape(t, (1,)),
                jnp.ones((1,), jnp.float32),
                hr[None],
                config.model.use_hour,
            )[0]
            abar = sched.alpha_bars[t]
            alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1 - abar)
            d = (x - sigma * eps) / alpha
            return eps + gamma * alpha * (d - c) / sigma  # D -> D + gamma (c - D)

        return diffusion.dpm_solver_pp_sample(
            eps_fn,
            sched,
            c.shape,
            sampler_key,
            dc.sample_steps,
            x_init=c_level,
            start_step=level,
            clip_x0=dc.clip_x0 or None,
            spacing=dc.spacing,
        )

    perturbed = jax.vmap(one)(keys, prev, change, hour_prev)
    return prev + scale["std"] * perturbed


def deterministic(params, state, lead, hour, scale, *, model, config):
    """G: state [B, H, W, C] -> next state; the network sees zeros at diffusion step 0."""
    zeros = jnp.zeros_like(state)
    t = jnp.zeros((state.shape[0],), jnp.int32)
    change = model_lib.apply(model, params, zeros, state, t, lead, hour, config.model.use_hour)
    return state + scale["std"] * change


def make_steps(model, det_model, sched, config, mesh, num_members: int):
    """(perturb, deterministic), each jitted once; members sharded when they divide evenly."""
    shard = num_members % mesh_lib.batch_size_divisor(mesh) == 0
    member = mesh_lib.data_sharding(mesh) if shard else mesh_lib.replicated(mesh)
    rep = mesh_lib.replicated(mesh)
    perturb_fn = jax.jit(
        functools.partial(perturb, model=model, sched=sched, config=config),
        in_shardings=(rep, member, member, member, member, rep, rep),
        out_shardings=member,
    )
    det_fn = jax.jit(functools.partial(deterministic, model=det_model, config=config))
    return perturb_fn, det_fn


def rollout(steps_fns, params, det_params, prev, init, hour, lead, case_key, m, k_steps, scales):
    """DEF members [K, M, H, W, C] and the deterministic forecast alone [K, 1, H, W, C].

    prev, init [H, W, C]: the analyses one lead before and at the start (hour of day `hour` at
    init); scales: (diffusion model's, deterministic model's) {"std", "mean"}, and the guidance
    gamma (a float32 scalar).
    """
    perturb_fn, det_fn = steps_fns
    scale, det_scale, guidance = scales
    leads = jnp.full((m,), lead, jnp.float32)
    prev_b = jnp.broadcast_to(prev, (m, *prev.shape))
    state = jnp.broadcast_to(init, (m, *init.shape))
    det = init[None]
    members, alone = [], []
    for k in range(k_steps):
        hour_now = (hour + k * lead) % 24.0
        hours_prev = jnp.full((m,), (hour_now - lead) % 24.0, jnp.float32)
        keys = ensemble.member_keys(case_key, m, k)
        perturbed = perturb_fn(params, prev_b, state, hours_prev, keys, scale, guidance)
        hours = jnp.full((m,), hour_now, jnp.float32)
        prev_b, state = perturbed, det_fn(det_params, perturbed, leads, hours, det_scale)
        det = det_fn(det_params, det, leads[:1], hours[:1], det_scale)
        members.append(state)
        alone.append(det)
    return jnp.stack(members), jnp.stack(alone)
