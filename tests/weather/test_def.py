"""DEF (perturbed_ensemble.py).

Authors' mode, each point of the authors' method: the spatial standardisation on a constructed
field and the corrector after every solver step, the 45 / 45 / 10 training mix counted over a
batch, the guidance weight and sampler settings read back from a run's recorded config, the
restore-mismatch error. Guided sampling: w against the closed form of Gaussian conditional /
unconditional models. Rollouts: every lead step is perturbed. Change mode: the noise level and
the pull control the perturbation's size. The deterministic forecaster is the network at step 0
on zeros."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab.configs import weather as weather_config
from jaxlab.core import bundle_files, rng
from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import data, diffusion, perturbed_ensemble, steps
from jaxlab.weather import model as model_lib
from tests.weather.test_model import host_params

GRID = (4, 4, 7)
SCALE = {"std": jnp.ones((7,)), "mean": jnp.zeros((7,))}


def gaussian_eps(sched, mean, std):
    """Exact eps of x0 ~ N(mean, std^2): sqrt(1 - abar) (x - sqrt(abar) mean) / var_t."""

    def eps(x, t):
        abar = sched.alpha_bars[t]
        var = abar * std**2 + 1 - abar
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * mean) / var

    return eps


# Spatial standardisation and the corrector.


def test_spatial_standardisation_of_a_constructed_field_matches_the_unbiased_formula():
    """A field a + b * pattern per channel comes out as (pattern - mean) / std with the ddof = 1
    std (torch's default, the authors'): zero mean and unit std per sample and channel, and
    the moments are those of numpy's formula."""
    gen = np.random.default_rng(0)
    pattern = gen.normal(size=(2, 5, 6, 3))
    field = np.array([10.0, -3.0, 0.5]) + np.array([4.0, 0.1, 2.0]) * pattern
    z = np.asarray(data.spatial_standardise(jnp.asarray(field, jnp.float32)))
    mean = field.mean(axis=(1, 2), keepdims=True)
    std = field.std(axis=(1, 2), ddof=1, keepdims=True)
    np.testing.assert_allclose(z, (field - mean) / std, atol=1e-5)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2), ddof=1), 1.0, rtol=1e-5)
    m, s = data.spatial_moments(jnp.asarray(field, jnp.float32))
    np.testing.assert_allclose(np.asarray(m), mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s), std, rtol=1e-5)


def test_corrector_keeps_every_solver_steps_sample_standardised():
    """With the corrector, DPM-Solver++ on an eps that pulls towards a field of domain mean 3 and
    std 2 returns a field of mean 0 and std 1 per channel (the last step included), and every
    solver step's sample the network sees after the first is standardised too (recorded by
    the eps function through a host callback); without it the domain moments come through."""
    sched = diffusion.make_schedule("linear", 1000)
    target = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (6, 5, 2))
    eps = gaussian_eps(sched, target, 0.1)
    seen = []

    def eps_fn(x, t):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), x)
        return eps(x, t)

    def run(corrector):
        seen.clear()
        out = diffusion.dpm_solver_pp_sample(
            eps_fn,
            sched,
            target.shape,
            jax.random.key(0),
            10,
            spacing="linspace",
            corrector=corrector,
        )
        jax.effects_barrier()
        return np.asarray(out)

    out = run(data.spatial_standardise)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1), ddof=1), 1.0, rtol=1e-4)
    assert len(seen) == 10
    for x in seen[1:]:
        np.testing.assert_allclose(x.mean(axis=(0, 1)), 0.0, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=(0, 1), ddof=1), 1.0, rtol=1e-4)
    raw = run(None)
    t = np.asarray(target)
    np.testing.assert_allclose(raw.mean(axis=(0, 1)), t.mean(axis=(0, 1)), atol=0.1)
    np.testing.assert_allclose(raw.std(axis=(0, 1)), t.std(axis=(0, 1)), rtol=0.1)


# The training mix.


