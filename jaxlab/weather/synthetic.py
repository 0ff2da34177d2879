"""Writes synthetic HRRR surface files: real GRIB2 (ecCodes) on a Lambert conformal grid.

Layout and names follow NOAA's archive, `<dir>/hrrr.YYYYMMDD/conus/hrrr.tHHz.wrfsfcf00.grib2`, one
analysis file per hour. Each file holds the messages `prepare_weather.py` reads (REFC, TMP 2 m,
DPT 2 m, UGRD/VGRD 10 m, CAPE/CIN surface) plus the pressure-layer CAPE/CIN (90-0 and 255-0 mb)
that real files carry, so the reader must select the surface level.

The planted dynamics, hourly (`simulate`):
- 10 m wind: a mean flow (about 4 m/s, direction drawn once) plus a domain-wide departure and a
  smooth spatial pattern, both first-order autoregressive in time (`WIND_*`): a stationary
  process, so the training and the held-out hours share one distribution of hourly changes, and
  its changes vary in space (the former wind turned and sped up as sinusoids of absolute time with
  60 h and 37 h periods: a tendency the state does not reveal, seen over less than one period in
  training, so held-out u10/v10 changes sat outside every member).
- Every field's anomaly pattern and every convective cell *advect with the 10 m wind*
  (semi-Lagrangian, bilinear, on a periodic domain). This is the signal persistence misses and
  the model can learn. The patterns (temperature, moisture, CAPE, CIN) are unit-std smooth fields,
  first-order autoregressive in time (`ANOMALY_AR`: advected, then partly renewed by fresh smooth
  noise, rescaled to unit spatial std), so they stay as strong on the last day as on the first.
  (Advected alone with the upstream edge copied in, the former patterns were blown out of the
  domain and smeared by the interpolation within 3-4 days: CIN was spatially uniform and its
  night-time change exactly zero over the whole held-out period, a regime the training days
  barely showed, and every grid point of a case then shared one error.)
- Convective cells (REFC, dBZ) initiate at random where CAPE is high and CIN weak, grow, mature and
  decay over a few hours; they consume CAPE and cool the 2 m air (cold pools).
- T2M/D2M follow a diurnal cycle plus advected anomalies; CAPE peaks in the afternoon, CIN
  strengthens at night.
Random initiation and life cycles make the next hour genuinely uncertain: a calibrated ensemble
has spread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import eccodes
import numpy as np
from absl import logging
from scipy import ndimage

# (short name, discipline, category, number, typeOfFirstFixedSurface, level): the HRRR messages.
# typeOfFirstFixedSurface: 10 entire atmosphere, 103 height above ground (m), 1 surface.
MESSAGES = (
    ("refc", 0, 16, 196, 10, 0),
    ("t2m", 0, 0, 0, 103, 2),
    ("d2m", 0, 0, 6, 103, 2),
    ("u10", 0, 2, 2, 103, 10),
    ("v10", 0, 2, 3, 103, 10),
    ("cape", 0, 7, 6, 1, 0),
    ("cin", 0, 7, 7, 1, 0),
)
# Pressure-layer CAPE/CIN (type 108, pressure difference from ground, Pa): top and bottom.
LAYERS_PA = ((9000, 0), (25500, 0))
# HRRR's CONUS Lambert grid (first point at the south-west corner).
LAMBERT = dict(lat0=21.138123, lon0=237.280472, lad=38.5, lov=262.5, latin1=38.5, latin2=38.5)
FULL_SHAPE = (1059, 1799)
REFC_NO_ECHO = -10.0  # dBZ written where there is no echo
# Wind process: hourly AR(1) coefficient and innovation std (m/s) of the domain-wide departure
# from the mean flow; AR(1) coefficient of the spatial pattern (amplitude WIND_PATTERN m/s).
WIND_MEAN_SPEED, WIND_AR, WIND_INNOVATION = 4.0, 0.95, 0.15
WIND_PATTERN, WIND_PATTERN_AR = 0.8, 0.9
# Hourly AR(1) coefficient of the unit-std anomaly patterns (T2M, D2M, CAPE, CIN): the fresh part
# sqrt(1 - ANOMALY_AR^2) = 0.14 of a pattern per hour is the local change the state cannot tell.
ANOMALY_AR = 0.99


def file_path(directory: str, time: dt.datetime, forecast_hour: int = 0) -> str:
    day = time.strftime("%Y%m%d")
    name = f"hrrr.t{time.hour:02d}z.wrfsfcf{forecast_hour:02d}.grib2"
    return os.path.join(directory, f"hrrr.{day}", "conus", name)


def write_message(f, values: np.ndarray, *, time: dt.datetime, dx_m: float, code: tuple) -> None:
    """Appends one GRIB2 message of `values` [Ny, Nx] (south to north) to the open file `f`."""
    discipline, category, number, surface, level = code[:5]
    second = code[5] if len(code) > 5 else None
    ny, nx = values.shape
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        eccodes.codes_set(h, "centre", 7)  # NCEP: makes the local REFC parameter resolve
        eccodes.codes_set(h, "dataDate", int(time.strftime("%Y%m%d")))
        eccodes.codes_set(h, "dataTime", time.hour * 100)
        eccodes.codes_set(h, "gridDefinitionTemplateNumber", 30)  # Lambert conformal
        eccodes.codes_set(h, "Nx", nx)
        eccodes.codes_set(h, "Ny", ny)
        eccodes.codes_set(h, "latitudeOfFirstGridPointInDegrees", LAMBERT["lat0"])
        eccodes.codes_set(h, "longitudeOfFirstGridPointInDegrees", LAMBERT["lon0"])
        eccodes.codes_set(h, "LaDInDegrees", LAMBERT["lad"])
        eccodes.codes_set(h, "LoVInDegrees", LAMBERT["lov"])
        eccodes.codes_set(h, "Latin1InDegrees", LAMBERT["latin1"])
        eccodes.codes_set(h, "Latin2InDegrees", LAMBERT["latin2"])
        eccodes.codes_set(h, "DxInMetres", float(dx_m))
        eccodes.codes_set(h, "DyInMetres", float(dx_m))
        eccodes.codes_set(h, "discipline", discipline)
        eccodes.codes_set(h, "parameterCategory", category)
        eccodes.codes_set(h, "parameterNumber", number)
        eccodes.codes_set(h, "typeOfFirstFixedSurface", surface)
        if second is None:
            eccodes.codes_set(h, "level", level)
        else:  # a layer between two pressure differences from the ground
            eccodes.codes_set(h, "scaleFactorOfFirstFixedSurface", 0)
            eccodes.codes_set(h, "scaledValueOfFirstFixedSurface", level)
            eccodes.codes_set(h, "typeOfSecondFixedSurface", surface)
            eccodes.codes_set(h, "scaleFactorOfSecondFixedSurface", 0)
            eccodes.codes_set(h, "scaledValueOfSecondFixedSurface", second)
        eccodes.codes_set(h, "forecastTime", 0)
        eccodes.codes_set(h, "bitsPerValue", 16)
        eccodes.codes_set_values(h, values.astype(np.float64).ravel())
        eccodes.codes_write(h, f)
    finally:
        eccodes.codes_release(h)


def write_file(
    path: str,
    fields: dict[str, np.ndarray],
    time: dt.datetime,
    dx_m: float,
    skip: tuple[str, ...] = (),
) -> None:
    """One HRRR-like file: the seven fields, then the layer CAPE/CIN. `skip` omits fields."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for name, *code in MESSAGES:
            if name not in skip:
                write_message(f, fields[name], time=time, dx_m=dx_m, code=tuple(code))
        for top, bottom in LAYERS_PA:
            # Layer values differ from the surface ones, so selecting the wrong level is visible.
            write_message(
                f, 0.5 * fields["cape"], time=time, dx_m=dx_m, code=(0, 7, 6, 108, top, bottom)
            )
            write_message(
                f, 0.5 * fields["cin"], time=time, dx_m=dx_m, code=(0, 7, 7, 108, top, bottom)
            )
    os.replace(tmp, path)


