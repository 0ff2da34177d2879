"""DEF (Millard et al. 2025, arXiv 2506.07324): a deterministic forecaster turned into an ensemble.

A deterministic network G (the demo's U-Net trained with MSE on the next hour's scaled change,
config variant `deterministic`, its own checkpoint) forecasts; a conditional diffusion model
perturbs the state G starts from, at *every* autoregressive step, and each member runs G from
its own perturbed state. G(x) = x + s_G f(0, x, 0, lead, hour).

Mode "paper" (`eval.def_mode`, the default) follows the paper. Its perturbation model P (config
variant `perturbation`, its own checkpoint) is a conditional DDPM eps_P(x_t, t, c) of the
standardised *state* x given a condition c: trained with c = x itself, and with c = 0 (the null
condition) for `train.cond_drop` = 10% of the examples, so one network gives the conditional and
the unconditional noise prediction (classifier-free guidance). Member m at lead step k:

    for j = 1 .. J:                                         J = eval.def_walks (a random walk)
        x_T ~ N(0, I)                                       pure noise, no trace of the state (P1)
        eps~(x_t, t) = eps_P(x_t, t, 0) + w [eps_P(x_t, t, c) - eps_P(x_t, t, 0)],  c = state  (P2)
        state <- the DPM-Solver++ solution of eps~ from x_T to t = 0
    state <- G(state)

w = `eval.def_guidance` multiplies the conditional-minus-unconditional noise prediction: w = 1
samples the conditional model alone (members stay close to the state: P learned x given x, so
the perturbation is what that conditional leaves open), w = 0 the unconditional one (a
climatological state, unrelated to the analysis), between the two the perturbation grows as w
falls. The state is not noised to an intermediate step: every perturbation starts from pure
noise (P1), its size set by w and by J.

Mode "change" is this implementation's earlier reading, kept as an option: the *forecast*
diffusion model (the direct sampler's checkpoint) perturbs the state's last-hour change,

    c   = (state - prev) / s                              the last-hour change, scaled
    c_L = sqrt(abar_L) c + sqrt(1 - abar_L) z             forward process to step L   (C1)
    c'  = DPM-Solver++ from c_L at step L to 0, conditioned on prev, with
          D <- D + gamma (c - D) at every solver step                                  (C2)
    (prev, state) <- (prev + s c', G(prev + s c'))

L = `eval.def_level` (0: no perturbation), gamma = `eval.def_guidance` (1: none). It needs no
third network (README, "DEF": both modes measured on the demo).

Randomness: streams `def_noise` (both modes) folded with the case, member and lead step like
the direct ensemble's keys, then with the walk.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import diffusion, ensemble
from jaxlab.weather import model as model_lib


def guided_eps(eps_cond: jax.Array, eps_null: jax.Array, guidance) -> jax.Array:
    """Eq. P2: eps_null + w (eps_cond - eps_null); w = 1 the conditional, 0 the unconditional."""
    return eps_null + guidance * (eps_cond - eps_null)


def guided_sample(eps_pair_fn, sched, shape, key, guidance, config) -> jax.Array:
    """Eq. P1-P2 once: pure noise -> DPM-Solver++ on the guided eps -> a state [*shape].

    eps_pair_fn(x, t) -> (eps_cond, eps_null), both [*shape]. Starts from N(0, 1) at the
    sampler's first step (abar >= `diffusion.min_alpha_bar`) with the configured spacing.
    """
    dc = config.diffusion

    def eps_fn(x, t):
        return guided_eps(*eps_pair_fn(x, t), guidance)

    return diffusion.dpm_solver_pp_sample(
        eps_fn,
        sched,
        shape,
        key,
        dc.sample_steps,
        clip_x0=dc.clip_x0 or None,
        min_alpha_bar=dc.min_alpha_bar,
        spacing=dc.spacing,
    )


def perturb_paper(params, state, hour, keys, guidance, *, model, sched, config):
    """Eq. P1-P2, `eval.def_walks` times: state [B, H, W, C] -> perturbed state [B, H, W, C].

    params: the perturbation model's; hour [B]: hour of day of `state`; keys [B]: per-member
    keys; guidance [] w (an argument, so a sweep over it compiles once).
    """
    use_hour = config.model.use_hour

    def one(key, s, hr):
        for walk in range(int(config.eval.def_walks)):

            def eps_pair(x, t, c=s):
                # One network call for both: batch [conditional, null].
                out = ensemble.apply_eps(
                    model,
                    params,
                    sched,
                    config.diffusion.prediction,
                    jnp.stack([x, x]),
                    jnp.stack([c, jnp.zeros_like(c)]),
                    jnp.full((2,), t),
                    jnp.ones((2,), jnp.float32),
                    jnp.stack([hr, hr]),
                    use_hour,
                )
                return out[0], out[1]

            s = guided_sample(eps_pair, sched, s.shape, jax.random.fold_in(key, walk), guidance,
                              config)  # fmt: skip
        return s

    return jax.vmap(one)(keys, state, hour)


def perturb_change(params, prev, state, hour_prev, keys, scale, guidance, *, model, sched, config):
    """Eq. C1-C2 for a batch of members: prev, state [B, H, W, C] -> perturbed state.

    params, scale {"std", "mean"} [C]: the forecast diffusion model's; hour_prev [B]: hour of
    day of `prev`; keys [B]: per-member keys (noise and sampler); guidance [] gamma. The level
    L is `config.eval.def_level`.
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
    """(perturb, deterministic), each jitted once; members sharded when they divide evenly.

    `model` is the perturbation model ("paper" mode) or the forecast diffusion model ("change").
    """
    shard = num_members % mesh_lib.batch_size_divisor(mesh) == 0
    member = mesh_lib.data_sharding(mesh) if shard else mesh_lib.replicated(mesh)
    rep = mesh_lib.replicated(mesh)
    if config.eval.get("def_mode", "change") == "paper":
        perturb_fn = jax.jit(
            functools.partial(perturb_paper, model=model, sched=sched, config=config),
            in_shardings=(rep, member, member, member, rep),
            out_shardings=member,
        )
    else:
        perturb_fn = jax.jit(
            functools.partial(perturb_change, model=model, sched=sched, config=config),
            in_shardings=(rep, member, member, member, member, rep, rep),
            out_shardings=member,
        )
    det_fn = jax.jit(functools.partial(deterministic, model=det_model, config=config))
    return perturb_fn, det_fn