def test_authors_training_mix_is_45_analyses_45_forecasts_10_null_over_a_batch():
    """Counted over one batch of 20,000 examples: 10% null condition (zeros; sample the
    analysis), 45% analysis as sample and condition, 45% the forecast as both."""
    n = 20000
    state = jnp.broadcast_to(
        jnp.arange(1, n + 1, dtype=jnp.float32)[:, None, None, None], (n, 1, 1, 2)
    )
    forecast = -1.0 - state  # distinguishable from every analysis
    x0, cond, kept, used = steps.perturbation_inputs(state, jax.random.key(3), 0.1, forecast, 0.5)
    x0, cond = np.asarray(x0)[:, 0, 0, 0], np.asarray(cond)[:, 0, 0, 0]
    s, f = np.asarray(state)[:, 0, 0, 0], np.asarray(forecast)[:, 0, 0, 0]
    null = (cond == 0) & (x0 == s)
    analyses = (cond == s) & (x0 == s) & ~null
    forecasts = (cond == f) & (x0 == f)
    assert null.sum() + analyses.sum() + forecasts.sum() == n  # every example is one of them
    fractions = np.array([analyses.mean(), forecasts.mean(), null.mean()])
    np.testing.assert_allclose(fractions, [0.45, 0.45, 0.10], atol=0.012)
    np.testing.assert_array_equal(np.asarray(used), forecasts)
    np.testing.assert_array_equal(~np.asarray(kept), null)
    # forecast_fraction 0: jaxlab's analyses-only mix, the same drop draw as before.
    x0, cond, kept0, used0 = steps.perturbation_inputs(state, jax.random.key(3), 0.1)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(state))
    np.testing.assert_array_equal(np.asarray(kept0), np.asarray(kept))
    assert not np.asarray(used0).any()


def test_perturbation_loss_trains_on_the_forecasters_output_in_the_authors_mix():
    """The loss with forecast_fraction 0.5 differs from the analyses-only loss (the forecaster's
    output enters), and with forecast_fraction 0 it equals the former step's loss."""
    config = weather_config.get_config("def_authors_perturbation")
    config.data.shape, config.model.base_dim = (8, 8), 8
    model = model_lib.make_model(config)
    grid = (8, 8, 7)
    params, fparams = host_params(model, grid, 0), host_params(model, grid, 1)
    sched = diffusion.make_schedule("linear", 1000)
    gen = np.random.default_rng(0)
    batch = {
        "cond": jnp.asarray(gen.normal(size=(16, *grid)), jnp.float32),
        "target": jnp.asarray(gen.normal(size=(16, *grid)), jnp.float32),
        "lead": jnp.ones(16),
        "hour": jnp.zeros(16),
    }
    extra = {
        "residual_std": jnp.ones(7),
        "residual_mean": jnp.zeros(7),
        "forecaster": {"params": fparams, "std": jnp.ones(7), "mean": jnp.zeros(7)},
    }
    common = dict(
        model=model, schedule=sched, prediction="eps", use_hour=False, spatial=True, cond_drop=0.1
    )
    static = {"residual": False, "use_hour": True}
    key = jax.random.key(5)

    def loss(forecast_fraction, forecaster_static):
        """The loss jitted as the train step runs it (op by op, every op would compile)."""
        fn = functools.partial(
            steps.perturbation_loss,
            forecast_fraction=forecast_fraction,
            forecaster_static=forecaster_static,
            **common,
        )
        return np.asarray(jax.jit(fn, static_argnums=4)(params, batch, key, extra, True))

    mix, plain = loss(0.5, static), loss(0.0, {})
    assert np.abs(mix - plain).max() > 1e-4


# Guidance and the sampler read back from a run.


