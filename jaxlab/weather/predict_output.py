"""What `predict` writes: the CF-1.10 NetCDF of an ensemble and its five PNG folders.

Standard names (CF standard name table): REFC `equivalent_reflectivity_factor` (dBZ; composite,
the column maximum, in `long_name`), 2 m TMP / DPT `air_temperature` / `dew_point_temperature`,
10 m winds `x_wind` / `y_wind` when the GRIB2 says they are grid-relative (HRRR's
`uvRelativeToGrid` = 1) else `eastward_wind` / `northward_wind`, surface CAPE / CIN
`atmosphere_convective_available_potential_energy` / `atmosphere_convective_inhibition`.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib
import numpy as np
import xarray as xr

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab.weather import data, data_grib, plots  # noqa: E402

GRID_MAPPING = "lambert_conformal_conic"
FOLDERS = (
    "01_current_state",
    "02_ensemble_mean",
    "03_ensemble_spread",
    "04_probability_maps",
    "05_sample_members",
)
LONG_NAMES = {
    "refc": "composite reflectivity (column maximum)",
    "t2m": "2 m air temperature",
    "d2m": "2 m dew point temperature",
    "u10": "10 m wind, x component",
    "v10": "10 m wind, y component",
    "cape": "surface-based convective available potential energy",
    "cin": "surface-based convective inhibition",
}


def standard_names(grid: dict[str, Any]) -> dict[str, str]:
    relative = bool(grid.get("uvRelativeToGrid"))
    return {
        "refc": "equivalent_reflectivity_factor",
        "t2m": "air_temperature",
        "d2m": "dew_point_temperature",
        "u10": "x_wind" if relative else "eastward_wind",
        "v10": "y_wind" if relative else "northward_wind",
        "cape": "atmosphere_convective_available_potential_energy",
        "cin": "atmosphere_convective_inhibition",
    }


def stamp(time: np.datetime64) -> str:
    return str(np.datetime64(time, "h")).replace("-", "").replace(":", "")


def grid_mapping_attrs(grid: dict[str, Any]) -> dict[str, Any]:
    """CF `lambert_conformal_conic` attributes from the GRIB2 grid keys."""
    return {
        "grid_mapping_name": "lambert_conformal_conic",
        "standard_parallel": [float(grid["Latin1InDegrees"]), float(grid["Latin2InDegrees"])],
        "longitude_of_central_meridian": float(grid["LoVInDegrees"]),
        "latitude_of_projection_origin": float(grid["LaDInDegrees"]),
        "false_easting": 0.0,
        "false_northing": 0.0,
        "earth_radius": float(grid["earth_radius_m"]),
    }


def dataset(init, members, lead_hours, events, info, stats_file, clipped) -> xr.Dataset:
    """members [L, M, y, x, C] physical units -> the CF dataset (members, mean, spread, probs).

    clipped: per variable, how many member values were clipped to `data.VALID_RANGE`."""
    grid = init["grid"]
    x, y = data_grib.lambert_xy(grid)
    valid = init["time"] + lead_hours.astype("timedelta64[h]")
    coords = {
        "realization": ("realization", np.arange(members.shape[1], dtype=np.int32)),
        "time": ("time", valid.astype("datetime64[ns]")),
        "forecast_reference_time": np.datetime64(init["time"], "ns"),
        "forecast_period": ("time", lead_hours.astype(np.int32)),
        "y": ("y", y),
        "x": ("x", x),
        "latitude": (("y", "x"), init["latitude"].astype(np.float32)),
        "longitude": (("y", "x"), init["longitude"].astype(np.float32)),
    }
    names = standard_names(grid)
    variables: dict[str, Any] = {GRID_MAPPING: ((), np.int32(0), grid_mapping_attrs(grid))}
    mean, spread = members.mean(1), members.std(1, ddof=1)
    for c, name in enumerate(data.VARIABLES):
        attrs = {
            "standard_name": names[name],
            "long_name": LONG_NAMES[name],
            "units": data.UNITS[name],
            "grid_mapping": GRID_MAPPING,
        }
        member_attrs = {
            **attrs,
            "physical_range": list(data.VALID_RANGE[name]),
            "values_clipped_to_physical_range": clipped[name],
        }
        variables[name] = (
            ("realization", "time", "y", "x"),
            np.moveaxis(members[..., c], 1, 0).astype(np.float32),
            member_attrs,
        )
        for suffix, field, long_name, method in (
            ("mean", mean, "ensemble mean", "mean"),
            ("spread", spread, "ensemble standard deviation of", "standard_deviation"),
        ):
            variables[f"{name}_{suffix}"] = (
                ("time", "y", "x"),
                field[..., c].astype(np.float32),
                {**attrs, "long_name": f"{long_name} {attrs['long_name']}",
                 "cell_methods": f"realization: {method}"},
            )  # fmt: skip
    for name, threshold in events:
        c = data.VARIABLES.index(name)
        key = probability_name(name, threshold)
        variables[key] = (
            ("time", "y", "x"),
            (members[..., c] >= threshold).mean(1).astype(np.float32),
            {
                "long_name": f"probability of {LONG_NAMES[name]} >= {threshold:g} "
                f"{data.UNITS[name]}",
                "units": "1",
                "valid_min": 0.0,
                "valid_max": 1.0,
                "grid_mapping": GRID_MAPPING,
                "threshold": threshold,
                "threshold_units": data.UNITS[name],
                "threshold_standard_name": names[name],
                "relative_to_threshold": "greater_than_or_equal_to",
            },
        )
    ds = xr.Dataset(variables, coords=coords)
    _coordinate_attrs(ds)
    ds.attrs = {
        "Conventions": "CF-1.10",
        "title": "HRRR convection ensemble forecast (jaxlab.weather conditional diffusion model)",
        "source": f"jaxlab.weather, checkpoint step {info.get('checkpoint_step')}",
        "initial_condition": ", ".join(init["sources"]),
        "normalisation_statistics": stats_file,
        "history": f"{np.datetime64('now', 's')}Z jaxlab predict",
    }
    return ds


def probability_name(name: str, threshold: float) -> str:
    return f"probability_of_{name}_ge_{threshold:g}".replace(".", "p").replace("-", "m")


def _coordinate_attrs(ds: xr.Dataset) -> None:
    ds["realization"].attrs = {"standard_name": "realization", "long_name": "ensemble member"}
    ds["time"].attrs = {"standard_name": "time", "long_name": "valid time", "axis": "T"}
    ds["forecast_reference_time"].attrs = {"standard_name": "forecast_reference_time"}
    ds["forecast_period"].attrs = {"standard_name": "forecast_period", "units": "hours"}
    ds["y"].attrs = {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"}
    ds["x"].attrs = {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"}
    ds["latitude"].attrs = {"standard_name": "latitude", "units": "degrees_north"}
    ds["longitude"].attrs = {"standard_name": "longitude", "units": "degrees_east"}


def write_netcdf(ds: xr.Dataset, path: str) -> None:
    """zlib-compressed NetCDF4 (h5netcdf); times as hours since the epoch."""
    encoding = {name: {"zlib": True, "complevel": 4} for name in ds.data_vars if ds[name].ndim >= 2}
    hours = "hours since 1970-01-01 00:00:00"
    encoding["time"] = {"units": hours, "calendar": "proleptic_gregorian", "dtype": "int32"}
    encoding["forecast_reference_time"] = {"units": hours, "calendar": "proleptic_gregorian",
                                           "dtype": "int32"}  # fmt: skip
    tmp = f"{path}.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding)
    os.replace(tmp, path)


def _when(init, valid, lead) -> str:
    fmt = "%Y-%m-%d %H:%M UTC"
    i = init.astype("datetime64[s]").item().strftime(fmt)
    v = valid.astype("datetime64[s]").item().strftime(fmt)
    return f"init {i} | valid {v} | lead +{int(lead)} h"


def _map(field, name, title, path, cmap=None, label=None, limits=None, latlon=None) -> str:
    """One map PNG; `latlon` = (latitude, longitude) [y, x] adds latitude / longitude lines."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if name == "refc" and cmap is None:
        im = ax.imshow(field, origin="lower", cmap=plots.REFC_CMAP, norm=plots.REFC_NORM)
    else:
        vmin, vmax = limits or (None, None)
        im = ax.imshow(
            field, origin="lower", cmap=cmap or plots.CMAPS.get(name, "viridis"), vmin=vmin,
            vmax=vmax,
        )  # fmt: skip
    cbar = fig.colorbar(im, ax=ax, shrink=0.85, extend="min" if name == "refc" else "neither")
    cbar.set_label(label or f"{name} [{data.UNITS[name]}]")
    ax.set_title(title, fontsize=8)
    ax.set(xticks=[], yticks=[])
    if latlon is not None:
        plots.graticule(ax, *latlon)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def figures(out: str, ds: xr.Dataset, init: dict, num_members: int) -> list[str]:
    """The five folders; every title carries init time, valid time and lead, every map the
    latitude / longitude lines of the dataset's grid (its `latitude` / `longitude`, from the
    GRIB2 or the store)."""
    latlon = (ds["latitude"].values, ds["longitude"].values)
    dirs = {k: os.path.join(out, k) for k in FOLDERS}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    t0, written = init["time"], []
    now = _when(t0, t0, 0)
    for c, name in enumerate(data.VARIABLES):
        path = os.path.join(dirs["01_current_state"], f"{name}.png")
        written.append(
            _map(init["state"][..., c], name, f"analysis {name}\n{now}", path, latlon=latlon)
        )
        if init["previous"] is not None:
            change = init["state"][..., c] - init["previous"][..., c]
            bound = float(np.abs(change).max()) or 1.0
            path = os.path.join(dirs["01_current_state"], f"{name}_change_1h.png")
            label = f"{name} change [{data.UNITS[name]}]"
            written.append(
                _map(change, name, f"1-h change {name}\n{now}", path, "RdBu_r", label,
                     (-bound, bound), latlon)
            )  # fmt: skip
    probs = [v for v in ds.data_vars if v.startswith("probability_of_")]
    for k, valid in enumerate(ds["time"].values):
        lead = int(ds["forecast_period"].values[k])
        when, tag = _when(t0, valid, lead), f"lead{lead:02d}h"
        for name in data.VARIABLES:
            path = os.path.join(dirs["02_ensemble_mean"], f"{name}_{tag}.png")
            field = ds[f"{name}_mean"].values[k]
            written.append(_map(field, name, f"mean {name}\n{when}", path, latlon=latlon))
            path = os.path.join(dirs["03_ensemble_spread"], f"{name}_{tag}.png")
            label = f"{name} spread [{data.UNITS[name]}]"
            spread = ds[f"{name}_spread"].values[k]
            written.append(
                _map(spread, name, f"spread {name}\n{when}", path, "magma", label, latlon=latlon)
            )
        for key in probs:
            attrs = ds[key].attrs
            title = f"P({key.split('_')[2]} >= {attrs['threshold']:g} {attrs['threshold_units']})"
            path = os.path.join(dirs["04_probability_maps"], f"{key}_{tag}.png")
            field = ds[key].values[k]
            label, limits = "probability", (0, 1)
            written.append(
                _map(field, "prob", f"{title}\n{when}", path, "viridis", label, limits, latlon)
            )
        for m in range(min(num_members, ds.sizes["realization"])):
            path = os.path.join(dirs["05_sample_members"], f"refc_member{m:02d}_{tag}.png")
            field = ds["refc"].values[m, k]
            written.append(_map(field, "refc", f"member {m} refc\n{when}", path, latlon=latlon))
    return written
