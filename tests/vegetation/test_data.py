"""Reader features: BAP fill, weather aggregation, land cover, normalisation, clear errors."""

import os

import numpy as np
import pandas as pd
import pytest

from jaxlab.core import config as config_lib
from jaxlab.vegetation import data, data_features, synthetic
from tests.vegetation import helpers


def test_bap_fill_hand_made_sequence():
    # One row of 3 pixels, 1 band, 4 frames.
    values = np.array([[1.0, 9.0, 9.0], [9.0, 9.0, 9.0], [3.0, 5.0, 9.0], [9.0, 9.0, 9.0]])
    clear = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], bool)
    out = data_features.best_available_pixel(
        values[:, None, :, None], clear[:, None, :], fallback=np.array([7.0])
    )[:, 0, :, 0]
    # Pixel 0: last clear carried forward. Pixel 1: first clear (t=2) filled backwards.
    # Pixel 2: never clear -> fallback.
    np.testing.assert_array_equal(out[:, 0], [1, 1, 3, 3])
    np.testing.assert_array_equal(out[:, 1], [5, 5, 5, 5])
    np.testing.assert_array_equal(out[:, 2], [7, 7, 7, 7])


def test_bap_ignores_nan_of_cloudy_frames():
    values = np.array([2.0, np.nan, np.nan])[:, None, None, None]
    clear = np.array([True, False, False])[:, None, None]
    out = data_features.best_available_pixel(values, clear, np.array([0.0]))
    np.testing.assert_array_equal(out.ravel(), [2, 2, 2])


