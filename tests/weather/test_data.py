"""GRIB2 (written with ecCodes) -> reader by GRIB2 codes -> Zarr store (bounded memory, resumable,
one-pass statistics), normaliser, projection, synthetic-folder ownership."""

import datetime as dt
import json
import os
import shutil

import eccodes
import numpy as np
import pytest
import xarray as xr

from jaxlab.configs import weather as weather_config
from jaxlab.data import ownership
from jaxlab.weather import data, data_grib, data_zarr, synthetic
from tests.folder_md5 import md5_tree

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
        np.testing.assert_array_equal(ds[name].values[3], data.read_grib(paths[3])[name])
    assert ds["latitude"].dims == ("y", "x")
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(1, "h"))
    with open(data.stats_path(store)) as f:
        assert json.load(f)["num_train_times"] == 6
    # The one-pass (Chan) statistics equal a NumPy recomputation over the 6 training times.
    for name in data.VARIABLES:
        x = data.forward_transform(name, ds[name].values[:6].astype(np.float64))
        s = stats["variables"][name]
        np.testing.assert_allclose(s["mean"], x.mean(), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(s["std"], max(x.std(), data.MIN_STD[name]), rtol=1e-6)
    norm = data.Normaliser(stats)
    phys = np.stack([ds[n].values[2] for n in data.VARIABLES], -1)
    z = norm.encode(phys)
    np.testing.assert_allclose(norm.decode(z), phys, rtol=1e-4, atol=1e-2)
    # Pairs and crops.
    src = data.PairSource(store, "train", (1, 2))
    assert len(src) == 5 + 4 and src.pairs_lost == {}
    rec = src[0]
    np.testing.assert_allclose(rec["target"], src.state(1))
    crop = data.random_crop((8, 8))(rec, np.random.default_rng(0))
    assert crop["cond"].shape == (8, 8, 7) and crop["target"].shape == (8, 8, 7)


def _store_arrays(store):
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    return {n: ds[n].values for n in (*data.VARIABLES, "time", "latitude", "moments")}


def test_interrupted_conversion_resumes_to_the_same_store(grib_files, tmp_path, monkeypatch):
    """A crash after 4 of 8 files leaves 4 written steps; the rerun decodes only the other 4 and
    ends with the store and statistics of an uninterrupted run, bitwise."""
    _, paths = grib_files
    clean = str(tmp_path / "clean.zarr")
    clean_stats = data.prepare_zarr(paths, clean)
    decode, calls = data_zarr._decode, []

    def crash_on_fifth(path, header):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated crash")
        return decode(path, header)

    store = str(tmp_path / "resumed.zarr")
    monkeypatch.setattr(data_zarr, "_decode", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_zarr(paths, store)
    assert not os.path.exists(data.stats_path(store))  # incomplete: no statistics yet
    calls.clear()
    stats = data.prepare_zarr(paths, store)
    assert len(calls) == 4
    assert stats == clean_stats
    got, want = _store_arrays(store), _store_arrays(clean)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="holds other times"):
        data.prepare_zarr(paths[:5], store)


def test_any_grib2_name_is_read_and_ordered_by_its_content(grib_files, tmp_path):
    _, paths = grib_files
    flat = tmp_path / "flat"
    flat.mkdir()
    names = [f"{chr(ord('z') - i)}_upload.grib2" for i in range(4)]  # reverse time order
    for name, path in zip(names, paths[:4], strict=True):
        shutil.copyfile(path, flat / name)
    (flat / "notes.txt").write_text("not GRIB")
    found = data.grib_paths(str(flat))
    assert sorted(os.path.basename(p) for p in found) == sorted(names)
    store = str(tmp_path / "flat.zarr")
    data.prepare_zarr(found, store)
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    np.testing.assert_array_equal(ds["time"].values, [data.read_grib(p)["time"] for p in paths[:4]])


def test_fields_are_selected_by_grib_codes_not_short_names(grib_files, tmp_path):
    """Centre 98 (ECMWF) makes ecCodes name NCEP's local REFC `unknown`; messages reordered, with
    a 500 mb TMP decoy: the reader still picks each field by its codes."""
    _, paths = grib_files
    handles = []
    with open(paths[2], "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            handles.append(h)
    decoy = eccodes.codes_clone(handles[1])  # 2 m TMP -> 500 mb TMP with other values
    eccodes.codes_set(decoy, "typeOfFirstFixedSurface", 100)
    eccodes.codes_set(decoy, "level", 500)
    eccodes.codes_set_values(decoy, eccodes.codes_get_values(decoy) - 40.0)
    out = str(tmp_path / "renamed.grib2")
    with open(out, "wb") as f:
        for h in [decoy, *reversed(handles)]:
            eccodes.codes_set(h, "centre", 98)
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
    with open(out, "rb") as f:
        h = eccodes.codes_grib_new_from_file(f, headers_only=True)
        h2 = eccodes.codes_grib_new_from_file(f, headers_only=True)
        assert eccodes.codes_get(h2, "shortName") == "unknown"  # the REFC message, by name
        eccodes.codes_release(h)
        eccodes.codes_release(h2)
    got, want = data.read_grib(out), data.read_grib(paths[2])
    for name in data.VARIABLES:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_projection_coordinates_match_ecCodes_latitudes(grib_files):
    """x / y from `lambert_xy` with the file's Lambert keys, inverted with the spherical LCC
    formulas written out here, land on ecCodes' own latitude / longitude to 1e-4 degrees."""
    _, paths = grib_files
    record = data.read_grib(paths[0])
    g = record["grid"]
    x, y = data_grib.lambert_xy(g)
    xx, yy = np.meshgrid(x, y)
    rad, radius = np.pi / 180, g["earth_radius_m"]
    phi1, lat0, lon0 = g["Latin1InDegrees"] * rad, g["LaDInDegrees"] * rad, g["LoVInDegrees"]
    n = np.sin(phi1)  # tangent cone: Latin1 == Latin2
    f = np.cos(phi1) * np.tan(np.pi / 4 + phi1 / 2) ** n / n
    rho0 = radius * f / np.tan(np.pi / 4 + lat0 / 2) ** n
    rho = np.sign(n) * np.hypot(xx, rho0 - yy)
    lat = 2 * np.arctan((radius * f / rho) ** (1 / n)) - np.pi / 2
    lon = lon0 + np.arctan2(xx, rho0 - yy) / n / rad
    np.testing.assert_allclose(lat / rad, record["latitude"], atol=1e-4)
    np.testing.assert_allclose((lon - record["longitude"] + 180) % 360 - 180, 0, atol=1e-4)


@pytest.mark.slow
def test_process_pool_gives_the_serial_store(grib_files, tmp_path):
    _, paths = grib_files
    serial, pooled = str(tmp_path / "serial.zarr"), str(tmp_path / "pooled.zarr")
    assert data.prepare_zarr(paths, serial) == data.prepare_zarr(paths, pooled, workers=2)
    got, want = _store_arrays(pooled), _store_arrays(serial)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_synthetic_data_never_touches_a_users_folder(grib_files, tmp_path):
    """A synthetic config pointed at a folder of the user's GRIB2 files (the synthetic names):
    one clear error, and the folder's files are byte for byte what they were, none added."""
    directory, paths = grib_files
    user = tmp_path / "user"
    for path in paths[:3]:
        target = user / "grib" / os.path.relpath(path, directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    before = md5_tree(user)
    config = weather_config.get_config("tiny")
    config.data.dir = str(user)
    with pytest.raises(ownership.DataDirError, match="did not write.*data.synthetic=False"):
        data.prepare(config, str(tmp_path / "work"))
    assert md5_tree(user) == before


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


def test_synthetic_anomaly_patterns_stay_as_strong_on_the_last_day():
    """The advected patterns neither leave the domain nor smear out: the spatial std of log(-CIN)
    and of the T2M anomaly on day 5 is within a factor 2 of day 1. (Advected with the upstream
    edge copied in, CIN was uniform from day 3 on: std 0.375 -> 0.013.)"""
    f = synthetic.simulate((16, 24), 120, dx_m=9000.0, seed=0)
    cin = np.log1p(-f["cin"].astype(np.float64)).std(axis=(1, 2))
    t2m = f["t2m"] - f["t2m"].mean(axis=2, keepdims=True)  # the latitude gradient is along y
    t2m = t2m.std(axis=(1, 2))
    for day_std in (cin, t2m):
        first, last = day_std[:24].mean(), day_std[-24:].mean()
        assert 0.5 * first < last < 2.0 * first, (first, last)
