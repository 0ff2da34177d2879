"""Malformed HRRR input: each class is one clear error naming the file and the field, or an
explicit policy that is logged and counted (duplicates, gaps). Small GRIB2 files written with
ecCodes (`synthetic.write_file` / `write_message`)."""

import datetime as dt
import json

import numpy as np
import pytest
import xarray as xr

from jaxlab.weather import data, data_grib, predict, synthetic
from tests.weather import grib_edit

SHAPE = (6, 8)
T0 = dt.datetime(2024, 6, 1, 0)


def fields(seed=0, shape=SHAPE):
    return {k: v[0] for k, v in synthetic.simulate(shape, 1, dx_m=9000.0, seed=seed).items()}


def write(path, hour=0, shape=SHAPE, **kwargs):
    synthetic.write_file(str(path), fields(hour, shape), T0 + dt.timedelta(hours=hour), 9000.0,
                         **kwargs)  # fmt: skip
    return str(path)


def archive(tmp_path, hours):
    return [write(tmp_path / f"f{h:02d}.grib2", h) for h in hours]


def test_missing_empty_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.grib2: no such GRIB2 file"):
        data.read_grib(str(tmp_path / "nope.grib2"))
    empty = tmp_path / "empty.grib2"
    empty.write_bytes(b"")
    with pytest.raises(data.GribError, match=r"empty.grib2: no GRIB2 messages"):
        data.read_grib(str(empty))
    whole = write(tmp_path / "whole.grib2")
    cut = tmp_path / "cut.grib2"
    with open(whole, "rb") as f:
        cut.write_bytes(f.read()[:-100])
    with pytest.raises(data.GribError, match=r"cut.grib2: GRIB2 message \d+ unreadable.*truncated"):
        data.read_grib(str(cut))
    text = tmp_path / "text.grib2"
    text.write_text("not a GRIB file\n")
    with pytest.raises(data.GribError, match=r"text.grib2: GRIB2 message 1 unreadable"):
        data.read_grib(str(text))


def test_missing_and_repeated_fields_name_file_and_field(tmp_path):
    missing = write(tmp_path / "nocape.grib2", skip=("cape",))
    with pytest.raises(data.MissingFieldError, match=r"nocape.grib2: field 'cape' \(GRIB2 code"):
        data.read_grib(missing)
    # A second 2 m TMP message (another run's field appended): never silently ignored.
    twice = write(tmp_path / "twice.grib2")
    with open(twice, "ab") as f:
        synthetic.write_message(f, fields(1)["t2m"], time=T0, dx_m=9000.0, code=(0, 0, 0, 103, 2))
    with pytest.raises(data.DuplicateFieldError, match=r"twice.grib2: field 't2m'.*messages"):
        data.read_grib(twice)
    # A field valid at another time than the rest of the file.
    mixed = write(tmp_path / "mixed.grib2", skip=("d2m",))
    with open(mixed, "ab") as f:
        later = T0 + dt.timedelta(hours=3)
        synthetic.write_message(
            f, fields(1)["d2m"], time=later, dx_m=9000.0, code=(0, 0, 6, 103, 2)
        )
    with pytest.raises(data.GribError, match=r"mixed.grib2: field 'd2m' is valid at 2024-06-01T03"):
        data.read_grib(mixed)


def test_non_finite_and_out_of_range_values(tmp_path):
    path = write(tmp_path / "hot.grib2")
    hot = fields()
    hot["t2m"] = hot["t2m"] + 200.0  # 500 K
    synthetic.write_file(path, hot, T0, 9000.0)
    with pytest.raises(data.GribError, match=r"hot.grib2: field 't2m' has 48 values outside"):
        data.read_grib(path)
    # Points without a value (a GRIB2 bitmap): reported, never decoded as 9999.
    source = write(tmp_path / "source.grib2")
    holes = str(tmp_path / "holes.grib2")
    grib_edit.with_missing_dew_point(source, holes)
    with pytest.raises(data.GribError, match=r"holes.grib2: field 'd2m' has 3 missing \(bitmap\)"):
        data.read_grib(holes)
    values = np.ones(SHAPE, np.float32) * 290.0
    values[1, 2] = np.nan
    with pytest.raises(data.GribError, match=r"x.grib2: field 't2m' has 1 non-finite"):
        data_grib.check_values("x.grib2", "t2m", values)


