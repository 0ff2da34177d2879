"""Malformed GreenEarthNet cubes: one clear error per class, naming the file and the variable (or
an explicit, logged, counted policy); and synthetic data never touching a user's folder."""

import logging

import numpy as np
import pytest

from jaxlab.data import ownership
from jaxlab.vegetation import data
from tests.folder_md5 import md5_tree
from tests.vegetation import helpers

IDENTITY = data.Normalisation(
    {
        "band_low": [0.0] * 4,
        "band_high": [1.0] * 4,
        "band_median": [0.1] * 4,
        "weather_mean": [0.0] * 21,
        "weather_std": [1.0] * 21,
    }
)


def _record(root, config=None):
    config = config or helpers.tiny_config()
    return data.CubeSource(str(root), "train", config, IDENTITY)[0]


def _bad(tmp_path, edit, name="bad.nc"):
    """Writes the tiny cube after `edit(ds)` (returns the dataset to write) to tmp_path."""
    ds = helpers.cube()
    helpers.write_cube(str(tmp_path), edit(ds), name=name)
    return tmp_path


def _set(ds, name, index, value):
    values = ds[name].values.copy()
    values[index] = value
    ds[name] = (ds[name].dims, values)
    return ds


def test_infinite_reflectance_is_an_error_not_a_cloud(tmp_path):
    # Day 4 is an acquisition day of every synthetic cube's first frame.
    root = _bad(tmp_path, lambda ds: _set(ds, "s2_B04", (4, 3, 5), np.inf))
    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 's2_B04' holds 1 infinite"):
        _record(root)


def test_out_of_range_reflectance_on_clear_pixels(tmp_path):
    def fill(ds):
        values = ds["s2_B8A"].values.copy()
        clear = (ds["s2_mask"].values == 0) & np.isfinite(values)
        values[np.nonzero(clear)[0][0], np.nonzero(clear)[1][0], np.nonzero(clear)[2][0]] = -9999
        ds["s2_B8A"] = (ds["s2_B8A"].dims, values)
        return ds

    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 's2_B8A' has 1 clear-pixel"):
        _record(_bad(tmp_path, fill))


def test_nan_weather_is_an_error_naming_variable_and_count(tmp_path):
    root = _bad(tmp_path, lambda ds: _set(ds, "eobs_hu", slice(20, 35), np.nan))
    with pytest.raises(data.CubeError, match=r"bad\.nc: E-OBS variable 'eobs_hu' holds 15 NaN"):
        _record(root)


def test_nan_weather_interpolated_only_when_asked_and_counted(tmp_path, caplog):
    root = _bad(tmp_path, lambda ds: _set(ds, "eobs_hu", slice(20, 35), np.nan))
    config = helpers.tiny_config()
    config.data.on_weather_nan = "interpolate"
    with caplog.at_level(logging.WARNING):
        record = _record(root, config)
    assert np.isfinite(record["weather"]).all()
    assert any(
        "eobs_hu: 15 NaN values of 150 interpolated" in r.getMessage() for r in caplog.records
    )
    config.data.on_weather_nan = "drop"
    with pytest.raises(ValueError, match="on_weather_nan = 'drop'"):
        _record(root, config)


def test_infinite_weather_is_an_error_even_when_interpolating(tmp_path):
    root = _bad(tmp_path, lambda ds: _set(ds, "eobs_tx", slice(60, 62), -np.inf))
    config = helpers.tiny_config()
    config.data.on_weather_nan = "interpolate"
    with pytest.raises(data.CubeError, match=r"bad\.nc: E-OBS variable 'eobs_tx' holds 2 infinite"):
        _record(root, config)


def test_out_of_range_weather_fill_value(tmp_path):
    root = _bad(tmp_path, lambda ds: _set(ds, "eobs_rr", slice(5, 8), -9999.0))
    with pytest.raises(
        data.CubeError, match=r"bad\.nc: E-OBS variable 'eobs_rr' has 3 values outside"
    ):
        _record(root)


def test_duplicate_date_is_an_error(tmp_path):
    def duplicate(ds):
        times = ds.time.values.copy()
        times[10] = times[9]
        return ds.assign_coords(time=times)

    with pytest.raises(
        data.CubeError, match=r"bad\.nc: coordinate 'time' repeats 1 date\(s\), e\.g\. 2019-04-10"
    ):
        _record(_bad(tmp_path, duplicate))