@dataclasses.dataclass
class Cell:
    y: float
    x: float
    peak: float  # dBZ at maturity
    radius: float  # grid cells
    age: float  # hours
    lifetime: float  # hours


def _smooth_noise(rng, shape, scale):
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=scale, mode="wrap")
    return field / (field.std() + 1e-9)


def _advect(field, u_cells, v_cells):
    """Semi-Lagrangian step: value at p comes from p - (v, u) (cells per hour, y up, x right), on
    a periodic domain (the smooth patterns are periodic: `_smooth_noise` wraps)."""
    ny, nx = field.shape
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    return ndimage.map_coordinates(field, [yy - v_cells, xx - u_cells], order=1, mode="grid-wrap")


def _evolve_pattern(pattern, u_cells, v_cells, rng, scale):
    """One hour of a unit-std anomaly pattern [Ny, Nx]: advect, renew a part (AR(1),
    `ANOMALY_AR`), rescale to unit spatial std (undoes the interpolation's smoothing)."""
    fresh = _smooth_noise(rng, pattern.shape, scale)
    moved = ANOMALY_AR * _advect(pattern, u_cells, v_cells) + np.sqrt(1 - ANOMALY_AR**2) * fresh
    return moved / (moved.std() + 1e-9)


def _cell_intensity(cell: Cell) -> float:
    """Life cycle: grows over the first third of its life, then decays; in [0, 1]."""
    phase = cell.age / cell.lifetime
    return float(np.clip(3 * phase, 0, 1) if phase < 1 / 3 else np.clip(1.5 * (1 - phase), 0, 1))


