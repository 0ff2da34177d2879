"""Spectral norm, gradient penalty, generator output, the WGAN-GP update and the metrics."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.configs import sales as sales_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng, steps_jit
from jaxlab.sales import evaluate, forecast, steps
from jaxlab.sales import gan as gan_lib
from jaxlab.sales import metrics as metrics_lib
from jaxlab.sales import model as model_lib
from jaxlab.sales.evaluate import discriminative_score


def test_spectral_dense_normalises_the_kernel_as_u_is_updated():
    """flax SpectralNorm in the `spectral` collection: after enough power iterations the layer
    computes x @ (W / sigma_max(W)) + b, with sigma_max from an independent SVD."""
    layer = model_lib.spectral_dense(6, "dense")
    x = jax.random.normal(jax.random.key(3), (2, 9))
    variables = layer.init(jax.random.key(0), x, update_stats=False)
    params = jax.tree.map(lambda v: v * 5.0, variables["params"])  # sigma far from 1
    variables = {"params": params, model_lib.SPECTRAL: variables[model_lib.SPECTRAL]}
    for _ in range(60):  # u advances one power iteration per call with update_stats
        _, updates = layer.apply(variables, x, update_stats=True, mutable=[model_lib.SPECTRAL])
        variables = {**variables, model_lib.SPECTRAL: updates[model_lib.SPECTRAL]}
    (dense,) = params.values()  # standalone, the wrapped Dense is "layer_instance"
    kernel, bias = np.asarray(dense["kernel"]), np.asarray(dense["bias"])
    top = np.linalg.svd(kernel, compute_uv=False)[0]
    out = layer.apply(variables, x, update_stats=False)
    np.testing.assert_allclose(out, np.asarray(x) @ (kernel / top) + bias, rtol=1e-4, atol=1e-5)


def test_relu_with_gradient_is_relu_forward_and_leaky_backward():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    np.testing.assert_array_equal(model_lib.relu_with_gradient(x), np.maximum(np.asarray(x), 0))
    grad = jax.grad(lambda v: jnp.sum(model_lib.relu_with_gradient(v, 0.1)))(x)
    np.testing.assert_allclose(grad, [0.1, 0.1, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def _tiny_generator_params():
    """tiny's generator and its initial parameters (key 1), initialised once for the module:
    the init compiles for seconds, and parameters do not depend on the batch they see."""
    config = sales_config.get_config("tiny")
    generator, _ = model_lib.make_gan(config)
    noise = jnp.zeros((1, config.data.horizon, config.gan.noise_dim), jnp.float32)
    params = jax.jit(generator.init)(jax.random.key(1), noise, *gan_lib.dummy_condition(config))
    return config, generator, params["params"]


@pytest.fixture
def tiny_generator(_tiny_generator_params):
    """(tiny config, generator, a fresh copy of its initial parameters that a test may edit)."""
    config, generator, params = _tiny_generator_params
    return config.copy_and_resolve_references(), generator, jax.tree.map(jnp.array, params)


def test_a_zeroed_generator_still_gets_a_gradient_towards_larger_outputs(tiny_generator):
    """The regression of the named-stream port: once every output is 0 a ReLU output passes no
    gradient and the generator stays dead; the straight-through output recovers."""
    config, generator, params = tiny_generator
    cond = gan_lib.dummy_condition(config, batch=4)
    noise = jax.random.normal(jax.random.key(0), (4, config.data.horizon, config.gan.noise_dim))
    params["out"]["bias"] = params["out"]["bias"] - 100.0  # every pre-activation negative
    out = jax.jit(generator.apply)({"params": params}, noise, *cond)
    assert np.all(np.asarray(out) == 0.0)
    mean_out = jax.jit(jax.grad(lambda p: jnp.mean(generator.apply({"params": p}, noise, *cond))))
    grads = mean_out(params)
    assert float(grads["out"]["bias"][0]) > 0.01  # "more" reaches the dead output


def test_gradient_penalty_of_a_linear_critic_is_analytic():
    w = jnp.array([0.5, -2.0, 1.0, 0.25, 3.0, 0.0, -1.0])
    real = jax.random.uniform(jax.random.key(0), (16, 7))
    fake = jax.random.uniform(jax.random.key(1), (16, 7))
    gp = gan_lib.gradient_penalty(lambda x: x @ w, real, fake, jax.random.key(2))
    assert float(gp) == pytest.approx((float(jnp.linalg.norm(w)) - 1.0) ** 2, rel=1e-5)
    # A 1-Lipschitz linear critic with unit gradient has zero penalty.
    gp_unit = gan_lib.gradient_penalty(
        lambda x: x @ (w / jnp.linalg.norm(w)), real, fake, jax.random.key(2)
    )
    assert float(gp_unit) == pytest.approx(0.0, abs=1e-6)


def _tiny():
    return sales_config.get_config("tiny")


def test_generator_is_non_negative_with_the_right_shape(tiny_generator):
    config, generator, params = tiny_generator
    _, critic = model_lib.make_gan(config)
    batch = steps.random_windows(config)
    cond = model_lib.condition(batch)
    noise = jax.random.normal(jax.random.key(0), (len(batch["index"]), 7, config.gan.noise_dim))
    params["out"]["bias"] = params["out"]["bias"] - 1.0  # push many pre-activations below 0
    # Jitted: run eagerly, op by op, the recurrent layers cost seconds of dispatch.
    out = jax.jit(generator.apply)({"params": params}, 3.0 * noise, *cond)
    chex.assert_shape(out, (len(batch["index"]), config.data.horizon))
    assert float(jnp.min(out)) >= 0.0 and float(jnp.mean(out == 0.0)) > 0.05
    critic_vars = jax.jit(critic.init)(jax.random.key(2), out, *cond)
    scores = jax.jit(critic.apply)(critic_vars, out, *cond)
    chex.assert_shape(scores, (len(batch["index"]),))


def test_train_step_compiles_once_and_moves_both_networks():
    config = _tiny()
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:2])
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, jax.random.key(0))
    before = jax.device_get((state.params, state.extra))
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(steps.train_step, n=1)
    step = steps_jit.jit_train_step(
        functools.partial(
            counted,
            key=rng.stream(config.seed, "gan"),
            generator=parts.model,
            critic=parts.extras.critic,
            gen_tx=parts.optimizer,
            critic_tx=parts.extras.critic_optimizer,
            n_critic=config.gan.n_critic,
            lambda_gp=config.gan.lambda_gp,
            noise_dim=config.gan.noise_dim,
        ),
        parts.shardings,
        mesh,
    )
    batch = mesh_lib.global_batch(steps.random_windows(config), mesh)
    for _ in range(3):  # a second trace raises
        state, metrics = step(state, batch)
    assert int(state.step) == 3
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["gradient_penalty"] >= 0
    after = jax.device_get((state.params, state.extra))
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), before, after)
    gen_moved, critic_moved = moved
    # generator, critic parameters and the critic's power-iteration vectors all moved
    for tree in (gen_moved, critic_moved.params, critic_moved.spectral):
        assert max(jax.tree.leaves(tree)) > 0


def _records(batch):
    n = len(batch["index"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_gan_eval_pass_matches_numpy_sample_statistics():
    """The sums of `steps.eval_step` over a padded ordered pass give the statistics numpy
    computes directly from the generated and real sequences (padding rows count zero times)."""
    config = _tiny()
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:2])
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, jax.random.key(0))
    source = _records(steps.random_windows(config))[:70]  # 2 batches of 64, the second padded
    stats, generated = evaluate.generate(
        parts.eval_step, state.params, source, mesh, 64, rng.stream(0, "t")
    )
    real = np.stack([r["target"] for r in source]).astype(np.float64)
    fake = generated.astype(np.float64)
    chex.assert_shape(fake, real.shape)
    expected = {
        "eval_sample_mae": np.abs(fake - real).mean(),
        "eval_mean_gap": abs(fake.mean() - real.mean()),
        "eval_std_gap": abs(fake.std() - real.std()),
    }
    expected["eval_moment_gap"] = expected["eval_mean_gap"] + expected["eval_std_gap"]
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # Noise is keyed by window index: the same window gets the same sample in another batch.
    again = evaluate.generate(
        parts.eval_step, state.params, source[::-1], mesh, 64, rng.stream(0, "t")
    )[1]
    np.testing.assert_array_equal(again[::-1], generated)


def test_forecaster_eval_pass_matches_numpy_errors():
    config = _tiny()
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:2])
    parts = forecast.build(config, mesh)
    state = parts_lib.init_state(parts, jax.random.key(0))
    source = _records(steps.random_windows(config))[:70]
    metrics, pred = evaluate.forecast_pass(parts.eval_step, state.params, source, mesh, 64)
    real = np.stack([r["target"] for r in source]).astype(np.float64)
    assert metrics["val_mae"] == pytest.approx(np.abs(pred - real).mean(), rel=1e-5)
    assert metrics["val_rmse"] == pytest.approx(np.sqrt(np.square(pred - real).mean()), rel=1e-5)


def test_paired_bootstrap_matches_direct_formulas():
    rng = np.random.default_rng(0)
    target = rng.random((200, 7))
    pred_a = target + rng.normal(0, 0.2, target.shape)
    pred_b = target + rng.normal(0, 0.3, target.shape)
    out = metrics_lib.paired_bootstrap(
        metrics_lib.forecast_errors(pred_a, target),
        metrics_lib.forecast_errors(pred_b, target),
        num_resamples=500,
        seed=0,
    )
    mae_a, mae_b = np.abs(pred_a - target).mean(), np.abs(pred_b - target).mean()
    assert out["mae_diff"] == pytest.approx(mae_b - mae_a)
    rmse_a = np.sqrt(np.square(pred_a - target).mean())
    assert out["rmse_a"] == pytest.approx(rmse_a)
    assert out["mae_diff_lo"] < out["mae_diff"] < out["mae_diff_hi"]
    assert out["mae_diff_lo"] > 0  # b is clearly worse


def test_discriminative_score_separates_only_different_distributions():
    config = _tiny()
    config.eval.disc_steps = 150
    rng = np.random.default_rng(0)
    n = 400
    features = np.zeros((n, 7, 8), np.float32)
    real = rng.random((n, 7)).astype(np.float32)
    same = rng.random((n, 7)).astype(np.float32)
    shifted = (rng.random((n, 7)) + 1.0).astype(np.float32)
    assert discriminative_score(real, same, features, config.eval, 0) < 0.1
    assert discriminative_score(real, shifted, features, config.eval, 0) > 0.4


def test_weekday_profile_and_autocorrelation():
    values = np.tile(np.arange(7, dtype=float), (3, 1))
    profile = metrics_lib.weekday_profile(values, np.array([0, 0, 0]))
    np.testing.assert_allclose(profile, np.arange(7))
    shifted = metrics_lib.weekday_profile(values, np.array([3, 3, 3]))
    np.testing.assert_allclose(shifted, np.roll(np.arange(7), 3))
    alternating = np.tile([1.0, -1.0] * 3 + [1.0], (2, 1))
    assert metrics_lib.autocorrelation(alternating, 1)[0] < -0.8


def test_weekday_history_matches_a_direct_per_weekday_mean():
    rng = np.random.default_rng(0)
    batch, history, horizon = 3, 30, 7
    first_dow = rng.integers(0, 7, size=batch)
    hist_dow = (first_dow[:, None] + np.arange(history)) % 7
    target_dow = (first_dow[:, None] + history + np.arange(horizon)) % 7
    sales = rng.random((batch, history)).astype(np.float32)
    history_features = np.concatenate(
        [np.eye(7)[hist_dow], rng.random((batch, history, 3))], axis=-1
    ).astype(np.float32)
    target_features = np.concatenate(
        [np.eye(7)[target_dow], np.zeros((batch, horizon, 1))], axis=-1
    ).astype(np.float32)
    weekly = np.asarray(model_lib.weekday_history(sales, history_features, target_features))
    chex.assert_shape(weekly, (batch, horizon, 2))
    for b in range(batch):
        for t in range(horizon):
            same_day = sales[b][hist_dow[b] == target_dow[b, t]]
            assert weekly[b, t, 0] == pytest.approx(same_day.mean(), rel=1e-5)
            assert weekly[b, t, 1] == pytest.approx(same_day.mean() - sales[b].mean(), abs=1e-6)


def test_generator_starts_as_the_seasonal_naive_forecast_plus_a_learned_term(tiny_generator):
    """With the GRU path's output layer zeroed, the sample is relu(seasonal naive)."""
    config, generator, params = tiny_generator
    windows = steps.random_windows(config)
    cond = tuple(jnp.asarray(windows[k]) for k in ("history_sales", "history_features"))
    cond += (jnp.asarray(windows["target_features"]),)
    noise = jax.random.normal(jax.random.key(0), (len(windows["index"]), 7, config.gan.noise_dim))
    params["out"] = jax.tree.map(jnp.zeros_like, params["out"])
    sample = jax.jit(generator.apply)({"params": params}, noise, *cond)
    seasonal = model_lib.weekday_history(*cond)[..., 0]
    np.testing.assert_allclose(sample, np.maximum(seasonal, 0.0), rtol=1e-6, atol=1e-7)
    # The ablation's generator (seasonal_init False) starts with the weekly skip at 0.
    config.model.seasonal_init = False
    generator, _ = model_lib.make_gan(config)
    params = jax.jit(generator.init)(jax.random.key(1), noise, *cond)["params"]
    assert not np.any(np.asarray(params["weekly_skip"]["kernel"]))