def test_missing_date_is_an_error(tmp_path):
    def gap(ds):
        times = ds.time.values.copy()
        times[100:] = times[100:] + np.timedelta64(1, "D")
        return ds.assign_coords(time=times)

    with pytest.raises(data.CubeError, match=r"bad\.nc: coordinate 'time' is not consecutive"):
        _record(_bad(tmp_path, gap))


def test_text_landcover_is_an_error(tmp_path):
    def text(ds):
        ds["esawc_lc"] = ds["esawc_lc"].astype(int).astype(str)
        return ds

    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 'esawc_lc' has dtype <U\d+"):
        _record(_bad(tmp_path, text))


def test_text_weather_is_an_error(tmp_path):
    def text(ds):
        ds["eobs_pp"] = ds["eobs_pp"].astype(str)
        return ds

    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 'eobs_pp' has dtype"):
        _record(_bad(tmp_path, text))


def test_missing_variable(tmp_path):
    with pytest.raises(data.CubeError, match=r"bad\.nc: missing E-OBS variable 'eobs_qq'"):
        _record(_bad(tmp_path, lambda ds: ds.drop_vars("eobs_qq")))


def test_wrong_dims(tmp_path):
    def swap(ds):
        ds["esawc_lc"] = ds["esawc_lc"].transpose("lon", "lat")
        return ds

    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 'esawc_lc' has dims \('lon'"):
        _record(_bad(tmp_path, swap))


@pytest.mark.parametrize("keep", [0.0, 0.5])
def test_empty_and_truncated_netcdf(tmp_path, keep):
    path = helpers.write_cube(str(tmp_path), helpers.cube(), name="cut.nc")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: int(len(content) * keep)])
    with pytest.raises(data.CubeError, match=r"cut\.nc: not a readable NetCDF file"):
        _record(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.nc: no such GreenEarthNet cube"):
        data.open_cube(str(tmp_path / "nope.nc"), "h5netcdf")


def test_context_only_reader_applies_the_same_checks(tmp_path):
    """predict's reader: the forecast days' Sentinel-2 are never read, the context's are checked."""
    ds = helpers.cube()
    ds = _set(ds, "s2_B02", (slice(50, None),), np.inf)  # after the context: ignored
    path = helpers.write_cube(str(tmp_path / "ok"), ds, name="ok.nc")
    config = helpers.tiny_config()
    days = 4 + 5 * np.arange(30)
    raw = data.read_window(path, config, 0, days, context_only=True)
    assert raw["frames"].shape[0] == 10 and np.isfinite(raw["weather"]).all()
    ds = _set(ds, "s2_B02", (9, 0, 0), np.inf)  # a context frame (day 9)
    path = helpers.write_cube(str(tmp_path / "bad"), ds, name="bad.nc")
    with pytest.raises(data.CubeError, match=r"bad\.nc: variable 's2_B02' holds 1 infinite"):
        data.read_window(path, config, 0, days, context_only=True)


def test_synthetic_data_never_touches_a_user_folder(tmp_path):
    """A user's GreenEarthNet folder with data.synthetic=True: one error, every file unchanged,
    nothing added. An empty folder is claimed (marker) and filled; a second run reuses it."""
    user = tmp_path / "greenearthnet"
    helpers.write_cube(str(user), helpers.cube(seed=1), "train", "32UNC", "mine.nc")
    (user / "notes.txt").write_text("my download\n")
    before = md5_tree(user)
    config = helpers.tiny_config()
    config.data.synthetic_cubes = (("train", 1), ("val_chopped", 1))
    config.data.dir = str(user)
    with pytest.raises(ownership.DataDirError, match="holds files that jaxlab did not write"):
        data.prepare(config, str(tmp_path / "work"))
    assert md5_tree(user) == before

    config.data.dir = str(tmp_path / "empty")
    root = data.prepare(config, str(tmp_path / "work"))
    assert ownership.is_synthetic_dir(root)
    written = md5_tree(root)
    assert sum(p.endswith(".nc") for p in written) == 2
    assert data.prepare(config, str(tmp_path / "work")) == root
    assert md5_tree(root) == written
