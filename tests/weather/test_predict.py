"""Predict from a lone GRIB2 pair with a tiny trained model: CF-1.10 NetCDF read back by plain
xarray (+ cf_xarray for the grid mapping and standard names, h5py for the compression), units and
ranges, the PNG folders; a bundle and its checkpoint, and a Zarr store and the GRIB2 files, give
bitwise the same forecast.

One module fixture trains the `tiny` config for 4 steps on 1 device (8 x 8 crops; orbax saves a
leaf replicated over D devices in D slices, a compile each) and exports it; the forecasts use 3
members and 2 leads.
"""

import os

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import eccodes
import h5py
import jax
import numpy as np
import pytest
import xarray as xr

from jaxlab.configs import weather as weather_config
from jaxlab.core import bundle as bundle_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import data, predict, predict_output, train

pytestmark = pytest.mark.slow
OPTIONS = dict(members="3", leads="2", sample_members="1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, bundle, demo input folder) of a 4-step tiny run with the inference hooks."""
    root = tmp_path_factory.mktemp("weather_predict")
    workdir, bundle = str(root / "run"), str(root / "bundle")
    config = weather_config.get_config("tiny")
    config.train.update(global_batch_size=2, num_steps=4, log_every=2, ckpt_every=4)
    config.train.update(eval_every=4, async_checkpoint=False)
    config.data.crop = (8, 8)
    config.eval.loss_examples = 4
    config.optim.warmup_steps = 1
    make_mesh = mesh_lib.make_mesh
    with pytest.MonkeyPatch.context() as patch:
        # 1 device.
        patch.setattr(
            mesh_lib,
            "make_mesh",
            lambda axes, devices=None: make_mesh(axes, devices or jax.devices()[:1]),
        )
        train.train_and_evaluate(config, workdir)
        bundle_lib.export_bundle(config, workdir, bundle)
        inputs = predict.demo_input(config, workdir)
        yield workdir, bundle, inputs


def _grib_keys(path):
    keys = ("LaDInDegrees", "LoVInDegrees", "Latin1InDegrees", "Latin2InDegrees", "radius")
    with open(path, "rb") as f:
        h = eccodes.codes_grib_new_from_file(f)
        out = {k: eccodes.codes_get(h, k) for k in keys}
        out["time"] = np.datetime64(
            f"{eccodes.codes_get(h, 'validityDate')}"[:4]
            + "-"
            + f"{eccodes.codes_get(h, 'validityDate')}"[4:6]
            + "-"
            + f"{eccodes.codes_get(h, 'validityDate')}"[6:]
            + f"T{eccodes.codes_get(h, 'validityTime') // 100:02d}",
            "ns",
        )
        eccodes.codes_release(h)
    return out


def test_lone_grib_pair_to_cf_netcdf_and_figures(trained, tmp_path):
    workdir, bundle, inputs = trained
    files = sorted(os.listdir(inputs))
    assert len(files) == 2 and not any(f.endswith(".zarr") for f in files)  # no targets, no store
    init = max((_grib_keys(os.path.join(inputs, f)) for f in files), key=lambda k: k["time"])
    assert data.STATS_FILE in os.listdir(bundle)
    written = predict.predict(bundle, inputs, str(tmp_path), **OPTIONS)
    nc = [w for w in written if w.endswith(".nc")]
    assert len(nc) == 1
    ds = xr.open_dataset(nc[0], engine="h5netcdf")  # plain xarray, CF decoding
    assert ds.attrs["Conventions"] == "CF-1.10"
    assert dict(ds["t2m"].sizes) == {"realization": 3, "time": 2, "y": 16, "x": 24}
    assert ds["forecast_reference_time"].values == init["time"]
    hour = np.timedelta64(1, "h")
    np.testing.assert_array_equal(ds["time"].values, init["time"] + np.array([1, 2]) * hour)
    np.testing.assert_array_equal(ds["forecast_period"].values, [1, 2])
    assert ds["forecast_period"].attrs["units"] == "hours"
    # CF: the grid mapping and the standard names, decoded by cf_xarray.
    assert ds.cf.grid_mapping_names == {"lambert_conformal_conic": ["lambert_conformal_conic"]}
    for name in data.VARIABLES:
        associated = ds.cf.get_associated_variable_names(name)
        assert associated["grid_mapping"] == ["lambert_conformal_conic"], name
        assert set(associated["coordinates"]) >= {"latitude", "longitude"}, name
    gm = ds["lambert_conformal_conic"]
    assert gm.attrs["latitude_of_projection_origin"] == init["LaDInDegrees"]
    assert gm.attrs["longitude_of_central_meridian"] == init["LoVInDegrees"]
    assert list(gm.attrs["standard_parallel"]) == [init["Latin1InDegrees"], init["Latin2InDegrees"]]
    assert gm.attrs["earth_radius"] == init["radius"]
    names = ds.cf.standard_names
    for standard_name in (
        "air_temperature",
        "dew_point_temperature",
        "equivalent_reflectivity_factor",
        "eastward_wind",  # the synthetic files say earth-relative winds
        "atmosphere_convective_available_potential_energy",
        "atmosphere_convective_inhibition",
        "realization",
        "forecast_reference_time",
        "forecast_period",
        "projection_x_coordinate",
        "latitude",
    ):
        assert standard_name in names, standard_name
    assert ds.cf["projection_x_coordinate"].attrs["units"] == "m"
    assert ds.cf.axes["X"] == ["x"] and ds.cf.axes["Y"] == ["y"]
    assert set(ds.cf.coordinates["latitude"]) == {"latitude"}
    # Units and physical ranges.
    for name in data.VARIABLES:
        assert ds[name].attrs["units"] == data.UNITS[name]
        lo, hi = data.VALID_RANGE[name]
        values = ds[name].values
        assert np.isfinite(values).all() and values.min() >= lo and values.max() <= hi, name
        assert ds[name].attrs["values_clipped_to_physical_range"] >= 0
        np.testing.assert_allclose(ds[f"{name}_mean"], values.mean(0), rtol=1e-5, atol=1e-4)
        assert (ds[f"{name}_spread"].values >= 0).all()
    probability = ds[predict_output.probability_name("refc", 35.0)]
    assert probability.attrs["units"] == "1"
    np.testing.assert_allclose(probability, (ds["refc"].values >= 35.0).mean(0), atol=1e-6)
    assert predict_output.probability_name("cape", 1000.0) in ds
    with h5py.File(nc[0]) as f:
        assert f["t2m"].compression == "gzip"
    # Five folders, each with figures; with the t-1 h file, the 1-h change figures too.
    for folder in predict_output.FOLDERS:
        assert os.listdir(tmp_path / folder), folder
    assert (tmp_path / "01_current_state" / "t2m_change_1h.png").exists()
    assert (tmp_path / "05_sample_members" / "refc_member00_lead02h.png").exists()
    assert all(os.path.exists(w) for w in written)


def _arrays(path):
    ds = xr.open_dataset(path, engine="h5netcdf")
    return {name: ds[name].values for name in ds.data_vars}


def test_bundle_checkpoint_and_store_give_bitwise_the_same_forecast(trained, tmp_path):
    workdir, bundle, inputs = trained
    runs = {
        "bundle": (bundle, inputs),
        "checkpoint": (workdir, inputs),
        "store": (workdir, os.path.join(workdir, "data", "hrrr.zarr")),
    }
    init = max(_grib_keys(os.path.join(inputs, f))["time"] for f in os.listdir(inputs))
    got = {}
    for name, (model, source) in runs.items():
        out = str(tmp_path / name)
        files = predict.predict(model, source, out, init_time=str(init), plots="false", **OPTIONS)
        assert len(files) == 1
        got[name] = _arrays(files[0])
    for name in ("checkpoint", "store"):
        for key, value in got["bundle"].items():
            np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}: {key}")
    # More members only add members: members 0..2 of a 4-member run (another batch size, 4
    # devices) are the 3-member run's, up to float rounding of the other compiled program.
    options = {**OPTIONS, "members": "4"}
    files = predict.predict(bundle, inputs, str(tmp_path / "m4"), plots="false", **options)
    np.testing.assert_allclose(_arrays(files[0])["t2m"][:3], got["bundle"]["t2m"], rtol=1e-5)


def test_wrong_inputs_are_clear_errors(trained, tmp_path):
    workdir, bundle, inputs = trained
    with pytest.raises(ValueError, match="init_time 2030-01-01T00.*no input file"):
        predict.predict(bundle, inputs, str(tmp_path), init_time="2030-01-01T00", **OPTIONS)
    with pytest.raises(ValueError, match="members='0'"):
        predict.predict(bundle, inputs, str(tmp_path), members="0")
    with pytest.raises(FileNotFoundError, match="nope.grib2"):
        predict.predict(bundle, str(tmp_path / "nope.grib2"), str(tmp_path))
