"""Writes synthetic GreenEarthNet minicubes: `<root>/<track>/<region>/<cubename>.nc`.

Each cube has the real layout (docs/data.md): dims time (150 daily), lat, lon; coords
latitude_eobs / longitude_eobs; Sentinel-2 bands, masks and `s2_avail`; static land cover and
DEMs with `geom_cls`; all eight E-OBS variables on time. Written as NetCDF4 (HDF5) files with
`config.data.engine`, read back by the reader that runs on the download.

Planted signal (what a forecaster must learn, and why persistence fails):
  - NDVI follows a per-land-cover seasonal bump (peak day, width, amplitude by class), with
    spatially smooth per-pixel offsets, so across the 100 target days NDVI keeps rising or falls;
  - a hot, dry spell (tx up, rr zero, hu down, qq up) in some cubes lowers NDVI with a lag,
    by a class-dependent sensitivity (crops and grass most);
  - reflectances follow from NDVI and a brightness per class; clouds are spatially coherent
    blobs with realistic cover (about half the acquisitions clear), plus shadows; Sentinel-2
    acquires every 5th day (days 4, 9, ...), other days are NaN.

Planted structure for the study (jaxlab/vegetation/study.py), off by default (`Planted()`: the
cubes are then exactly the demo's), each part drawn from its own random stream:
  - weather response (`weather_effect`): NDVI follows the day-to-day temperature anomaly (tx
    minus its centred 21-day mean, the anomaly the model's weather features carry) with a 2-day
    memory, warm spells browning and cool ones greening, by a class-dependent sensitivity. The
    future anomaly is not in the context frames: only a forecaster that reads the target
    period's weather can follow it;
  - sustained trends (`trend`): a per-cube linear drift of NDVI (greening or browning, standard
    deviation `trend` per 100 days, smooth per-pixel strength) that runs through context and
    target alike, so the context shows it and the forecast must carry it on: a level that keeps
    moving away from the last observation, the low-frequency part of the forecast;
  - climatology (`climatology_years` > 0): the mean NDVI of that many simulated past years of
    the same pixels (each year its own phenology shift and level, no weather response, no
    trend), written as `<root>/climatology/<track>/<region>/<cube>.nc` in the official
    prediction layout (`ndvi_pred`, daily), the GreenEarthNet climatology baseline's form.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import xarray as xr

from jaxlab.vegetation import data_features
from jaxlab.vegetation.format import BANDS, CLIMATOLOGY_FOLDER, EOBS, NUM_DAYS

RESPONSE_SCALE = 1.5  # the standard deviation of the raw response for this weather

# Land cover class -> (weight in the map, NDVI base, amplitude, peak day of year, width in days,
# drought sensitivity, brightness NIR + red).
CLASSES = {
    10: (1.0, 0.50, 0.30, 185.0, 60.0, 0.10, 0.38),  # trees
    20: (0.6, 0.30, 0.30, 160.0, 45.0, 0.20, 0.36),  # shrubs
    30: (1.0, 0.30, 0.40, 150.0, 40.0, 0.30, 0.40),  # grassland
    40: (1.2, 0.20, 0.55, 175.0, 32.0, 0.35, 0.42),  # cropland
    50: (0.3, 0.12, 0.03, 180.0, 60.0, 0.00, 0.30),  # built-up
    80: (0.2, -0.25, 0.0, 180.0, 60.0, 0.00, 0.10),  # water
}


@dataclasses.dataclass(frozen=True)
class Planted:
    """The study's planted structure (module docstring); zeros = none (the demo's cubes)."""

    weather_effect: float = 0.0  # NDVI change per standard deviation of the lagged anomaly
    trend: float = 0.0  # standard deviation of the per-cube NDVI drift per 100 days
    climatology_years: int = 0  # past years averaged into the written climatology (0: none)

    @property
    def changes_cubes(self) -> bool:
        return self.weather_effect != 0.0 or self.trend != 0.0


def smooth_field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Standardised Gaussian random field [size, size], correlation length ~ `scale` pixels."""
    noise = rng.normal(size=(size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-0.5 * (2 * np.pi * scale) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    return (field - field.mean()) / (field.std() + 1e-8)


def land_cover_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """Patchy ESA WorldCover codes [size, size]: argmax of weighted smooth fields."""
    codes = np.array(list(CLASSES))
    weights = np.log(np.array([v[0] for v in CLASSES.values()]))
    fields = np.stack([smooth_field(rng, size, size / 10) for _ in codes]) + weights[:, None, None]
    return codes[np.argmax(fields, axis=0)].astype(np.float32)


def weather(rng: np.random.Generator, doy: np.ndarray, spell: tuple[int, int] | None) -> dict:
    """Daily E-OBS series [150] per variable; a hot, dry spell on days [start, stop) if given."""
    n = len(doy)
    season = -np.cos(2 * np.pi * (doy - 20) / 365.0)
    anomaly = np.zeros(n)
    for t in range(1, n):  # AR(1) synoptic weather
        anomaly[t] = 0.8 * anomaly[t - 1] + rng.normal(scale=1.2)
    hot = np.zeros(n)
    if spell is not None:
        hot[spell[0] : spell[1]] = 1.0
    wet = (rng.random(n) < 0.35) & (hot == 0)
    tg = 10.0 + 9.0 * season + anomaly + 5.0 * hot
    return {
        "eobs_tg": tg,
        "eobs_tn": tg - 5.0 + 0.5 * rng.normal(size=n) - 1.0 * hot,
        "eobs_tx": tg + 6.0 + 0.5 * rng.normal(size=n) + 3.0 * hot,
        "eobs_rr": np.where(wet, rng.gamma(0.8, 5.0, size=n), 0.0),
        "eobs_pp": 1015.0 + 4.0 * rng.normal(size=n) + 8.0 * hot,
        "eobs_hu": np.clip(75.0 - 2.0 * anomaly + 10.0 * wet - 25.0 * hot, 20, 100),
        # Radiation is never negative (E-OBS range [0, 1500]): a cold, wet day is clipped.
        "eobs_qq": np.clip(
            150.0 + 100.0 * season + 20.0 * rng.normal(size=n) + 80.0 * hot - 40 * wet, 0, None
        ),
        "eobs_fg": np.abs(3.0 + rng.normal(size=n)),
    }


def drought_stress(tx: np.ndarray, rr: np.ndarray) -> np.ndarray:
    """Lagged stress in [0, ~1]: exponential memory (10 days) of hot-and-dry days."""
    baseline = np.convolve(tx, np.ones(31) / 31, mode="same")
    hot_dry = np.clip((tx - baseline - 1.0) / 3.0, 0, 1) * (rr < 0.5)
    stress = np.zeros_like(tx)
    for t in range(1, len(tx)):
        stress[t] = 0.9 * stress[t - 1] + 0.1 * hot_dry[t] * 1.6
    return np.clip(stress, 0, 1)


def clouds(rng: np.random.Generator, size: int, num_days: int) -> tuple[np.ndarray, np.ndarray]:
    """(cloud, shadow) bool [days, size, size] for the acquisition days (every day here)."""
    kind = rng.choice(3, size=num_days, p=[0.5, 0.25, 0.25])
    cover = np.where(
        kind == 0,
        rng.uniform(0.0, 0.04, num_days),
        np.where(kind == 1, rng.uniform(0.1, 0.6, num_days), rng.uniform(0.85, 1.0, num_days)),
    )
    cloud = np.zeros((num_days, size, size), bool)
    for t in range(num_days):
        field = smooth_field(rng, size, size / 8)
        cloud[t] = field > np.quantile(field, 1.0 - cover[t]) if cover[t] > 0.005 else False
    shadow = np.roll(cloud, (size // 16 + 1, size // 16 + 1), axis=(1, 2)) & ~cloud
    return cloud, shadow


def weather_response(tx: np.ndarray) -> np.ndarray:
    """[days] the day-to-day tx anomaly (tx minus its centred 21-day mean, the anomaly
    `data_features.weather_features` gives the model) with a 2-day exponential memory, scaled
    to about unit standard deviation for the AR(1) weather here."""
    anomaly = tx - data_features.rolling_mean(tx[:, None], 21)[:, 0]
    response = np.zeros_like(anomaly)
    for t in range(1, len(anomaly)):
        response[t] = 0.6 * response[t - 1] + 0.4 * anomaly[t]
    return response / RESPONSE_SCALE


def planted_ndvi(
    rng: np.random.Generator,
    planted: Planted,
    size: int,
    tx: np.ndarray,
    sensitivity: np.ndarray,
) -> np.ndarray:
    """NDVI added by the planted weather response and trend, [days, size, size].

    sensitivity: [size, size] per-pixel drought sensitivity of the class (CLASSES), which also
    scales the weather response (0.3 + 2 x sensitivity: crops most, built-up and water least).
    """
    days = np.arange(len(tx), dtype=np.float64)
    weight = 0.3 + 2.0 * sensitivity
    out = -planted.weather_effect * weight[None] * weather_response(tx)[:, None, None]
    slope = rng.normal(scale=planted.trend)  # NDVI per 100 days, this cube
    strength = np.clip(1.0 + 0.4 * smooth_field(rng, size, size / 6), 0.2, None)
    return out + slope * strength[None] * (days[:, None, None] - days.mean()) / 100.0


def climatology_ndvi(
    rng: np.random.Generator, params: dict[str, np.ndarray], doy: np.ndarray, years: int
) -> np.ndarray:
    """[days, size, size] mean NDVI of `years` simulated past years of the cube's pixels."""
    size = params["base"].shape[0]
    total = np.zeros((len(doy), size, size))
    for _ in range(years):
        level = params["base"] + 0.05 * smooth_field(rng, size, size / 4)
        z = (doy[:, None, None] - params["peak"] - rng.normal(scale=10.0)) / params["width"]
        total += level + params["amp"] * (1.0 + 0.1 * rng.normal()) * np.exp(-0.5 * z**2)
    return np.clip(total / years, -0.9, 0.95)


def make_cube(rng: np.random.Generator, size: int, start: pd.Timestamp) -> xr.Dataset:
    """One synthetic minicube as an xarray Dataset in the GreenEarthNet layout (no planted
    structure: the demo's cubes)."""
    return make_cube_and_climatology(rng, size, start)[0]


def make_cube_and_climatology(
    rng: np.random.Generator,
    size: int,
    start: pd.Timestamp,
    planted: Planted = Planted(),
    planted_rng: np.random.Generator | None = None,
) -> tuple[xr.Dataset, np.ndarray | None]:
    """One synthetic minicube as an xarray Dataset in the GreenEarthNet layout, and its
    climatology NDVI [days, size, size] (None unless `planted.climatology_years`).

    `planted_rng` draws the planted structure (required when `planted` is not all zeros), so
    `rng`'s stream, and with it the cube without the planted parts, is the same either way.
    """
    dates = pd.date_range(start, periods=NUM_DAYS, freq="D")
    doy = dates.day_of_year.to_numpy().astype(np.float64)
    lc = land_cover_map(rng, size)
    params = {k: np.zeros((size, size)) for k in ("base", "amp", "peak", "width", "sens", "bright")}
    for code, (_, base, amp, peak, width, sens, bright) in CLASSES.items():
        where = lc == code
        for key, value in zip(params, (base, amp, peak, width, sens, bright), strict=True):
            params[key][where] = value
    params["base"] += 0.03 * smooth_field(rng, size, 3)
    params["amp"] *= 1.0 + 0.12 * smooth_field(rng, size, 3)
    params["peak"] += 8.0 * smooth_field(rng, size, 4)

    spell = None
    if rng.random() < 0.6:
        first = int(rng.integers(50, 110))
        spell = (first, first + int(rng.integers(15, 35)))
    eobs = weather(rng, doy, spell)
    stress = drought_stress(eobs["eobs_tx"], eobs["eobs_rr"])

    # NDVI [time, lat, lon]: seasonal bump minus the drought response, plus sensor noise.
    z = (doy[:, None, None] - params["peak"]) / params["width"]
    ndvi = params["base"] + params["amp"] * np.exp(-0.5 * z**2)
    ndvi = ndvi - params["sens"] * stress[:, None, None]
    if planted.changes_cubes:
        ndvi = ndvi + planted_ndvi(planted_rng, planted, size, eobs["eobs_tx"], params["sens"])
    climatology = None
    if planted.climatology_years:
        climatology = climatology_ndvi(planted_rng, params, doy, planted.climatology_years)
    ndvi = np.clip(ndvi + 0.01 * rng.normal(size=ndvi.shape), -0.9, 0.95)
    bright = params["bright"] * (1.0 + 0.05 * smooth_field(rng, size, 2))
    nir = bright * (1 + ndvi) / 2
    red = bright * (1 - ndvi) / 2
    blue = 0.6 * red + 0.02
    green = 0.8 * red + 0.03 + 0.05 * np.clip(ndvi, 0, 1)
    refl = np.stack([blue, green, red, nir * np.ones_like(red)])  # [4, time, lat, lon]

    cloud, shadow = clouds(rng, size, NUM_DAYS)
    refl = np.where(cloud[None], 0.45 + 0.05 * rng.random(refl.shape), refl)
    refl = np.where(shadow[None], 0.35 * refl, refl)
    acquired = (np.arange(NUM_DAYS) % 5 == 4) & (rng.random(NUM_DAYS) > 0.03)
    nan_days = ~acquired[:, None, None]
    mask = np.where(cloud, 1.0, np.where(shadow, 2.0, 0.0))
    scl_clear = np.where(lc == 80, 6.0, np.where(ndvi > 0.3, 4.0, 5.0))
    scl = np.where(cloud, 9.0, np.where(shadow, 3.0, scl_clear))

    def daily(values):
        return np.where(nan_days, np.nan, values).astype(np.float32)

    dims3 = ("time", "lat", "lon")
    data_vars = {band: (dims3, daily(refl[i])) for i, band in enumerate(BANDS)}
    data_vars["s2_mask"] = (dims3, daily(mask))
    data_vars["s2_dlmask"] = (dims3, daily(mask))
    data_vars["s2_SCL"] = (dims3, daily(scl))
    data_vars["s2_avail"] = (("time",), acquired.astype(np.float32))
    dem = 300.0 + 80.0 * smooth_field(rng, size, size / 4)
    data_vars["esawc_lc"] = (("lat", "lon"), lc)
    data_vars["cop_dem"] = (("lat", "lon"), dem.astype(np.float32))
    data_vars["nasa_dem"] = (("lat", "lon"), (dem + rng.normal(size=dem.shape)).astype(np.float32))
    data_vars["alos_dem"] = (("lat", "lon"), (dem + rng.normal(size=dem.shape)).astype(np.float32))
    geom = np.clip(np.round(5 + 2 * smooth_field(rng, size, size / 6)), 1, 10)
    data_vars["geom_cls"] = (("lat", "lon"), geom.astype(np.float32))
    for name in EOBS:
        data_vars[name] = (("time",), eobs[name].astype(np.float32))

    lat0, lon0 = rng.uniform(44, 54), rng.uniform(2, 16)
    step = 20.0 / 111_000  # 20 m pixels in degrees
    coords = {
        "time": dates.to_numpy(),
        "lat": (lat0 - step * np.arange(size)).astype(np.float64),
        "lon": (lon0 + step * np.arange(size)).astype(np.float64),
        "latitude_eobs": np.float64(round(lat0 / 0.1) * 0.1),
        "longitude_eobs": np.float64(round(lon0 / 0.1) * 0.1),
    }
    return xr.Dataset(data_vars, coords=coords), climatology


def cube_path(root: str, track: str, region: str, start: pd.Timestamp, index: int) -> str:
    end = start + pd.Timedelta(days=NUM_DAYS - 1)
    name = f"{region}_{start:%Y-%m-%d}_{end:%Y-%m-%d}_{index:04d}.nc"
    return os.path.join(root, track, region, name)


def climatology_path(root: str, cube: str) -> str:
    """Where the climatology of the cube file `cube` (under `root`) is written."""
    track_region_name = os.path.relpath(cube, root)
    return os.path.join(root, CLIMATOLOGY_FOLDER, track_region_name)


def write_netcdf(ds: xr.Dataset, path: str, engine: str) -> None:
    """`ds` to `path` atomically (a temporary name, then a rename: processes of a multi-host job
    may race), zlib level 1."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encoding = {name: {"zlib": True, "complevel": 1} for name in ds.data_vars}
    tmp = f"{path}.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine=engine, encoding=encoding)
    os.replace(tmp, path)


def write_dataset(
    root: str,
    *,
    cubes: tuple[tuple[str, int], ...],
    regions: tuple[str, ...],
    size: int,
    seed: int,
    engine: str = "netcdf4",
    planted: Planted = Planted(),
) -> list[str]:
    """Writes `count` cubes per (track, count); existing files are kept. Returns all paths.

    With `planted.climatology_years`, also each cube's climatology (`climatology_path`)."""
    paths = []
    for t, (track, count) in enumerate(cubes):
        rng = np.random.default_rng([seed, t])
        for i in range(count):
            year = int(rng.integers(2017, 2022))
            start = pd.Timestamp(year, 1, 1) + pd.Timedelta(days=int(rng.integers(55, 150)))
            region = regions[i % len(regions)]
            path = cube_path(root, track, region, start, i)
            cube_rng = np.random.default_rng([seed, t, i])
            planted_rng = np.random.default_rng([seed, t, i, 1])
            paths.append(path)
            clim_path = climatology_path(root, path)
            if os.path.exists(path) and (
                not planted.climatology_years or os.path.exists(clim_path)
            ):
                continue
            ds, climatology = make_cube_and_climatology(cube_rng, size, start, planted, planted_rng)
            if climatology is not None:
                clim = xr.Dataset(
                    {"ndvi_pred": (("time", "lat", "lon"), climatology.astype(np.float32))},
                    coords={k: ds[k].values for k in ("time", "lat", "lon")},
                )
                write_netcdf(clim, clim_path, engine)
            write_netcdf(ds, path, engine)
    return paths
