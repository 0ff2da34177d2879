"""The sales task end to end: tiny in-process train + evaluate; the slow conditioning check."""

import json
import os

import jax
import numpy as np
import pytest

import jaxlab.sales as sales_task
from jaxlab.configs import sales as sales_config
from jaxlab.core import loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.sales import data, synthetic, train
from jaxlab.sales import metrics as metrics_lib


def test_tiny_train_then_evaluate_from_checkpoints(tmp_path):
    config = sales_config.get_config("tiny")
    workdir = str(tmp_path)
    summary = train.train_and_evaluate(config, workdir)
    assert set(summary) == {"real_val_mae", "augmented_val_mae", "synthetic_val_mae"}

    logged = read_metrics(workdir)
    gan_rows = [m for m in logged if "wasserstein" in m]
    assert [m["step"] for m in gan_rows] == [5, 10, 15, 20]
    assert all(k in gan_rows[0] for k in ("gradient_penalty", "critic_loss", "gen_loss"))
    # The critic learns: its loss (dominated by the gradient penalty at init) falls.
    assert gan_rows[-1]["critic_loss"] < gan_rows[0]["critic_loss"]

    generated = os.path.join(workdir, train.GENERATED_FILE)
    window, target = data.read_generated(generated, config.data.horizon)
    assert target.shape == (len(window), 7) and np.all(target >= 0)

    metrics = sales_task.evaluate(config, workdir)
    # The forecaster learns: its training loss falls well below the first logged value.
    losses = [
        m["loss"] for m in read_metrics(os.path.join(workdir, "forecast_real")) if "loss" in m
    ]
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    assert metrics["real_rmse"] < 2 * metrics["naive_rmse"], metrics
    assert metrics["mae_diff"] == pytest.approx(metrics["augmented_mae"] - metrics["real_mae"])
    assert metrics["mae_diff_lo"] <= metrics["mae_diff"] <= metrics["mae_diff_hi"]
    assert 0.0 <= metrics["discriminative_score"] <= 0.5
    assert metrics["gan_checkpoint_step"] == config.train.num_steps
    out = os.path.join(workdir, "eval", "test")
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["real_mae"] == pytest.approx(metrics["real_mae"])
    for name in ("samples.png", "distributions.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    with open(os.path.join(out, "comparison.txt")) as f:
        assert "augmented - real" in f.read()


class _SwappedHistory:
    """`source` with each listed window's history taken from a donor window (same dates)."""

    def __init__(self, source, donors):
        self.source, self.donors = source, donors

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        record = dict(self.source[i])
        donor = self.source[self.donors.get(i, i)]
        record["history_sales"] = donor["history_sales"]
        record["history_features"] = donor["history_features"]
        return record


def _opposite_kind_donors(strong, products, dates):
    """{window: donor window}: for each window of a product in `strong` ({product: kind}), the
    window with the same target dates of a product of the other kind. Recipients of one kind
    cycle through all donors of the other, so no single (e.g. intermittent) donor decides."""
    window_of = {(p, d): i for i, (p, d) in enumerate(zip(products, dates, strict=True))}
    of_kind = {
        k: sorted(p for p, kind in strong.items() if kind == k) for k in set(strong.values())
    }
    opposite = {"weekend": "midweek", "midweek": "weekend"}
    donors = {}
    for rank, (p, kind) in enumerate(sorted(strong.items())):
        candidates = of_kind.get(opposite[kind], [])
        for i in np.flatnonzero(products == p):
            for j in range(len(candidates)):
                q = candidates[(rank + j) % len(candidates)]
                if (q, dates[i]) in window_of:
                    donors[int(i)] = window_of[(q, dates[i])]
                    break
    return donors


@pytest.mark.slow
def test_samples_follow_the_weekly_pattern_of_the_condition(tmp_path):
    """Products planted with a strong weekly shape get generated samples with that shape, and
    giving a window the history of a product with the opposite shape flips its samples' shape."""
    config = sales_config.get_config("demo")
    config.data.num_products = 120
    config.train.num_steps = 300
    config.train.eval_every = config.train.ckpt_every = 300  # only the final evaluation
    workdir = str(tmp_path)
    mesh = mesh_lib.make_mesh(config.mesh)
    sources = data.load_windows(config, data.prepare(config, workdir))
    with loop.Preemption() as preemption:
        assert train.train_gan(config, workdir, sources, mesh, preemption)
    source = sources["test"]
    with open(os.path.join(workdir, "data", "olist", synthetic.TRUTH_FILE)) as f:
        truth = json.load(f)
    _, sampler, state, _ = train.restore_gan(config, workdir, mesh, "latest")
    first_dow = np.array(
        [np.argmax(source[i]["target_features"][0, :7]) for i in range(len(source))]
    )
    dates = source.target_dates()
    products = source.windows[:, 0]
    strong = {
        p: truth[product_id]["kind"]
        for p, product_id in enumerate(source.arrays.product_ids)
        if truth[product_id]["kind"] != "flat"
        and truth[product_id]["amplitude"] >= 0.7
        and (products == p).sum() >= 14
    }
    donors = _opposite_kind_donors(strong, products, dates)
    key = jax.random.key(7)
    fake = train.generate(sampler, state.gen_params, source, mesh, 256, key)
    swapped = train.generate(
        sampler, state.gen_params, _SwappedHistory(source, donors), mesh, 256, key
    )
    own, flipped, own_planted = [], [], []
    for p, kind in strong.items():
        rows = products == p
        own.append(metrics_lib.weekday_profile(fake[rows], first_dow[rows]))
        flipped.append(metrics_lib.weekday_profile(swapped[rows], first_dow[rows]))
        own_planted.append(synthetic.WEEKLY_SHAPES[kind])
    own_corr = metrics_lib.profile_correlation(np.asarray(own), np.asarray(own_planted))
    assert len(own_corr) >= 10 and np.mean(own_corr) > 0.6, own_corr
    # The shape comes from the condition: with the opposite kind's history it reverses.
    assert len(donors) > 0.8 * sum((products == p).sum() for p in strong)
    flipped_corr = metrics_lib.profile_correlation(np.asarray(flipped), np.asarray(own_planted))
    assert np.mean(flipped_corr) < -0.4, flipped_corr
