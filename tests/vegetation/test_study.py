"""The vegetation ablation study (`vegetation:study_tiny`): the planted comparisons come out.

The study's cubes plant two things (synthetic.Planted): NDVI that follows the target period's
temperature anomaly, which the context frames cannot know, and a sustained per-cube NDVI trend.
A forecaster without the weather residual cannot follow the first; persistence follows neither.
A weather path that ignored its input (or a data pipeline that fed the wrong weather) would lose
the full model's lead over `no_weather_residual` and fail here.
"""

import json

import jax
import numpy as np
import pandas as pd
import pytest

from jaxlab.configs import vegetation as vegetation_config
from jaxlab.core import task as task_lib
from jaxlab.vegetation import metrics, model, study, synthetic
from tests.core import study_util


def test_planted_structure_is_off_by_default_and_the_demo_cubes_do_not_change():
    start = pd.Timestamp(2019, 4, 1)
    plain = synthetic.make_cube(np.random.default_rng(3), 8, start)
    same, clim = synthetic.make_cube_and_climatology(np.random.default_rng(3), 8, start)
    assert clim is None
    for name in plain.data_vars:
        np.testing.assert_array_equal(plain[name].values, same[name].values)
    planted = synthetic.Planted(weather_effect=0.1, trend=0.2, climatology_years=3)
    other, clim = synthetic.make_cube_and_climatology(
        np.random.default_rng(3), 8, start, planted, np.random.default_rng(4)
    )
    assert clim.shape == (synthetic.NUM_DAYS, 8, 8) and np.all(np.isfinite(clim))
    # The weather and clouds are drawn from the cube's own stream, unchanged; the bands differ.
    np.testing.assert_array_equal(plain["eobs_tx"].values, other["eobs_tx"].values)
    np.testing.assert_array_equal(plain["s2_mask"].values, other["s2_mask"].values)
    assert not np.allclose(plain["s2_B8A"].values, other["s2_B8A"].values, equal_nan=True)


def test_planted_ndvi_follows_the_weather_anomaly_and_the_trend():
    rng = np.random.default_rng(0)
    tx = synthetic.weather(rng, np.arange(100.0, 250.0), None)["eobs_tx"]
    sens = np.full((4, 4), 0.35)
    weather_only = synthetic.planted_ndvi(rng, synthetic.Planted(weather_effect=0.1), 4, tx, sens)
    response = synthetic.weather_response(tx)
    # Warm anomalies brown: the offset is -0.1 x (0.3 + 2 x 0.35) x the lagged anomaly.
    np.testing.assert_allclose(weather_only[:, 0, 0], -0.1 * 1.0 * response, atol=1e-12)
    assert 0.5 < response[10:-10].std() < 2.0
    trend_only = synthetic.planted_ndvi(rng, synthetic.Planted(trend=0.2), 4, tx, sens)
    steps = np.diff(trend_only[:, 1, 2])
    np.testing.assert_allclose(steps, steps[0], atol=1e-12)  # linear in time, then sustained


def _params(config):
    return jax.eval_shape(
        lambda: model.make_model(config).init(jax.random.key(0), model.dummy_batch(config))
    )["params"]


def test_ablation_switches_drop_their_terms_and_default_to_the_full_model():
    config = vegetation_config.get_config("study_tiny")
    full = _params(config)
    assert {"dc_offset", "weather_0", "weather_1", "weather_gate"} <= set(full)
    config.model.fourier_dc = False
    assert "dc_offset" not in _params(config) and "weather_0" in _params(config)
    config.model.fourier_dc, config.model.weather_residual = True, False
    no_weather = model.make_model(config)
    assert not {"weather_0", "weather_1", "weather_gate"} & set(_params(config))
    batch = model.dummy_batch(config, 2)
    params = no_weather.init(jax.random.key(1), batch)["params"]
    other = {**batch, "weather": batch["weather"] + 3.0}
    np.testing.assert_array_equal(
        no_weather.apply({"params": params}, batch), no_weather.apply({"params": params}, other)
    )
    demo = vegetation_config.get_config("demo")
    assert demo.model.weather_residual and demo.model.fourier_dc
    assert demo.data.synthetic_weather_effect == 0 and demo.data.synthetic_trend == 0


def _random_pixel_scores(rng, size=6):
    lc = rng.choice([10.0, 20.0, 30.0, 40.0, 80.0], size=(size, size))
    blocks = {
        f"rmse_{a}_{b}": rng.uniform(0.02, 0.3, (size, size)) for a, b in metrics.HORIZON_BLOCKS
    }
    return {
        **blocks,
        "rmse": rng.uniform(0.02, 0.3, (size, size)),
        "nnse": rng.uniform(0.3, 0.9, (size, size)),
        "r": np.where(rng.random((size, size)) < 0.1, np.nan, rng.uniform(-1, 1, (size, size))),
        "bias": rng.normal(scale=0.05, size=(size, size)),
        "landcover": lc,
        "quality": (lc < 41) & (rng.random((size, size)) < 0.7),
    }


