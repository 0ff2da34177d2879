"""Loss pieces against direct numpy formulas."""

import jax.numpy as jnp
import numpy as np

from jaxlab.vegetation import losses
from tests.vegetation import helpers


def _data(seed=0, shape=(2, 3, 4, 5, 4)):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=shape).astype(np.float32) * 0.3
    true = rng.normal(size=shape).astype(np.float32) * 0.3
    mask = (rng.random(shape[:-1]) > 0.3).astype(np.float32)
    return pred, true, mask


def test_logcosh_stable_and_exact():
    x = np.array([-3.0, -0.5, 0.0, 0.2, 4.0])
    np.testing.assert_allclose(losses.logcosh(jnp.asarray(x)), np.log(np.cosh(x)), rtol=1e-5)
    assert np.isfinite(float(losses.logcosh(jnp.asarray(1e4))))


def test_masked_regression_with_underprediction_weight():
    pred, true, mask = _data()
    got = float(losses.masked_regression(pred, true, mask, 1.5))
    weight = np.where(np.abs(pred) < np.abs(true), 1.5, 1.0)
    m = np.broadcast_to(mask[..., None], pred.shape)
    expected = np.sum(m * weight * np.log(np.cosh(pred - true))) / (m.sum())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Cloudy pixels do not count.
    changed = np.where(mask[..., None] == 0, pred + 10.0, pred)
    np.testing.assert_allclose(losses.masked_regression(changed, true, mask, 1.5), got, rtol=1e-6)


def test_underprediction_costs_more():
    true = np.ones((1, 1, 1, 1, 1), np.float32)
    under = float(losses.masked_regression(true * 0.5, true, np.ones((1, 1, 1, 1)), 1.5))
    over = float(losses.masked_regression(true * 1.5, true, np.ones((1, 1, 1, 1)), 1.5))
    np.testing.assert_allclose(under, 1.5 * over, rtol=1e-6)


def test_edge_penalty_direct_and_offset_invariant():
    pred, true, mask = _data(1)
    got = float(losses.edge_penalty(pred, true, mask))
    total, count = 0.0, 0.0
    b, t, h, w, c = pred.shape
    for bi in range(b):
        for ti in range(t):
            for y in range(h):
                for x in range(w):
                    for dy, dx in ((1, 0), (0, 1)):
                        y2, x2 = y + dy, x + dx
                        if y2 >= h or x2 >= w or not (mask[bi, ti, y, x] and mask[bi, ti, y2, x2]):
                            continue
                        d = (pred[bi, ti, y2, x2] - pred[bi, ti, y, x]) - (
                            true[bi, ti, y2, x2] - true[bi, ti, y, x]
                        )
                        total += np.sum(d**2)
                        count += c
    np.testing.assert_allclose(got, total / count, rtol=1e-5)
    # A spatially constant error has no edge penalty.
    assert float(losses.edge_penalty(true + 0.3, true, mask)) < 1e-10


def test_total_loss_weights():
    config = helpers.tiny_config()
    pred, true, mask = _data(2)
    total, parts = losses.loss_fn(pred, {"target_delta": true, "target_mask": mask}, config)
    np.testing.assert_allclose(total, 5.0 * parts["regression"] + 0.1 * parts["edge"], rtol=1e-6)