def rollout(steps_fns, params, det_params, prev, init, hour, lead, case_key, m, k_steps, scales,
            mode: str = "paper"):  # fmt: skip
    """DEF members [K, M, H, W, C] and the deterministic forecast alone [K, 1, H, W, C].

    params: the perturbation model's ("paper") or the forecast diffusion model's ("change");
    prev, init [H, W, C]: the analyses one lead before (used by "change" only) and at the start
    (hour of day `hour` at init); scales: (diffusion model's, deterministic model's)
    {"std", "mean"}, and the guidance (w or gamma, a float32 scalar).
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
        hours = jnp.full((m,), hour_now, jnp.float32)
        keys = ensemble.member_keys(case_key, m, k)
        if mode == "paper":
            perturbed = perturb_fn(params, state, hours, keys, guidance)
        else:
            hours_prev = jnp.full((m,), (hour_now - lead) % 24.0, jnp.float32)
            perturbed = perturb_fn(params, prev_b, state, hours_prev, keys, scale, guidance)
        prev_b, state = perturbed, det_fn(det_params, perturbed, leads, hours, det_scale)
        det = det_fn(det_params, det, leads[:1], hours[:1], det_scale)
        members.append(state)
        alone.append(det)
    return jnp.stack(members), jnp.stack(alone)
