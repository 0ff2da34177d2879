"""The two scoring protocols and the paired bootstrap (comparison.py), on constructed cases."""

import numpy as np
import pytest

from jaxlab.weather import comparison, data


class Identity:
    """A normaliser whose physical units are the standardised ones."""

    def decode(self, x):
        return np.asarray(x)


def test_authors_protocol_rescales_each_member_with_the_truths_domain_moments():
    """Against the hand formula: member m, channel c -> (e - mean_e) / std_e * std_y + mean_y,
    means and ddof-1 stds over the grid, the truth's at the valid time."""
    gen = np.random.default_rng(0)
    ens = gen.normal(size=(3, 4, 5, 2)) * [2.0, 0.5] + [1.0, -4.0]
    truth = gen.normal(size=(4, 5, 2)) * [3.0, 0.2] + [10.0, 2.0]
    got = comparison.rescale_to_truth(ens.astype(np.float32), truth.astype(np.float32))
    for m in range(3):
        for c in range(2):
            e, y = ens[m, ..., c], truth[..., c]
            want = (e - e.mean()) / e.std(ddof=1) * y.std(ddof=1) + y.mean()
            np.testing.assert_allclose(got[m, ..., c], want, rtol=1e-4, atol=1e-4)


def test_a_forecast_right_up_to_domain_moments_is_perfect_only_under_the_authors_protocol():
    """Members = a * truth + b (a, b per member): CRPS and RMSE are 0 under the authors'
    protocol, positive under the standard one; standardised states put back with the initial
    state's moments (`to_training_units`) invert the standardisation."""
    gen = np.random.default_rng(1)
    truth = gen.normal(size=(2, 6, 7, len(data.VARIABLES))).astype(np.float32)
    a = np.array([0.5, 1.5, 2.0])[None, :, None, None, None]
    b = np.array([-1.0, 0.3, 2.0])[None, :, None, None, None]
    ens = (a * truth[:, None] + b).astype(np.float32)
    standard, authors = comparison.CaseScores(3), comparison.CaseScores(3)
    standard.add(ens, truth, Identity())
    rescaled = np.stack([comparison.rescale_to_truth(ens[k], truth[k]) for k in range(2)])
    authors.add(rescaled, truth, Identity())
    assert standard.arrays()["crps"].min() > 0.1
    np.testing.assert_allclose(authors.arrays()["crps"], 0.0, atol=1e-4)
    np.testing.assert_allclose(authors.arrays()["sq_err"], 0.0, atol=1e-8)
    z = np.asarray(data.spatial_standardise(truth[0]))
    np.testing.assert_allclose(comparison.to_training_units(z, truth[0]), truth[0], atol=1e-4)


def test_paired_bootstrap_intervals_and_differences():
    """A system identical to direct sampling differs by exactly 0 in every resample; one with
    twice the error has a CRPS difference interval above 0 and contains its point value."""
    gen = np.random.default_rng(2)
    c = len(data.VARIABLES)
    direct, same, worse = (comparison.CaseScores(4) for _ in range(3))
    for _ in range(12):
        truth = gen.normal(size=(2, 5, 5, c)).astype(np.float32)
        noise = gen.normal(size=(2, 4, 5, 5, c)).astype(np.float32)
        direct.add(truth[:, None] + 0.3 * noise, truth, Identity())
        same.add(truth[:, None] + 0.3 * noise, truth, Identity())
        worse.add(truth[:, None] + 0.6 * noise + 0.3, truth, Identity())
    out = comparison.summary(
        {"direct": direct, "same": same, "worse": worse}, "authors", num_boot=200
    )
    assert out["compare_authors_diff/same-direct/crps/lead1"] == [0.0, 0.0, 0.0]
    diff, lo, hi = out["compare_authors_diff/worse-direct/crps/lead2"]
    assert 0 < lo <= diff <= hi
    value = out["compare_authors/worse/crps/t2m/lead1"]
    lo, hi = out["compare_authors/worse/crps/t2m/lead1_ci95"]
    assert lo <= value <= hi and hi - lo > 0
    assert out["compare_authors/direct/crps/lead1"] == pytest.approx(
        direct.arrays()["crps"][:, 0].mean()
    )
    # No truth reaches 35: the Brier skill is undefined, not perfect.
    assert np.isnan(out["compare_authors/direct/brier_skill/refc_ge_35/lead1"])


def test_brier_skill_against_the_sample_base_rate():
    """Event refc >= 0.5: the truth itself as every member scores skill 1; the base rate as a
    constant probability (half the members exceed) scores 1 - BS / (p (1 - p)) by hand."""
    gen = np.random.default_rng(3)
    c = len(data.VARIABLES)
    truth = gen.normal(size=(1, 6, 6, c)).astype(np.float32)
    perfect, half = comparison.CaseScores(2, ("refc", 0.5)), comparison.CaseScores(2, ("refc", 0.5))
    perfect.add(np.repeat(truth[:, None], 2, axis=1), truth, Identity())
    members = np.stack([np.full_like(truth, 1.0), np.full_like(truth, 0.0)], axis=1)
    half.add(members, truth, Identity())
    out = comparison.summary({"direct": perfect, "half": half}, "standard", num_boot=10)
    assert out["compare/direct/brier_skill/refc_ge_0.5/lead1"] == pytest.approx(1.0)
    event = truth[0, ..., data.VARIABLES.index("refc")] >= 0.5
    p = event.mean()
    want = 1 - np.mean((0.5 - event) ** 2) / (p * (1 - p))
    assert out["compare/half/brier_skill/refc_ge_0.5/lead1"] == pytest.approx(want, rel=1e-5)