def test_statistics_on_all_cubes_are_the_official_dataset_scores():
    """The per-cube decomposition the bootstrap resamples reproduces `metrics.summarize` and
    `metrics.outperformance` on the whole set, and a resample's repeats count as cubes."""
    rng = np.random.default_rng(0)
    ids = [f"r/c{i}.nc" for i in range(7)]
    cubes = [_random_pixel_scores(rng) for _ in ids]
    reference = [_random_pixel_scores(rng) for _ in ids]
    for ref, cube in zip(reference, cubes, strict=True):
        ref["landcover"] = cube["landcover"]  # the same cube: the same land cover map
    stats = study.statistics(
        [study.landcover_table(ids, cubes)], [study.outperformance_counts(ids, cubes, reference)]
    )
    everything = np.arange(len(ids))
    official = metrics.summarize(list(zip(ids, cubes, strict=True)))
    assert stats["ndvi_rmse"](everything) == pytest.approx(official["rmse"], rel=1e-12)
    assert stats["ndvi_r2"](everything) == pytest.approx(official["R2"], rel=1e-12)
    out = metrics.outperformance(
        list(zip(ids, cubes, strict=True)), list(zip(ids, reference, strict=True))
    )
    assert stats["outperform"](everything) == pytest.approx(out["outperform"], rel=1e-12)
    idx = np.array([0, 0, 3, 5, 5, 5, 6])
    relabelled = [(f"{j}:{ids[i]}", cubes[i]) for j, i in enumerate(idx)]
    assert stats["ndvi_rmse"](idx) == pytest.approx(metrics.summarize(relabelled)["rmse"])


def test_study_command_finds_the_task_study_and_refuses_a_config_without_one():
    config = vegetation_config.get_config("study_tiny")
    assert task_lib.import_task(config, "study").main is study.main
    with pytest.raises(ValueError, match="vegetation:study"):
        study.main(vegetation_config.get_config("tiny"), "/nonexistent")


@pytest.mark.slow  # 2 trainings (no_dc is not asserted below, so not trained here)
def test_study_tiny_full_model_beats_no_weather_residual_and_persistence(tmp_path, two_devices):
    config = vegetation_config.get_config("study_tiny")
    config.study.arms = ("full", "no_weather_residual", "persistence", "climatology")
    workdir = str(tmp_path)
    flat = study.main(config, workdir)

    saved, _ = study_util.written_report(workdir)
    assert saved["arms"] == list(config.study.arms)
    assert saved["outperformance_reference"] == "climatology"
    rmse = saved["metrics"]["ndvi_rmse"]

    # The study's numbers on all cubes are evaluate's official numbers of the same forecasts.
    for arm in ("full", "no_weather_residual"):
        with open(study.done_path(workdir, arm, 0)) as f:
            evaluated = json.load(f)
        assert rmse[arm]["value"] == pytest.approx(evaluated["ndvi_rmse"], rel=1e-9)
        assert saved["metrics"]["ndvi_r2"][arm]["value"] == pytest.approx(
            evaluated["ndvi_r2"], rel=1e-9
        )
        assert saved["metrics"]["outperform"][arm]["value"] == pytest.approx(
            evaluated["outperform_vs_climatology"]
        )
        assert flat[f"study_{arm}_ndvi_rmse"] == rmse[arm]["value"]
    assert rmse["persistence"]["value"] == pytest.approx(evaluated["persistence_ndvi_rmse"])
    assert rmse["climatology"]["value"] == pytest.approx(evaluated["climatology_ndvi_rmse"])

    # The planted comparisons (paired 95% intervals that exclude 0). Measured on study_tiny
    # (30 epochs) with config.seed (data and training) 0 / 1: no_weather_residual RMSE +0.037
    # [+0.014, +0.066] / +0.040 [+0.025, +0.054], R^2 -0.29 [-0.46, -0.11] / -0.34 [-0.48,
    # -0.19]; persistence RMSE +0.100 [+0.064, +0.136] / +0.102 [+0.058, +0.148] (at 40 epochs:
    # lower ends +0.014 / +0.025, R^2 upper ends -0.12 / -0.17, persistence +0.072 / +0.064).
    # The DC term is not asserted: at 40 epochs no_dc RMSE +0.019 / +0.027 / -0.002 on seeds
    # 0 / 1 / 2 (and no gap on the study's demo-sized run), so it is not a robust consequence of
    # the planted trend.
    r2 = saved["metrics"]["ndvi_r2"]
    assert rmse["no_weather_residual"]["diff_lo"] > 0, rmse["no_weather_residual"]
    assert r2["no_weather_residual"]["diff_hi"] < 0, r2["no_weather_residual"]
    assert rmse["persistence"]["diff_lo"] > 0, rmse["persistence"]
