"""The sales task end to end: tiny in-process train + evaluate; the slow conditioning check."""

import json
import os

import jax
import numpy as np
import pytest

import jaxlab.sales as sales_task
from configs import sales as sales_config
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


@pytest.mark.slow
@pytest.mark.xfail(
    run=False,  # 3 minutes of CPU for a known failure; run it with `pytest --runxfail`
    strict=True,
    reason="Not met yet: after 300 WGAN-GP iterations the mean correlation of generated weekday "
    "profiles with the planted shape was 0.03 (needs > 0.6); see jaxlab/sales/README.md.",
)
def test_samples_follow_the_weekly_pattern_of_the_condition(tmp_path):
    """Products planted with a strong weekly shape get generated samples with that shape."""
    config = sales_config.get_config("demo")
    config.data.num_products = 120
    config.train.num_steps = 300
    workdir = str(tmp_path)
    mesh = mesh_lib.make_mesh(config.mesh)
    sources = data.load_windows(config, data.prepare(config, workdir))
    with loop.Preemption() as preemption:
        assert train.train_gan(config, workdir, sources, mesh, preemption)
    source = sources["test"]
    with open(os.path.join(workdir, "data", "olist", synthetic.TRUTH_FILE)) as f:
        truth = json.load(f)
    _, sampler, state, _ = train.restore_gan(config, workdir, mesh, "latest")
    fake = train.generate(sampler, state.gen_params, source, mesh, 256, jax.random.key(7))
    real = np.stack([source[i]["target"] for i in range(len(source))])
    first_dow = np.array(
        [np.argmax(source[i]["target_features"][0, :7]) for i in range(len(source))]
    )
    products = source.windows[:, 0]
    gen_profiles, real_profiles, planted = [], [], []
    for p, product_id in enumerate(source.arrays.product_ids):
        kind = truth[product_id]["kind"]
        rows = products == p
        if kind == "flat" or truth[product_id]["amplitude"] < 0.7 or rows.sum() < 14:
            continue
        gen_profiles.append(metrics_lib.weekday_profile(fake[rows], first_dow[rows]))
        real_profiles.append(metrics_lib.weekday_profile(real[rows], first_dow[rows]))
        planted.append(synthetic.WEEKLY_SHAPES[kind])
    gen_profiles, planted = np.asarray(gen_profiles), np.asarray(planted)
    corr = metrics_lib.profile_correlation(gen_profiles, planted)
    assert len(corr) >= 10 and np.mean(corr) > 0.6, corr
    # And conditioning matters: against the opposite kind's shape the correlation is negative.
    assert np.mean(metrics_lib.profile_correlation(gen_profiles, -planted)) < -0.6