def simulate(shape: tuple[int, int], num_times: int, *, dx_m: float, seed: int):
    """Hourly fields {name: [T, Ny, Nx] float32} in physical units (K, m/s, J/kg, dBZ)."""
    ny, nx = shape
    rng = np.random.default_rng(seed)
    scale = max(min(ny, nx) / 8, 1.0)
    # Unit-std anomaly patterns: temperature, moisture, CAPE, CIN (see `_evolve_pattern`).
    patterns = {k: _smooth_noise(rng, shape, scale) for k in ("temp", "moist", "cape", "cin")}
    wind_pattern_u = _smooth_noise(rng, shape, 2 * scale)
    wind_pattern_v = _smooth_noise(rng, shape, 2 * scale)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    lat_gradient = -4.0 * (yy / ny - 0.5)  # warmer to the south
    cells: list[Cell] = []
    out = {name: np.zeros((num_times, ny, nx), np.float32) for name, *_ in MESSAGES}
    theta0 = rng.uniform(0, 2 * np.pi)
    mean_u, mean_v = WIND_MEAN_SPEED * np.cos(theta0), WIND_MEAN_SPEED * np.sin(theta0)
    dep_u, dep_v = 0.0, 0.0  # domain-wide departure from the mean flow (m/s)
    refresh = np.sqrt(1.0 - WIND_PATTERN_AR**2)
    for t in range(num_times):
        hour = t % 24
        # Wind: mean flow + AR(1) departure + AR(1) smooth pattern (stationary in time).
        dep_u = WIND_AR * dep_u + WIND_INNOVATION * rng.normal()
        dep_v = WIND_AR * dep_v + WIND_INNOVATION * rng.normal()
        wind_pattern_u = WIND_PATTERN_AR * wind_pattern_u + refresh * _smooth_noise(
            rng, shape, scale
        )
        wind_pattern_v = WIND_PATTERN_AR * wind_pattern_v + refresh * _smooth_noise(
            rng, shape, scale
        )
        u = mean_u + dep_u + WIND_PATTERN * wind_pattern_u
        v = mean_v + dep_v + WIND_PATTERN * wind_pattern_v
        u_cells, v_cells = u * 3600.0 / dx_m, v * 3600.0 / dx_m
        day = max(0.0, np.sin(2 * np.pi * (hour - 12) / 24.0 + np.pi / 2))  # peak 12 UTC
        # Advect the anomaly patterns and the cells with the current wind.
        patterns = {
            k: _evolve_pattern(p, u_cells, v_cells, rng, scale) for k, p in patterns.items()
        }
        temp_anom, moist_anom = 2.0 * patterns["temp"], 2.0 * patterns["moist"]
        cape_pattern = np.clip(0.6 + 0.5 * patterns["cape"], 0.1, None)  # no CAPE-free hole
        cin_pattern = np.clip(1.0 + 0.5 * patterns["cin"], 0.2, None)
        for c in cells:
            iy, ix = int(np.clip(round(c.y), 0, ny - 1)), int(np.clip(round(c.x), 0, nx - 1))
            c.y += v_cells[iy, ix]
            c.x += u_cells[iy, ix]
            c.age += 1.0
        cells = [c for c in cells if c.age < c.lifetime and -5 < c.y < ny + 5 and -5 < c.x < nx + 5]
        cape = 2500.0 * cape_pattern * (0.25 + 0.75 * day)
        cin = -(15.0 + 120.0 * (1.0 - day)) * cin_pattern
        # Initiation where CAPE is high and CIN weak.
        eligible = (cape > 1000.0) & (cin > -75.0)
        num_new = rng.poisson(0.002 * eligible.sum())
        if num_new and eligible.any():
            flat = np.flatnonzero(eligible)
            for idx in rng.choice(flat, size=num_new):
                cy, cx = divmod(int(idx), nx)
                cells.append(
                    Cell(
                        y=cy + rng.uniform(-0.5, 0.5),
                        x=cx + rng.uniform(-0.5, 0.5),
                        peak=rng.uniform(40.0, 58.0),
                        radius=rng.uniform(3.0, 4.5),
                        age=0.0,
                        lifetime=rng.uniform(8.0, 14.0),
                    )
                )
        intensity = np.zeros(shape)
        refc = np.full(shape, REFC_NO_ECHO)
        for c in cells:
            a = _cell_intensity(c)
            blob = np.exp(-((yy - c.y) ** 2 + (xx - c.x) ** 2) / (2 * c.radius**2))
            intensity = np.maximum(intensity, a * blob)
            refc = np.maximum(refc, REFC_NO_ECHO + (c.peak - REFC_NO_ECHO) * a * blob)
        cape = cape * (1.0 - 0.8 * intensity)
        t2m = 295.0 + 6.0 * day + lat_gradient + temp_anom - 4.0 * intensity
        d2m = t2m - (6.0 + 3.0 * day - moist_anom).clip(0.5, None)
        fields = {
            "refc": refc,
            "t2m": t2m,
            "d2m": d2m,
            "u10": u,
            "v10": v,
            "cape": cape,
            "cin": cin,
        }
        for name, value in fields.items():
            out[name][t] = value + (0.1 * rng.normal(size=shape) if name in ("t2m", "d2m") else 0)
    return out


def write_dataset(
    directory: str,
    *,
    shape: tuple[int, int],
    num_times: int,
    dx_m: float,
    start: str = "2024-06-01T00",
    seed: int = 0,
) -> list[str]:
    """Writes `num_times` hourly analysis files (idempotent: existing files are kept)."""
    t0 = dt.datetime.fromisoformat(start)
    times = [t0 + dt.timedelta(hours=i) for i in range(num_times)]
    paths = [file_path(directory, t) for t in times]
    if all(os.path.exists(p) for p in paths):
        return paths
    fields = simulate(shape, num_times, dx_m=dx_m, seed=seed)
    for i, (time, path) in enumerate(zip(times, paths, strict=True)):
        write_file(path, {k: v[i] for k, v in fields.items()}, time, dx_m)
    logging.info("Wrote %d synthetic HRRR GRIB2 files %s under %s", num_times, shape, directory)
    return paths