def test_another_grid_is_rejected_naming_the_file(tmp_path):
    paths = archive(tmp_path, range(3))
    other = write(tmp_path / "wide.grib2", hour=3, shape=(6, 10))
    with pytest.raises(data.GribError, match=r"wide.grib2: grid differs.*'Nx': \(8, 10\)"):
        data.prepare_zarr([*paths, other], str(tmp_path / "s.zarr"))
    with pytest.raises(
        ValueError, match=r"f02.grib2: on another grid than the initial file .*w2.grib2"
    ):
        predict.read_initial_states(f"{paths[2]},{write(tmp_path / 'w2.grib2', 3, (6, 10))}")


def test_duplicated_valid_time_is_an_error_or_counted_policy(tmp_path):
    paths = archive(tmp_path, range(4))
    copy = write(tmp_path / "z_copy.grib2", hour=2)  # same valid time as f02
    with pytest.raises(ValueError, match=r"valid time 2024-06-01T02.*f02.grib2.*z_copy.grib2"):
        data.prepare_zarr([*paths, copy], str(tmp_path / "e.zarr"))
    store = str(tmp_path / "d.zarr")
    stats = data.prepare_zarr([*paths, copy], store, on_duplicate="drop_later")
    assert stats["dropped_duplicates"] == [copy] and stats["num_times"] == 4
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    assert len(np.unique(ds["time"].values)) == ds.sizes["time"] == 4
    np.testing.assert_array_equal(ds["t2m"].values[2], data.read_grib(paths[2])["t2m"])
    with pytest.raises(ValueError, match=r"data.on_duplicate must be one of"):
        data.prepare_zarr(paths, store, on_duplicate="keep")
    with pytest.raises(ValueError, match="valid time .* is in 2 input files"):
        predict.read_initial_states(f"{paths[2]},{copy}")


def test_missing_hours_are_logged_counted_or_an_error(tmp_path, caplog):
    paths = archive(tmp_path, [0, 1, 2, 4, 5, 6, 7, 8])  # 03 UTC missing
    with pytest.raises(ValueError, match=r"1 hours missing.*2024-06-01T03.*on_gap='error'"):
        data.prepare_zarr(paths, str(tmp_path / "e.zarr"), on_gap="error")
    store = str(tmp_path / "gap.zarr")
    stats = data.prepare_zarr(paths, store, train_fraction=0.75)
    assert stats["missing_hours"] == ["2024-06-01T03:00:00.000000000"]
    with open(data.stats_path(store)) as f:
        assert json.load(f)["missing_hours"] == stats["missing_hours"]
    caplog.set_level("WARNING")
    source = data.PairSource(store, "train", (1, 2))  # train times 00 01 02 04 05 06
    # Lost to the gap: 02 -> 03 (lead 1) and 01 -> 03 (lead 2); 06 -> 07 leaves the period.
    assert source.pairs_lost == {1: 1, 2: 1}
    assert {(i, j) for i, j, lead in source.pairs if lead == 1} == {(0, 1), (1, 2), (3, 4), (4, 5)}
    assert {(i, j) for i, j, lead in source.pairs if lead == 2} == {(0, 1 + 1), (2, 3), (3, 5)}
    assert "pairs lost to 1 missing hours" in caplog.text


def test_store_without_a_variable_and_a_bad_init_time(tmp_path):
    ds = xr.Dataset({"refc": (("time", "y", "x"), np.zeros((2, 3, 4), np.float32))})
    store = str(tmp_path / "partial.zarr")
    ds.to_zarr(store, consolidated=False)
    with open(data.stats_path(store), "w") as fh:
        json.dump({"variables": {}}, fh)
    with pytest.raises(ValueError, match="partial.zarr: variable 't2m' missing"):
        data.open_store(store)
    with pytest.raises(FileNotFoundError, match="prepare_weather"):
        data.open_store(str(tmp_path / "nope.zarr"))
    good = str(tmp_path / "good.zarr")
    data.prepare_zarr(archive(tmp_path, range(3)), good)
    with pytest.raises(ValueError, match=r"good.zarr: init_time 2024-06-02T00.* not in the store"):
        predict.read_initial_states(good, "2024-06-02T00")
    with pytest.raises(ValueError, match=r"init_time='yesterday'"):
        predict.read_initial_states(good, "yesterday")