def test_rolling_mean_matches_pandas():
    x = np.random.default_rng(0).normal(size=(40, 3))
    expected = pd.DataFrame(x).rolling(21, center=True, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(data_features.rolling_mean(x, 21), expected, rtol=1e-10)


def test_weather_features_match_direct_numpy():
    rng = np.random.default_rng(1)
    daily = rng.normal(size=(150, 7)).cumsum(0)
    frame_days = 4 + 5 * np.arange(10, 30)
    got = data_features.weather_features(daily, window=21, frame_days=frame_days, frame_stride=5)
    assert got.shape == (20, 21)
    for f, day in enumerate(frame_days):
        for v in range(7):
            clim = np.array(
                [daily[max(0, d - 10) : min(150, d + 11), v].mean() for d in range(150)]
            )
            anomaly = daily[:, v] - clim
            days = range(day - 4, day + 1)
            expected = [
                min(anomaly[d] for d in days),
                max(anomaly[d] for d in days),
                sum(clim[d] for d in days) / 5,
            ]
            np.testing.assert_allclose(got[f, 3 * v : 3 * v + 3], expected, rtol=1e-5, atol=1e-5)


def test_fill_gaps_interpolates():
    x = np.array([[1.0], [np.nan], [3.0], [np.nan]])
    np.testing.assert_allclose(data_features.fill_gaps(x).ravel(), [1, 2, 3, 3])


def test_landcover_onehot_aliases_and_errors():
    classes = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    lc = np.array([[10, 95], [np.nan, 100]])
    onehot = data.landcover_onehot(lc, classes, ((95, 90),), "x.nc")
    assert onehot.shape == (2, 2, 10)
    assert onehot[0, 0, 0] == 1 and onehot[0, 1, 8] == 1 and onehot[1, 1, 9] == 1
    assert onehot[1, 0].sum() == 0  # no data
    with pytest.raises(data.CubeError, match="esawc_lc.*33"):
        data.landcover_onehot(np.array([[33.0]]), classes, (), "x.nc")


def _source(root, track="train"):
    config = helpers.tiny_config()
    norm = data.Normalisation(
        {
            "band_low": [0.0] * 4,
            "band_high": [1.0] * 4,
            "band_median": [0.1] * 4,
            "weather_mean": [0.0] * 21,
            "weather_std": [1.0] * 21,
        }
    )
    return data.CubeSource(root, track, config, norm)


def test_record_shapes_and_delta(tmp_path):
    path = helpers.write_cube(str(tmp_path), helpers.cube())
    source = _source(str(tmp_path))
    record = source[0]
    assert record["context"].shape == (10, 16, 16, 4)
    assert record["landcover"].shape == (16, 16, 10)
    assert record["weather"].shape == (20, 21)
    assert record["time_meta"].shape == (3,) and record["target_start_doy"].shape == (1,)
    assert record["target_doy"].shape == (20,)
    assert record["target_delta"].shape == (20, 16, 16, 4)
    assert all(np.isfinite(v).all() for v in record.values())
    # Delta = target - last BAP on clear target pixels (identity normalisation here).
    raw = source.read_raw(0)
    mask = record["target_mask"].astype(bool)
    assert 0.2 < mask.mean() < 0.95  # realistic cloud cover
    expected = raw["frames"][10:] - record["bap"][None]
    np.testing.assert_allclose(record["target_delta"][mask], expected[mask], atol=1e-6)
    assert np.all(record["target_delta"][~mask] == 0)
    # Target days of year: every 5th day from day 54 of the cube.
    start = pd.Timestamp(2019, 4, 1)
    expected_doy = [(start + pd.Timedelta(days=54 + 5 * j)).day_of_year for j in range(20)]
    np.testing.assert_array_equal(record["target_doy"], expected_doy)
    del path


def test_both_netcdf_engines_read_bitwise_the_same_records(tmp_path):
    """`data.engine` only picks the library that decodes the file (a harmless key on resume):
    a cube written by either engine gives the same training record through either engine."""
    records = {}
    for writer in ("netcdf4", "h5netcdf"):
        root = str(tmp_path / writer)
        synthetic.write_netcdf(helpers.cube(), f"{root}/train/32UNC/c.nc", writer)
        for reader in ("netcdf4", "h5netcdf"):
            source = _source(root)
            source.config.data.engine = reader
            records[writer, reader] = source[0]
    first = records["netcdf4", "netcdf4"]
    for record in records.values():
        assert record.keys() == first.keys()
        for key, value in record.items():
            np.testing.assert_array_equal(value, first[key], err_msg=key)
    # A workdir trained with the other engine (the default before netcdf4) resumes.
    config = helpers.tiny_config()
    config.data.engine = "h5netcdf"
    config_lib.check_resume(config, str(tmp_path))
    os.makedirs(tmp_path / "checkpoints" / "5")
    config.data.engine = "netcdf4"
    config_lib.check_resume(config, str(tmp_path))
    config.data.image_size += 1  # a key that changes the model still stops the resume
    with pytest.raises(ValueError, match="data.image_size"):
        config_lib.check_resume(config, str(tmp_path))


def test_normalisation_is_saved_and_reused(tmp_path):
    config = helpers.tiny_config()
    for i in range(2):
        helpers.write_cube(str(tmp_path / "data"), helpers.cube(seed=i), name=f"c{i}.nc")
    norm = data.normalisation(config, str(tmp_path), str(tmp_path / "data"))
    assert np.all(norm.band_high > norm.band_low)
    again = data.normalisation(config, str(tmp_path), str(tmp_path / "data"))
    np.testing.assert_array_equal(norm.band_low, again.band_low)
    assert (tmp_path / "normalisation.json").exists()


def test_missing_variable_is_a_clear_error(tmp_path):
    path = helpers.write_cube(str(tmp_path), helpers.cube().drop_vars("s2_B04"))
    with pytest.raises(data.CubeError, match=r"c\.nc.*missing variable 's2_B04'"):
        _source(str(tmp_path))[0]
    del path


def test_wrong_dims_is_a_clear_error(tmp_path):
    ds = helpers.cube()
    ds["s2_B8A"] = ds["s2_B8A"].transpose("lat", "time", "lon")
    helpers.write_cube(str(tmp_path), ds)
    with pytest.raises(data.CubeError, match=r"'s2_B8A' has dims \('lat', 'time', 'lon'\)"):
        _source(str(tmp_path))[0]


def test_wrong_size_and_scale_are_clear_errors(tmp_path):
    helpers.write_cube(str(tmp_path / "a"), helpers.cube(size=8))
    with pytest.raises(data.CubeError, match="'lat' has size 8; expected 16"):
        _source(str(tmp_path / "a"))[0]
    ds = helpers.cube()
    for band in ("s2_B02", "s2_B03", "s2_B04", "s2_B8A"):
        ds[band] = ds[band] * 10000
    helpers.write_cube(str(tmp_path / "b"), ds)
    with pytest.raises(data.CubeError, match="0..1 scale"):
        _source(str(tmp_path / "b"))[0]


def test_missing_track_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such track folder"):
        _source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such GreenEarthNet cube"):
        data.open_cube(str(tmp_path / "nope.nc"), "h5netcdf")
