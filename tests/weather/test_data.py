"""GRIB2 (written with ecCodes) -> cfgrib reader -> Zarr store, statistics, normaliser, errors."""

import datetime as dt
import json
import os

import numpy as np
import pytest
import xarray as xr

from jaxlab.weather import data, synthetic

SHAPE = (12, 16)


@pytest.fixture(scope="module")
def grib_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hrrr")
    paths = synthetic.write_dataset(str(directory), shape=SHAPE, num_times=8, dx_m=9000.0, seed=1)
    return directory, paths


def test_writes_archive_layout_and_reads_surface_fields(grib_files):
    directory, paths = grib_files
    assert paths[0].endswith(os.path.join("hrrr.20240601", "conus", "hrrr.t00z.wrfsfcf00.grib2"))
    assert data.grib_paths(str(directory)) == sorted(paths)
    fields = synthetic.simulate(SHAPE, 8, dx_m=9000.0, seed=1)
    record = data.read_grib(paths[3])
    assert record["time"] == np.datetime64("2024-06-01T03:00")
    for name in data.VARIABLES:
        assert record[name].shape == SHAPE
        # 16-bit GRIB packing: agreement to a small fraction of the field's range.
        tol = 1e-3 * (np.ptp(fields[name][3]) + 1.0)
        np.testing.assert_allclose(record[name], fields[name][3], atol=tol, err_msg=name)
    # The surface CAPE was selected, not the pressure-layer one (written as half of it).
    assert record["cape"].max() > 0.9 * fields["cape"][3].max()
    assert record["latitude"].shape == SHAPE
    np.testing.assert_allclose(record["latitude"][0, 0], synthetic.LAMBERT["lat0"], atol=1e-3)


def test_prepare_zarr_store_stats_and_normaliser(grib_files, tmp_path):
    _, paths = grib_files
    store = str(tmp_path / "hrrr.zarr")
    stats = data.prepare_zarr(paths, store, train_fraction=0.75)
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    for name in data.VARIABLES:
        assert ds[name].dims == ("time", "y", "x")
        assert ds[name].encoding["chunks"] == (1, *SHAPE)
        assert ds[name].attrs["units"] == data.UNITS[name]
    assert ds["latitude"].dims == ("y", "x")
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(1, "h"))
    with open(data.stats_path(store)) as f:
        assert json.load(f)["num_train_times"] == 6
    # Stats over the 6 training times, of the transformed field.
    cape = np.log1p(ds["cape"].values[:6].astype(np.float64))
    np.testing.assert_allclose(stats["variables"]["cape"]["mean"], cape.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["variables"]["cape"]["std"], cape.std(), rtol=1e-4)
    norm = data.Normaliser(stats)
    phys = np.stack([ds[n].values[2] for n in data.VARIABLES], -1)
    z = norm.encode(phys)
    np.testing.assert_allclose(norm.decode(z), phys, rtol=1e-4, atol=1e-2)
    # Pairs and crops.
    src = data.PairSource(store, "train", (1, 2))
    assert len(src) == 5 + 4
    rec = src[0]
    np.testing.assert_allclose(rec["target"], src.state(1))
    crop = data.random_crop((8, 8))(rec, np.random.default_rng(0))
    assert crop["cond"].shape == (8, 8, 7) and crop["target"].shape == (8, 8, 7)


def test_missing_field_is_named_and_skipped_or_fails(grib_files, tmp_path):
    _, paths = grib_files
    fields = synthetic.simulate(SHAPE, 1, dx_m=9000.0, seed=2)
    bad = str(tmp_path / "hrrr.20240601" / "conus" / "hrrr.t08z.wrfsfcf00.grib2")
    synthetic.write_file(
        bad,
        {k: v[0] for k, v in fields.items()},
        dt.datetime(2024, 6, 1, 8),
        9000.0,
        skip=("cape",),
    )
    with pytest.raises(data.MissingFieldError, match=r"hrrr.t08z.*'cape'"):
        data.read_grib(bad)
    with pytest.raises(data.MissingFieldError, match="cape"):
        data.prepare_zarr(paths[:3] + [bad], str(tmp_path / "f.zarr"), missing="fail")
    stats = data.prepare_zarr(paths[:3] + [bad], str(tmp_path / "s.zarr"), missing="skip")
    assert stats["skipped_files"] == [bad]


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GRIB2 file"):
        data.read_grib(str(tmp_path / "nope.grib2"))
    with pytest.raises(FileNotFoundError, match="prepare_weather"):
        data.open_store(str(tmp_path / "nope.zarr"))
    fields = synthetic.simulate(SHAPE, 1, dx_m=9000.0, seed=2)
    f = {k: v[0] for k, v in fields.items()}
    f["t2m"] = f["t2m"] + 200.0  # 500 K: out of range
    path = str(tmp_path / "hot.grib2")
    synthetic.write_file(path, f, dt.datetime(2024, 6, 1), 9000.0)
    with pytest.raises(ValueError, match=r"hot.grib2: t2m .* outside"):
        data.read_grib(path)
    # A store without a variable.
    ds = xr.Dataset({"refc": (("time", "y", "x"), np.zeros((2, 3, 4), np.float32))})
    store = str(tmp_path / "partial.zarr")
    ds.to_zarr(store, consolidated=False)
    with open(data.stats_path(store), "w") as fh:
        json.dump({"variables": {}}, fh)
    with pytest.raises(ValueError, match="variable 't2m' missing"):
        data.open_store(store)


def test_synthetic_fields_have_the_planted_physics():
    """Diurnal T2M, daytime-only convection, fields advected by the 10 m wind: the signal."""
    f = synthetic.simulate((40, 56), 48, dx_m=9000.0, seed=0)
    hours = np.arange(48) % 24
    t2m = f["t2m"].mean(axis=(1, 2))
    assert t2m[hours == 12].mean() - t2m[hours == 0].mean() > 3.0  # K
    assert np.all(f["d2m"] <= f["t2m"])
    echoes = (f["refc"] >= 35.0).sum(axis=(1, 2))  # initiation needs CAPE > 1000, CIN > -75
    assert (
        echoes[(hours >= 12) & (hours <= 20)].mean()
        > 10 * echoes[(hours >= 4) & (hours <= 8)].mean()
    )

    def corr(a, b):
        return np.corrcoef(a[4:-4, 4:-4].ravel(), b[4:-4, 4:-4].ravel())[0, 1]

    # The next hour matches this hour shifted by the mean wind (in cells/h) better than unshifted.
    gains = []
    for name in ("t2m", "cape"):
        for t in range(47):
            now, nxt = f[name][t] - f[name][t].mean(), f[name][t + 1] - f[name][t + 1].mean()
            cells_per_hour = 3600.0 / 9000.0
            shift = (
                round(float(f["v10"][t + 1].mean()) * cells_per_hour),
                round(float(f["u10"][t + 1].mean()) * cells_per_hour),
            )
            gains.append(corr(np.roll(now, shift, (0, 1)), nxt) - corr(now, nxt))
    assert np.mean(np.array(gains) > 0) > 0.8, gains