@functools.cache
def _guided_sampler():
    """jit(vmap) of one guided draw over keys, state and w traced: one compile for every call."""
    config = weather_config.get_config("tiny")
    config.diffusion.sample_steps, config.diffusion.min_alpha_bar = 20, 1e-4
    sched = diffusion.make_schedule("cosine", 1000)
    null = gaussian_eps(sched, 0.0, 1.0)

    def one(key, state, guidance):
        cond = gaussian_eps(sched, state, 0.3)
        pair = lambda x, t: (cond(x, t), null(x, t))  # noqa: E731
        return perturbed_ensemble.guided_sample(pair, sched, (3,), key, guidance, config.diffusion)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def guided_draws(state, guidance, n=2000):
    """[n, 3] guided draws with a Gaussian conditional N(state, 0.3^2) and unconditional
    N(0, 1) model (exact eps), 20 DPM-Solver++ steps from abar >= 1e-4."""
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(_guided_sampler()(keys, jnp.asarray(state), jnp.float32(guidance)))


def test_guidance_limits_match_the_conditional_and_unconditional_closed_forms():
    """w = 1 samples N(state, 0.3^2), w = 0 N(0, 1) whatever the state (bitwise: the
    conditional term is multiplied by 0); w = 0.5 lies between, and the perturbation (the
    distance of the draws from the state) grows as w falls."""
    state = np.array([0.8, -0.5, 0.0], np.float32)
    x1 = guided_draws(state, 1.0)
    np.testing.assert_allclose(x1.mean(0), state, atol=0.03)
    np.testing.assert_allclose(x1.std(0), 0.3, rtol=0.06)
    x0 = guided_draws(state, 0.0)
    np.testing.assert_allclose(x0.mean(0), 0.0, atol=0.07)
    np.testing.assert_allclose(x0.std(0), 1.0, rtol=0.06)
    np.testing.assert_array_equal(x0, guided_draws(-state, 0.0))
    half = guided_draws(state, 0.5)
    assert float(half.std(0).min()) > 0.3 and float(half.std(0).max()) < 1.0, half.std(0)
    assert 0.0 < half.mean(0)[0] < state[0], half.mean(0)
    distance = [float(np.abs(x - state).mean()) for x in (x1, half, x0)]
    assert distance[0] < distance[1] < distance[2], distance
    np.testing.assert_allclose(perturbed_ensemble.guided_eps(2.0, 1.0, 0.25), 1.25)


