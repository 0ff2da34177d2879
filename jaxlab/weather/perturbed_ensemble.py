"""DEF (Millard et al. 2025, arXiv 2506.07324): a deterministic forecaster turned into an ensemble.

A deterministic network G (objective "mse", its own run) forecasts; a conditional diffusion
model perturbs the state G starts from, at *every* autoregressive step, and each member runs G
from its own perturbed state. The paper's method section was not available here; the modes
below follow the authors' published implementation (the ERA5 code `def-era`), read for facts.

Mode "authors" (`eval.def_mode`; variant `def_authors`) is that implementation in every point:

- every state is standardised per sample and channel over the grid (zero mean, unit std with
  ddof = 1), the initial analysis, every sample of the perturbation sampler after *every*
  solver step (their `corrector`) and G's output: members cannot move a field's domain mean or
  variance (`data.spatial_standardise` on both runs; variants `def_authors_deterministic`,
  `def_authors_perturbation`);
- G predicts the next standardised state itself (`diffusion.residual` False);
- the perturbation model P is an eps-predicting DDPM with linear betas 1e-4 .. 0.02 over 1000
  steps, trained on the state given itself: 45% analyses, 45% G's forecasts of them (sample and
  condition), 10% null condition (`steps.perturbation_inputs`);
- a perturbation is drawn from pure noise at t = 999 with DPM-Solver++(2M), 10 steps, the
  diffusers default spacing (999, 899, .., 100, then to sigma = 0), classifier-free guidance
  w = 0.5, `eval.def_walks` draws in a row (each conditioned on the previous), then G:

    z_0 = S(analysis)                                  S: spatial standardisation
    for each lead step k, member m:
        for j = 1 .. J:   z <- DPM-Solver++ of eps_null + w (eps_P(., z) - eps_null), S after
                          every solver step, from x_999 ~ N(0, I)
        z <- S(G(z))

  Members live in standardised units; a forecast in the training period's units needs the
  domain moments, which the method does not forecast (`evaluate`: the initial analysis's for
  the standard protocol, the truth's for the authors' protocol).

Mode "jaxlab" (the former default, then called "paper"; "paper" still reads as it) is this
project's tuned reading: the same loop in training-period units (no spatial standardisation),
G on the scaled change, P trained on analyses only, the evaluated run's cosine schedule and v
target, log-SNR spacing from abar >= 1e-2, x0 clipped, w = `eval.def_guidance` (1 on the demo).

Mode "change" is this implementation's earliest reading, kept as an option: the *forecast*
diffusion model (the direct sampler's checkpoint) perturbs the state's last-hour change,

    c   = (state - prev) / s                              the last-hour change, scaled
    c_L = sqrt(abar_L) c + sqrt(1 - abar_L) z             forward process to step L   (C1)
    c'  = DPM-Solver++ from c_L at step L to 0, conditioned on prev, with
          D <- D + gamma (c - D) at every solver step                                  (C2)
    (prev, state) <- (prev + s c', G(prev + s c'))

L = `eval.def_level` (0: no perturbation), gamma = `eval.def_guidance` (1: none).

Runs: G and P are restored with *their own* recorded configs (`workdir/config.json`); a
setting that does not match the evaluated run or the mode (grid, leads, data, schedule,
prediction target, state units, objective) is an error naming the keys (`check_run`). The
perturbation sampler's settings (steps, spacing, start, clipping, corrector) are P's.

Randomness: streams `def_noise` folded with the case, member and lead step like the direct
ensemble's keys, then with the walk.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core import bundle_files
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore as restore_lib
from jaxlab.weather import data, diffusion, ensemble, steps

MODES = ("authors", "jaxlab", "change")

# Settings every restored run must share with the evaluated one (the data and the grid).
SHARED_KEYS = (
    "data.shape",
    "data.leads",
    "data.synthetic",
    "data.num_times",
    "data.train_fraction",
    "data.dx_m",
)

# The authors' perturbation model and forecaster (their `def-era` code; see
# jaxlab/configs/weather.py for the file and setting each value reproduces).
AUTHORS_PERTURBATION = {
    "train.objective": "perturbation",
    "data.spatial_standardise": True,
    "diffusion.schedule": "linear",
    "diffusion.num_steps": 1000,
    "diffusion.prediction": "eps",
    "train.cond_drop": 0.1,
    "train.forecast_fraction": 0.5,
}
AUTHORS_FORECASTER = {
    "train.objective": "mse",
    "data.spatial_standardise": True,
    "diffusion.residual": False,
}


def mode_of(config: ml_collections.ConfigDict) -> str:
    """`eval.def_mode`, "paper" read as its new name "jaxlab"."""
    mode = config.eval.get("def_mode", "change")
    mode = "jaxlab" if mode == "paper" else mode
    if mode not in MODES:
        raise ValueError(f"eval.def_mode must be one of {MODES} (or 'paper'), got {mode!r}.")
    return mode


def expected_settings(config: ml_collections.ConfigDict, mode: str, role: str) -> dict[str, Any]:
    """{dotted key: value} a run of `role` ("forecaster" or "perturbation") must have recorded
    to serve DEF `mode` for the evaluated `config`."""
    want = {key: steps.config_value(config, key) for key in SHARED_KEYS}
    if mode == "authors":
        want.update(AUTHORS_FORECASTER if role == "forecaster" else AUTHORS_PERTURBATION)
    elif role == "forecaster":
        want.update(
            {
                "train.objective": "mse",
                "data.spatial_standardise": False,
                "diffusion.residual": True,
            }
        )
    else:  # jaxlab: the evaluated run's schedule and target
        want.update({"train.objective": "perturbation", "data.spatial_standardise": False})
        for key in ("diffusion.schedule", "diffusion.num_steps", "diffusion.prediction"):
            want[key] = steps.config_value(config, key)
    return want


def check_run(config, recorded, mode: str, role: str, workdir: str) -> None:
    """Raises naming every key where `recorded` (the run's config.json) differs from what DEF
    `mode` needs of a `role` run for the evaluated `config`."""
    bad = steps.config_mismatches(recorded, expected_settings(config, mode, role))
    if bad:
        raise ValueError(
            f"DEF mode {mode!r}: the {role} run {workdir} does not match the evaluated run; "
            f"its recorded config differs in {'; '.join(bad)}."
        )


@dataclasses.dataclass(frozen=True)
class Network:
    """A restored DEF network with its own recorded config."""

    config: ml_collections.ConfigDict  # the run's recorded config
    model: Any
    params: Any  # EMA params (or raw, `eval.use_ema` False)
    scale: dict  # {"std", "mean"} [C]: its residual scale
    schedule: diffusion.Schedule
    step: int


def restore(config, mesh, workdir: str, mode: str, role: str) -> Network:
    """The `role` network of `workdir`, built from its recorded config after `check_run`."""
    recorded = bundle_files.read_config(workdir)
    check_run(config, recorded, mode, role, workdir)
    recorded.eval.checkpoint = config.eval.checkpoint
    parts = steps.build(recorded, mesh, load_forecaster_params=False)
    state, step = restore_lib.restore_for_eval(
        recorded, workdir, parts, which=config.eval.checkpoint
    )
    params = state.extra["ema"] if config.eval.use_ema else state.params
    return Network(
        recorded,
        parts.model,
        params,
        data.residual_scale(state.extra),
        parts.extras.schedule,
        int(step),
    )


def sampler_settings(pconfig: ml_collections.ConfigDict, schedule) -> dict[str, Any]:
    """The perturbation sampler's settings read from the perturbation run's config: schedule,
    target, solver steps and their indices, spacing, clipping, corrector."""
    dc = pconfig.diffusion
    ts = diffusion.sampling_steps(
        schedule, int(dc.sample_steps), dc.spacing, None, float(dc.min_alpha_bar)
    )
    return {
        "schedule": dc.schedule,
        "num_steps": int(dc.num_steps),
        "beta_first": float(schedule.betas[0]),
        "beta_last": float(schedule.betas[-1]),
        "prediction": dc.prediction,
        "sampler": "dpm_solver_pp",
        "solver_steps": int(dc.sample_steps),
        "timesteps": [int(t) for t in ts],
        "spacing": dc.spacing,
        "clip_x0": float(dc.clip_x0),
        "corrector": bool(dc.get("corrector", False)),
        "spatial_standardise": bool(pconfig.data.get("spatial_standardise", False)),
    }


def guided_eps(eps_cond: jax.Array, eps_null: jax.Array, guidance) -> jax.Array:
    """Classifier-free guidance eps_null + w (eps_cond - eps_null); w = 1 the conditional
    model alone, 0 the unconditional one."""
    return eps_null + guidance * (eps_cond - eps_null)


def guided_sample(eps_pair_fn, sched, shape, key, guidance, dc, corrector=None) -> jax.Array:
    """One perturbation: pure noise -> DPM-Solver++ on the guided eps -> a state [*shape].

    eps_pair_fn(x, t) -> (eps_cond, eps_null), both [*shape]; dc: the perturbation model's
    `diffusion` config (steps, spacing, first step abar >= `min_alpha_bar`, clipping);
    corrector: applied to the sample after every solver step (the authors' re-standardisation).
    """

    def eps_fn(x, t):
        return guided_eps(*eps_pair_fn(x, t), guidance)

    return diffusion.dpm_solver_pp_sample(
        eps_fn,
        sched,
        shape,
        key,
        int(dc.sample_steps),
        clip_x0=float(dc.clip_x0) or None,
        min_alpha_bar=float(dc.min_alpha_bar),
        spacing=dc.spacing,
        corrector=corrector,
    )


def perturb_guided(params, state, hour, keys, guidance, *, model, sched, pconfig, walks: int):
    """`walks` guided draws in a row: state [B, H, W, C] -> perturbed state [B, H, W, C].

    params: the perturbation model's; hour [B]: hour of day of `state`; keys [B] per member;
    guidance [] w (an argument, so a sweep over it compiles once). With the perturbation run's
    `diffusion.corrector` every solver step's sample is standardised over the grid.
    """
    dc, use_hour = pconfig.diffusion, pconfig.model.use_hour
    corrector = data.spatial_standardise if dc.get("corrector", False) else None

    def one(key, s, hr):
        for walk in range(int(walks)):

            def eps_pair(x, t, c=s):
                # One network call for both: batch [conditional, null].
                out = ensemble.apply_eps(
                    model,
                    params,
                    sched,
                    dc.prediction,
                    jnp.stack([x, x]),
                    jnp.stack([c, jnp.zeros_like(c)]),
                    jnp.full((2,), t),
                    jnp.ones((2,), jnp.float32),
                    jnp.stack([hr, hr]),
                    use_hour,
                )
                return out[0], out[1]

            s = guided_sample(
                eps_pair, sched, s.shape, jax.random.fold_in(key, walk), guidance, dc, corrector
            )
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
    change = data.encode_change(scale, prev, state)
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
    return data.decode_change(scale, prev, perturbed)


def deterministic(
    params, state, lead, hour, scale, *, model, residual: bool, use_hour: bool, spatial: bool
):
    """G: state [B, H, W, C] -> next state; the network sees zeros at diffusion step 0. With
    `spatial` (mode "authors") the output is standardised over the grid, as the authors do."""
    forecaster = {
        "params": params,
        "std": scale["std"],
        "mean": scale["mean"],
        "residual": residual,
        "use_hour": use_hour,
    }
    out = steps.forecaster_output(forecaster, state, lead, hour, model=model)
    return data.spatial_standardise(out) if spatial else out


def deterministic_fn(det: Network):
    """`deterministic` jitted for the forecaster `det`: (params, state, lead, hour, scale)."""
    rc = det.config
    return jax.jit(
        functools.partial(
            deterministic,
            model=det.model,
            residual=bool(rc.diffusion.residual),
            use_hour=bool(rc.model.use_hour),
            spatial=bool(rc.data.get("spatial_standardise", False)),
        )
    )


def make_perturb_fn(
    mode: str,
    config,
    mesh,
    num_members: int,
    pert: Network | None,
    walks: int,
    direct_model=None,
    direct_sched=None,
):
    """The jitted perturbation of `mode`; members sharded when they divide evenly.

    "authors" / "jaxlab": (params, state, hour, keys, guidance) with the perturbation network
    `pert` and its own config; "change": (params, prev, state, hour_prev, keys, scale,
    guidance) with the forecast diffusion model `direct_model`.
    """
    shard = num_members % mesh_lib.batch_size_divisor(mesh) == 0
    member = mesh_lib.data_sharding(mesh) if shard else mesh_lib.replicated(mesh)
    rep = mesh_lib.replicated(mesh)
    if mode in ("authors", "jaxlab"):
        return jax.jit(
            functools.partial(
                perturb_guided,
                model=pert.model,
                sched=pert.schedule,
                pconfig=pert.config,
                walks=walks,
            ),
            in_shardings=(rep, member, member, member, rep),
            out_shardings=member,
        )
    return jax.jit(
        functools.partial(perturb_change, model=direct_model, sched=direct_sched, config=config),
        in_shardings=(rep, member, member, member, member, rep, rep),
        out_shardings=member,
    )


def rollout(
    perturb_fn,
    det_fn,
    params,
    det,
    prev,
    init,
    hour,
    lead,
    case_key,
    m,
    k_steps,
    guidance,
    mode: str,
    direct_scale=None,
):
    """DEF members [K, M, H, W, C] and the deterministic forecast alone [K, 1, H, W, C].

    params: the perturbation model's ("authors", "jaxlab") or the forecast diffusion model's
    ("change", whose scale is `direct_scale`); det: the forecaster (`Network`); prev, init
    [H, W, C]: the analyses one lead before ("change" only) and at the start (hour of day
    `hour` at init); guidance: w or gamma. Mode "authors" returns spatially standardised states
    (its initial state is standardised first).
    """
    if mode == "authors":
        init = data.spatial_standardise(init)
    guidance = jnp.float32(guidance)
    leads = jnp.full((m,), lead, jnp.float32)
    prev_b = jnp.broadcast_to(prev, (m, *prev.shape))
    state = jnp.broadcast_to(init, (m, *init.shape))
    alone = init[None]
    members, alone_out = [], []
    for k in range(k_steps):
        hour_now = (hour + k * lead) % 24.0
        hours = jnp.full((m,), hour_now, jnp.float32)
        keys = ensemble.member_keys(case_key, m, k)
        if mode == "change":
            hours_prev = jnp.full((m,), (hour_now - lead) % 24.0, jnp.float32)
            perturbed = perturb_fn(params, prev_b, state, hours_prev, keys, direct_scale, guidance)
        else:
            perturbed = perturb_fn(params, state, hours, keys, guidance)
        prev_b, state = perturbed, det_fn(det.params, perturbed, leads, hours, det.scale)
        alone = det_fn(det.params, alone, leads[:1], hours[:1], det.scale)
        members.append(state)
        alone_out.append(alone)
    return jnp.stack(members), jnp.stack(alone_out)
