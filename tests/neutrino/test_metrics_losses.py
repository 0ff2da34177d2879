"""The competition metric, the angular loss and the von Mises-Fisher NLL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.neutrino import losses, metrics, synthetic


def _random_angles(rng, n):
    return rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(-1, 1, n))


def test_score_equals_angle_between_unit_vectors():
    rng = np.random.default_rng(0)
    az1, zen1 = _random_angles(rng, 1000)
    az2, zen2 = _random_angles(rng, 1000)
    a = synthetic.direction_vector(az1, zen1)
    b = synthetic.direction_vector(az2, zen2)
    # Independent formula: the angle from the cross and dot products of the 3-vectors.
    want = np.arctan2(np.linalg.norm(np.cross(a, b), axis=1), np.sum(a * b, axis=1))
    np.testing.assert_allclose(metrics.angular_errors(az1, zen1, az2, zen2), want, atol=1e-7)
    assert metrics.angular_dist_score(az1, zen1, az2, zen2) == pytest.approx(want.mean())


def test_azimuth_wraps_around_and_poles_ignore_azimuth():
    # 0.01 and 2 pi - 0.01 are 0.02 apart on the equator, not 2 pi - 0.02.
    err = metrics.angular_errors(0.01, np.pi / 2, 2 * np.pi - 0.01, np.pi / 2)
    assert err == pytest.approx(0.02, abs=1e-9)
    # At a pole the azimuth does not matter; the two poles are pi apart.
    assert metrics.angular_errors(0.3, 0.0, 4.0, 0.0) == pytest.approx(0.0, abs=1e-7)
    assert metrics.angular_errors(1.0, np.pi, 5.0, np.pi) == pytest.approx(0.0, abs=1e-7)
    assert metrics.angular_errors(1.0, 0.0, 1.0, np.pi) == pytest.approx(np.pi)
    # Rounding beyond +-1 is clipped, never NaN.
    assert np.isfinite(metrics.angular_errors(0.7, 1e-9, 0.7, 1e-9))


def test_vector_to_angles_round_trip_and_constant_guess():
    rng = np.random.default_rng(1)
    az, zen = _random_angles(rng, 500)
    vec = 3.0 * synthetic.direction_vector(az, zen)  # any norm
    az2, zen2 = metrics.vector_to_angles(vec)
    np.testing.assert_allclose(metrics.angular_errors(az, zen, az2, zen2), 0, atol=2e-7)
    assert np.all((az2 >= 0) & (az2 < 2 * np.pi))
    const = metrics.angular_dist_score(az, zen, np.zeros_like(az), np.zeros_like(zen))
    assert const == pytest.approx(np.pi / 2, abs=0.1)


def test_angular_loss_matches_metric_and_has_finite_gradients_at_0_and_pi():
    rng = np.random.default_rng(2)
    az1, zen1 = _random_angles(rng, 64)
    az2, zen2 = _random_angles(rng, 64)
    pred = 2.5 * synthetic.direction_vector(az2, zen2)
    target = synthetic.direction_vector(az1, zen1)
    got = losses.angular_distance(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
    np.testing.assert_allclose(got, metrics.angular_errors(az1, zen1, az2, zen2), atol=1e-5)

    t = jnp.array([0.0, 0.0, 1.0])
    grad = jax.grad(lambda p, tt: losses.angular_distance(p, tt))
    for p in ([0.0, 0.0, 2.0], [0.0, 0.0, -2.0], [0.0, 0.0, 0.0], [1e-20, 0.0, 1.0]):
        g = grad(jnp.asarray(p), t)
        assert np.all(np.isfinite(g)), (p, g)
    assert float(losses.angular_distance(jnp.array([0.0, 0, -2]), t)) == pytest.approx(np.pi)
    # Near (not at) pi the gradient still points away from the wrong direction.
    g = grad(jnp.array([1e-3, 0.0, -1.0]), t)
    assert np.all(np.isfinite(g)) and float(g[0]) < 0


def test_log_c3_stable_and_exact():
    k = np.array([1e-3, 0.1, 1.0, 5.0, 30.0])
    want = np.log(k / (4 * np.pi * np.sinh(k)))
    np.testing.assert_allclose(losses.log_c3(jnp.asarray(k, jnp.float32)), want, rtol=1e-5)
    # Limits: series at 0, no overflow for huge kappa (sinh would overflow at ~90 in float32).
    small = losses.log_c3(jnp.array([0.0, 1e-6, 9.99e-4, 1.001e-3]))
    np.testing.assert_allclose(small[:2], -np.log(4 * np.pi), atol=1e-6)
    assert abs(float(small[3] - small[2])) < 1e-5  # continuous at the switch
    big = losses.log_c3(jnp.array([1e3, 1e5]))
    np.testing.assert_allclose(big, np.log([1e3, 1e5]) - np.log(2 * np.pi) - [1e3, 1e5], rtol=1e-6)
    g = jax.grad(lambda x: losses.log_c3(x).sum())(jnp.array([0.0, 1e-3, 1.0, 1e4]))
    assert np.all(np.isfinite(g))


def test_vmf_density_integrates_to_one_and_gradient_finite_at_zero():
    # Midpoint quadrature of exp(-NLL) over the sphere for mu = z, kappa = 4.
    zen = (np.arange(400) + 0.5) * np.pi / 400
    az = (np.arange(200) + 0.5) * 2 * np.pi / 200
    zz, aa = np.meshgrid(zen, az, indexing="ij")
    x = jnp.asarray(synthetic.direction_vector(aa, zz), jnp.float32)
    pred = jnp.array([0.0, 0.0, 4.0])
    density = np.exp(-np.asarray(losses.vmf_nll(pred, x), np.float64))
    area = np.sin(zz) * (np.pi / 400) * (2 * np.pi / 200)
    assert np.sum(density * area) == pytest.approx(1.0, rel=1e-3)
    g = jax.grad(lambda p: losses.vmf_nll(p, jnp.array([1.0, 0.0, 0.0])))(jnp.zeros(3))
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="angular"):
        losses.direction_loss("cosine", pred, pred)