def record(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes `config` as a training run records it (workdir/config.json, tuples as lists)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(json.loads(json.dumps(config.to_dict(), default=str)), f)
    return workdir


def test_authors_guidance_and_sampler_settings_read_back_from_the_runs_recorded_config(tmp_path):
    """From a def_authors_perturbation run's config.json: linear betas 1e-4 .. 0.02 over 1000
    steps, eps target, DPM-Solver++ with 10 steps at 999, 899, .., 100 (diffusers' linspace),
    corrector on, no clipping; the def_authors evaluation's guidance is 0.5, one walk, and its
    comparison walks are 1, 3, 7."""
    workdir = record(weather_config.get_config("def_authors_perturbation"), str(tmp_path / "p"))
    recorded = bundle_files.read_config(workdir)
    sched = diffusion.make_schedule(recorded.diffusion.schedule, recorded.diffusion.num_steps)
    settings = perturbed_ensemble.sampler_settings(recorded, sched)
    assert settings["timesteps"] == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert (settings["schedule"], settings["num_steps"], settings["prediction"]) == (
        "linear",
        1000,
        "eps",
    )
    assert settings["beta_first"] == pytest.approx(1e-4) and settings["beta_last"] == (
        pytest.approx(0.02)
    )
    assert settings["corrector"] and settings["spatial_standardise"]
    assert settings["clip_x0"] == 0.0 and settings["solver_steps"] == 10
    evaluation = weather_config.get_config("def_authors")
    specs = __import__("jaxlab.weather.evaluate", fromlist=["def_specs"])
    evaluation.eval.def_workdir = evaluation.eval.def_perturb_workdir = "x"
    evaluation.eval.def_authors_workdir = evaluation.eval.def_authors_perturb_workdir = "y"
    got = {s["name"]: (s["mode"], s["guidance"], s["walks"]) for s in specs.def_specs(evaluation)}
    assert got == {
        "def": ("authors", 0.5, 1),
        "def_authors_j1": ("authors", 0.5, 1),
        "def_authors_j3": ("authors", 0.5, 3),
        "def_authors_j7": ("authors", 0.5, 7),
    }


# The restore-mismatch error.


def test_a_perturbation_run_that_does_not_match_is_an_error_naming_the_keys(tmp_path):
    """The authors' mode given jaxlab's perturbation run (cosine, v, training-period units), or
    any run on another grid, stops before restoring, naming each differing key."""
    evaluation = weather_config.get_config("def_authors")
    jaxlab_run = record(weather_config.get_config("perturbation"), str(tmp_path / "jaxlab"))
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    with pytest.raises(ValueError) as e:
        perturbed_ensemble.restore(evaluation, mesh, jaxlab_run, "authors", "perturbation")
    message = str(e.value)
    for key in (
        "diffusion.schedule",
        "diffusion.prediction",
        "data.spatial_standardise",
        "train.forecast_fraction",
        jaxlab_run,
    ):
        assert key in message, message
    other = weather_config.get_config("def_authors_perturbation")
    other.data.shape = (16, 24)
    other_run = record(other, str(tmp_path / "grid"))
    with pytest.raises(ValueError, match=r"data.shape: recorded \[16, 24\], expected \[32, 48\]"):
        perturbed_ensemble.restore(evaluation, mesh, other_run, "authors", "perturbation")
    # jaxlab's mode needs the evaluated run's schedule and target.
    demo = weather_config.get_config("demo")
    eps_run = weather_config.get_config("perturbation")
    eps_run.diffusion.prediction = "eps"
    with pytest.raises(ValueError, match="diffusion.prediction: recorded 'eps', expected 'v'"):
        perturbed_ensemble.check_run(demo, eps_run, "jaxlab", "perturbation", "w")
    perturbed_ensemble.check_run(
        demo, weather_config.get_config("perturbation"), "jaxlab", "perturbation", "w"
    )
    perturbed_ensemble.check_run(
        evaluation,
        weather_config.get_config("def_authors_deterministic"),
        "authors",
        "forecaster",
        "w",
    )


# Rollouts with random networks.


def _configs_model_schedule(authors: bool):
    """(config, pconfig, dconfig, model, sched) of the evaluation, perturbation model and
    forecaster (authors' or jaxlab's), base_dim 8 on GRID."""
    config = weather_config.get_config("def_authors" if authors else "tiny")
    config.data.shape = GRID[:2]
    pconfig = weather_config.get_config("def_authors_perturbation" if authors else "perturbation")
    pconfig.diffusion.sample_steps = 3 if authors else 2
    dconfig = weather_config.get_config("def_authors_deterministic" if authors else "deterministic")
    for c in (config, pconfig, dconfig):
        c.model.base_dim = 8
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule(pconfig.diffusion.schedule, 1000)
    return config, pconfig, dconfig, model, sched


def _network(model, sched, config, seed: int) -> perturbed_ensemble.Network:
    """A network of `model` with random params (`seed`) on GRID, at step 0."""
    return perturbed_ensemble.Network(
        model=model,
        scale=SCALE,
        schedule=sched,
        step=0,
        config=config,
        params=host_params(model, GRID, seed),
    )


@functools.cache
def forecaster(authors: bool):
    """(det, det_fn): the forecaster (random params, seed 1) and its jitted map; the change and
    jaxlab setups share one (one compile, not one per setup)."""
    _, _, dconfig, model, sched = _configs_model_schedule(authors)
    det = _network(model, sched, dconfig, seed=1)
    return det, perturbed_ensemble.deterministic_fn(det)


@functools.cache
def setup(mode: str = "change", walks: int = 1, level: int = 0):
    authors = mode == "authors"
    config, pconfig, _, model, sched = _configs_model_schedule(authors)
    config.eval.def_level = level
    pert = _network(model, sched, pconfig, seed=0)
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    perturb_fn = perturbed_ensemble.make_perturb_fn(
        mode, config, mesh, 4, pert, walks, model, sched
    )
    det, det_fn = forecaster(authors)
    return config, pert, det, perturb_fn, det_fn


def def_members(guidance: float, steps_: int = 2, mode="change", walks=1, level=0):
    """[K, M, ...] DEF members and [K, 1, ...] deterministic forecast, tiny random networks."""
    config, pert, det, perturb_fn, det_fn = setup(mode, walks, level)
    gen = np.random.default_rng(0)
    prev, init = (jnp.asarray(2.0 + 0.5 * gen.normal(size=GRID), jnp.float32) for _ in range(2))
    key = rng.stream(config.seed, "def_noise", 0)
    members, alone = perturbed_ensemble.rollout(
        perturb_fn,
        det_fn,
        pert.params,
        det,
        prev,
        init,
        12.0,
        1,
        key,
        4,
        steps_,
        guidance,
        mode,
        SCALE,
    )
    return np.asarray(members), np.asarray(alone)


def spread(members):
    return float(members.std(1).mean())


@pytest.mark.slow
def test_authors_rollout_members_stay_standardised_at_every_lead():
    """Authors' mode: the initial analysis (domain mean 2) is standardised, and every member and
    the deterministic forecast at every lead has zero mean and unit std per channel; members
    differ from one another (perturbed) at every lead."""
    members, alone = def_members(0.5, mode="authors")
    for out in (members, alone):
        np.testing.assert_allclose(out.mean(axis=(2, 3)), 0.0, atol=1e-4)
        np.testing.assert_allclose(out.std(axis=(2, 3), ddof=1), 1.0, rtol=1e-3)
    assert spread(members[:1]) > 1e-3 and spread(members[1:]) > 1e-3


@pytest.mark.slow
def test_def_perturbation_grows_with_level_and_shrinks_with_guidance():
    members0, alone = def_members(0.0, level=0)
    # Level 0: no perturbation, every member is the deterministic forecast.
    np.testing.assert_allclose(members0, np.broadcast_to(alone, members0.shape), atol=1e-5)
    low, high = spread(def_members(0.0, level=100)[0]), spread(def_members(0.0, level=600)[0])
    assert 0.0 < low < high, (low, high)
    guided = spread(def_members(0.8, level=600)[0])
    assert guided < 0.5 * high, (guided, high)
    # Full guidance returns the unperturbed state: DEF collapses to the deterministic forecast.
    full, alone = def_members(1.0, level=600)
    np.testing.assert_allclose(full, np.broadcast_to(alone, full.shape), atol=1e-4)
    # Every lead step is perturbed: the second lead is not the deterministic map of the first.
    members, _ = def_members(0.0, level=600)
    _, _, det, _, det_fn = setup("change", 1, 600)
    carried = det_fn(det.params, jnp.asarray(members[0]), jnp.ones(4), jnp.full((4,), 13.0), SCALE)
    assert np.abs(np.asarray(carried) - members[1]).max() > 1e-3


@pytest.mark.slow
def test_guided_mode_perturbs_every_lead_step_and_walks_move_further():
    """jaxlab's mode: members differ from one another at every lead, the second lead is not G of
    the first (perturbed again), and a second walk changes the members."""
    members, alone = def_members(0.5, mode="jaxlab")
    assert spread(members[:1]) > 1e-3 and spread(members[1:]) > 1e-3
    _, _, det, _, det_fn = setup("jaxlab")
    carried = det_fn(det.params, jnp.asarray(members[0]), jnp.ones(4), jnp.full((4,), 13.0), SCALE)
    assert np.abs(np.asarray(carried) - members[1]).max() > 1e-3
    two, _ = def_members(0.5, steps_=1, mode="jaxlab", walks=2)
    assert np.abs(two - members[:1]).max() > 1e-3
