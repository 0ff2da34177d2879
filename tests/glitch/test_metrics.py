"""Metrics against scikit-learn; losses against their formulas."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from jaxlab.glitch import losses, metrics


def _labels(seed, n=300, c=7):
    rng = np.random.default_rng(seed)
    true = rng.choice(c, size=n, p=np.arange(1, c + 1) / np.arange(1, c + 1).sum())
    pred = np.where(rng.uniform(size=n) < 0.6, true, rng.integers(0, c, n))
    return true, pred


@pytest.mark.parametrize("seed", [0, 1])
def test_summary_equals_sklearn(seed):
    true, pred = _labels(seed)
    pred[pred == 6] = 5  # class 6 never predicted
    true[true == 0] = 1  # class 0 never true
    num_classes = 9  # classes 7, 8 in neither
    confusion = metrics.confusion_matrix(true, pred, num_classes)
    np.testing.assert_array_equal(
        confusion, skm.confusion_matrix(true, pred, labels=np.arange(num_classes))
    )
    got = metrics.summary(confusion)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(true, pred))
    with pytest.warns(UserWarning):  # sklearn warns about the class only in predictions
        want_balanced = skm.balanced_accuracy_score(true, pred)
    assert got["balanced_accuracy"] == pytest.approx(want_balanced)
    assert got["f1_macro"] == pytest.approx(skm.f1_score(true, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(skm.f1_score(true, pred, average="weighted"))
    p, r, f, s = skm.precision_recall_fscore_support(
        true, pred, labels=np.arange(num_classes), zero_division=0
    )
    stats = metrics.per_class(confusion)
    np.testing.assert_allclose(stats["precision"], p)
    np.testing.assert_allclose(stats["recall"], r)
    np.testing.assert_allclose(stats["f1"], f)
    np.testing.assert_array_equal(stats["support"], s)
    report = metrics.classification_report(confusion, [f"class_{i}" for i in range(9)])
    assert f"class_3{'':<2}" in report and f"{skm.accuracy_score(true, pred):.4f}" in report


def test_confusion_matrix_jax_with_valid_mask():
    true, pred = _labels(3, n=64)
    valid = np.arange(64) < 50
    got = jax.jit(metrics.confusion_matrix_jax, static_argnums=2)(true, pred, 7, valid)
    np.testing.assert_array_equal(got, metrics.confusion_matrix(true[:50], pred[:50], 7))


def test_label_smoothed_cross_entropy_matches_optax():
    logits = jax.random.normal(jax.random.key(0), (6, 5))
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 5), 0.1)
    np.testing.assert_allclose(
        losses.cross_entropy(logits, labels, 0.1),
        optax.softmax_cross_entropy(logits, targets),
        rtol=1e-6,
    )


def test_focal_loss_formula():
    logits = jax.random.normal(jax.random.key(1), (6, 5)) * 3
    labels = jnp.array([0, 1, 2, 3, 4, 0])
    np.testing.assert_allclose(
        losses.focal_loss(logits, labels, gamma=0.0), losses.cross_entropy(logits, labels), 1e-6
    )
    p_true = jax.nn.softmax(logits)[jnp.arange(6), labels]
    want = -((1 - p_true) ** 2) * jnp.log(p_true)
    np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=2.0), want, rtol=1e-5)
    np.testing.assert_allclose(
        optax.sigmoid_focal_loss(jnp.zeros(1), jnp.ones(1), gamma=2.0),  # sanity: same family
        -(0.5**2) * jnp.log(0.5),
        rtol=1e-6,
    )


def test_weighted_mean_is_torch_weighted_cross_entropy():
    per_example = jnp.array([1.0, 2.0, 3.0, 4.0])
    labels = jnp.array([0, 1, 1, 2])
    class_weights = jnp.array([2.0, 1.0, 0.5])
    want = (2 * 1 + 2 + 3 + 0.5 * 4) / (2 + 1 + 1 + 0.5)
    got = losses.weighted_mean(per_example, labels, class_weights)
    assert float(got) == pytest.approx(want)
    valid = jnp.array([True, True, False, False])
    assert float(losses.weighted_mean(per_example, labels, class_weights, valid)) == pytest.approx(
        (2 * 1 + 2) / 3
    )
    config = ml_collections.ConfigDict({"name": "hinge", "label_smoothing": 0.0})
    with pytest.raises(ValueError, match="loss.name = 'hinge'"):
        losses.per_example_loss(jnp.zeros((1, 3)), jnp.zeros(1, jnp.int32), config)
