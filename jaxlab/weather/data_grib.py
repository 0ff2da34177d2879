"""HRRR GRIB2 reader: the seven surface fields selected by their GRIB2 codes, read with ecCodes.

A field is the message whose (discipline, parameterCategory, parameterNumber,
typeOfFirstFixedSurface, level) matches, instantaneous (stepType "instant"), with no second fixed
surface. Short names are never used, so a file whose ecCodes tables name REFC `unknown` reads the
same. `scan_grib` reads only the message headers (no values); `read_grib` then decodes exactly the
seven matched messages by their byte offsets, so a 170-message NOAA file costs seven decodes.

    refc   (0, 16, 196)  entire atmosphere (type 10; 200 accepted)   dBZ
    t2m    (0, 0, 0)     2 m above ground (type 103, level 2)         K
    d2m    (0, 0, 6)     2 m above ground                             K
    u10    (0, 2, 2)     10 m above ground (type 103, level 10)       m s-1
    v10    (0, 2, 3)     10 m above ground                            m s-1
    cape   (0, 7, 6)     surface (type 1)                             J kg-1
    cin    (0, 7, 7)     surface                                      J kg-1

The pressure-layer CAPE/CIN (type 108) and other levels never match. Errors name the file and the
field: a field absent (`MissingFieldError`), present twice (`DuplicateFieldError`), fields on
different grids, an empty or truncated file, missing (bitmap) or non-finite points, values outside
`VALID_RANGE`. The valid time comes from the content (validityDate / validityTime), never the name.
"""

from __future__ import annotations

import os
from typing import Any

import eccodes
import numpy as np

VARIABLES = ("refc", "t2m", "d2m", "u10", "v10", "cape", "cin")
UNITS = {
    "refc": "dBZ",
    "t2m": "K",
    "d2m": "K",
    "u10": "m s-1",
    "v10": "m s-1",
    "cape": "J kg-1",
    "cin": "J kg-1",
}
# name: ((discipline, category, number), accepted typeOfFirstFixedSurface, level).
FIELDS = {
    "refc": ((0, 16, 196), (10, 200), 0),
    "t2m": ((0, 0, 0), (103,), 2),
    "d2m": ((0, 0, 6), (103,), 2),
    "u10": ((0, 2, 2), (103,), 10),
    "v10": ((0, 2, 3), (103,), 10),
    "cape": ((0, 7, 6), (1,), 0),
    "cin": ((0, 7, 7), (1,), 0),
}
# Plausible physical ranges; a value outside is reported (file, variable, range), not trained on.
VALID_RANGE = {
    "refc": (-40.0, 90.0),
    "t2m": (180.0, 340.0),
    "d2m": (150.0, 330.0),
    "u10": (-100.0, 100.0),
    "v10": (-100.0, 100.0),
    "cape": (0.0, 15000.0),
    "cin": (-5000.0, 10.0),
}
# The grid keys every field of every file must share (a file on another grid is rejected).
GRID_KEYS = (
    "gridType",
    "Nx",
    "Ny",
    "latitudeOfFirstGridPointInDegrees",
    "longitudeOfFirstGridPointInDegrees",
    "LaDInDegrees",
    "LoVInDegrees",
    "Latin1InDegrees",
    "Latin2InDegrees",
    "DxInMetres",
    "DyInMetres",
    "iScansNegatively",
    "jScansPositively",
    "shapeOfTheEarth",
)
# Earth radius (m) of GRIB2 code table 3.2 spherical shapes; other shapes read the `radius` key.
EARTH_RADIUS = {0: 6367470.0, 6: 6371229.0, 8: 6371200.0}
MISSING_CODE = 255  # typeOfSecondFixedSurface when there is no second surface


class GribError(ValueError):
    """An unreadable or malformed GRIB2 file (the message names the file)."""


class MissingFieldError(GribError):
    """A GRIB2 file lacks one of the seven fields (the message names file and field)."""


class DuplicateFieldError(GribError):
    """A GRIB2 file holds one of the seven fields in more than one message."""


def _get(h, key: str, kind=None):
    try:
        return eccodes.codes_get(h, key, ktype=kind) if kind else eccodes.codes_get(h, key)
    except eccodes.KeyValueNotFoundError:
        return None


def _match(h) -> str | None:
    """The field name a message is, by its codes, or None."""
    code = tuple(_get(h, k, int) for k in ("discipline", "parameterCategory", "parameterNumber"))
    surface = _get(h, "typeOfFirstFixedSurface", int)
    second = _get(h, "typeOfSecondFixedSurface", int)
    if second not in (None, MISSING_CODE) or _get(h, "stepType", str) not in (None, "instant"):
        return None
    for name, (want, surfaces, level) in FIELDS.items():
        if code == want and surface in surfaces and _get(h, "level", int) == level:
            return name
    return None


def _grid(h) -> dict[str, Any]:
    grid = {k: _get(h, k) for k in GRID_KEYS}
    shape = grid["shapeOfTheEarth"]
    radius = _get(h, "radius", float)
    grid["earth_radius_m"] = float(radius) if radius else EARTH_RADIUS.get(shape)
    grid["uvRelativeToGrid"] = _get(h, "uvRelativeToGrid", int)
    return grid


def _valid_time(h) -> np.datetime64:
    date, hhmm = _get(h, "validityDate", int), _get(h, "validityTime", int)
    text = f"{date:08d}"
    return np.datetime64(f"{text[:4]}-{text[4:6]}-{text[6:]}T{hhmm // 100:02d}:{hhmm % 100:02d}")


def scan_grib(path: str) -> dict[str, Any]:
    """Headers only: {"path", "time" (valid, datetime64[ns]), "step_hours", "grid", "offsets"}.

    `offsets` maps each of the seven fields to its message's byte offset. Raises naming the file
    (and field) for a missing file, an empty or truncated file, a missing or repeated field,
    fields on different grids or at different valid times.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GRIB2 file.")
    found: dict[str, list] = {}
    count = 0
    with open(path, "rb") as f:
        while True:
            try:
                h = eccodes.codes_grib_new_from_file(f, headers_only=True)
            except eccodes.GribInternalError as e:
                raise GribError(
                    f"{path}: GRIB2 message {count + 1} unreadable ({e}); the file is truncated "
                    "or not GRIB2."
                ) from e
            if h is None:
                break
            count += 1
            try:
                name = _match(h)
                if name is not None:
                    info = (_get(h, "offset", int), _valid_time(h), _get(h, "step", int), _grid(h))
                    found.setdefault(name, []).append((count, *info))
            finally:
                eccodes.codes_release(h)
    if count == 0:
        raise GribError(f"{path}: no GRIB2 messages (an empty file, or not GRIB2).")
    for name in VARIABLES:
        code, surfaces, level = FIELDS[name]
        where = f"GRIB2 code {code}, typeOfFirstFixedSurface {surfaces[0]}, level {level}"
        if name not in found:
            raise MissingFieldError(f"{path}: field {name!r} ({where}) not found in {count} msgs.")
        if len(found[name]) > 1:
            numbers = [m[0] for m in found[name]]
            raise DuplicateFieldError(
                f"{path}: field {name!r} ({where}) appears in messages {numbers}; expected one."
            )
    first = found[VARIABLES[0]][0]
    for name in VARIABLES[1:]:
        _, _, time, _, grid = found[name][0]
        if grid != first[4]:
            diff = {k: (first[4][k], grid[k]) for k in grid if grid[k] != first[4][k]}
            raise GribError(f"{path}: field {name!r} is on another grid than refc: {diff}.")
        if time != first[2]:
            raise GribError(f"{path}: field {name!r} is valid at {time}, refc at {first[2]}.")
    return {
        "path": path,
        "time": first[2].astype("datetime64[ns]"),
        "step_hours": int(first[3] or 0),
        "grid": first[4],
        "offsets": {name: found[name][0][1] for name in VARIABLES},
    }


def _decode(f, path: str, name: str, offset: int, shape: tuple[int, int], coords: bool):
    f.seek(offset)
    h = eccodes.codes_grib_new_from_file(f)
    if h is None:
        raise GribError(f"{path}: field {name!r}: no message at byte {offset} (file changed?).")
    try:
        missing = _get(h, "numberOfMissing", int) or 0
        if missing:
            raise GribError(
                f"{path}: field {name!r} has {missing} missing (bitmap) points; expected a value "
                "at every grid point."
            )
        values = eccodes.codes_get_values(h).reshape(shape).astype(np.float32)
        lat_lon = None
        if coords:
            lat = eccodes.codes_get_array(h, "latitudes").reshape(shape).astype(np.float32)
            lon = eccodes.codes_get_array(h, "longitudes").reshape(shape).astype(np.float32)
            lat_lon = (lat, lon)
    except eccodes.GribInternalError as e:
        raise GribError(f"{path}: field {name!r} cannot be decoded ({e}).") from e
    finally:
        eccodes.codes_release(h)
    return values, lat_lon


def check_values(path: str, name: str, values: np.ndarray) -> None:
    """Raises naming file and field for non-finite values or values outside `VALID_RANGE`."""
    finite = np.isfinite(values)
    if not finite.all():
        raise GribError(f"{path}: field {name!r} has {int((~finite).sum())} non-finite values.")
    lo, hi = VALID_RANGE[name]
    bad = (values < lo) | (values > hi)
    if bad.any():
        raise GribError(
            f"{path}: field {name!r} has {int(bad.sum())} values outside [{lo}, {hi}] "
            f"{UNITS[name]} (e.g. {values[bad].ravel()[0]:g})."
        )


def read_grib(path: str, coords: bool = True, header: dict | None = None) -> dict[str, Any]:
    """One HRRR surface file -> {"time", "grid", the 7 fields [y, x] float32 and, with `coords`,
    2-D "latitude" / "longitude"}. `header` is `scan_grib(path)` when the caller has it."""
    header = header or scan_grib(path)
    grid = header["grid"]
    shape = (int(grid["Ny"]), int(grid["Nx"]))
    out: dict[str, Any] = {"time": header["time"], "grid": grid, "step_hours": header["step_hours"]}
    with open(path, "rb") as f:
        for i, name in enumerate(VARIABLES):
            want = coords and i == 0
            values, lat_lon = _decode(f, path, name, header["offsets"][name], shape, want)
            check_values(path, name, values)
            out[name] = values
            if lat_lon is not None:
                out["latitude"], out["longitude"] = lat_lon
    return out


def grib_paths(directory: str) -> list[str]:
    """Every `*.grib2` file under `directory` (any name and depth; times come from the content)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no such folder of GRIB2 files.")
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.join(root, f) for f in files if f.endswith(".grib2")]
    return sorted(found)


def lambert_xy(grid: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Projection coordinates x [Nx], y [Ny] (m) of a Lambert conformal grid (the fields' column
    and row order), with the projection's origin at (LaD, LoV) on a sphere of `earth_radius_m`.

    The spherical Lambert conformal conic (Snyder 1987, eqs. 15-1 to 15-4). Dx / Dy are true at
    LaD (GRIB2 template 3.30), so the projected spacing is Dx / k(LaD).
    """
    if grid["gridType"] != "lambert":
        raise GribError(f"grid type {grid['gridType']!r}: only Lambert conformal is supported.")
    rad = np.pi / 180.0
    radius = float(grid["earth_radius_m"])
    lat1, lat2 = grid["Latin1InDegrees"] * rad, grid["Latin2InDegrees"] * rad
    lat0, lon0 = grid["LaDInDegrees"] * rad, grid["LoVInDegrees"] * rad

    def t(phi):
        return np.tan(np.pi / 4 + phi / 2)

    if abs(lat1 - lat2) < 1e-10:
        n = np.sin(lat1)
    else:
        n = np.log(np.cos(lat1) / np.cos(lat2)) / np.log(t(lat2) / t(lat1))
    big_f = np.cos(lat1) * t(lat1) ** n / n

    def rho(phi):
        return radius * big_f / t(phi) ** n

    phi = grid["latitudeOfFirstGridPointInDegrees"] * rad
    lam = grid["longitudeOfFirstGridPointInDegrees"] * rad
    dlam = (lam - lon0 + np.pi) % (2 * np.pi) - np.pi
    x0 = rho(phi) * np.sin(n * dlam)
    y0 = rho(lat0) - rho(phi) * np.cos(n * dlam)
    k = rho(lat0) * n / (radius * np.cos(lat0))  # scale factor at LaD (1 for a tangent cone)
    # Columns go east and rows north of the first point whatever the scanning-mode flags: ecCodes
    # 2.50's Lambert iterator (the `latitudes` / `longitudes` we store) ignores them too, and
    # HRRR scans +i +j anyway; tests check x / y against ecCodes' latitudes and longitudes.
    x = x0 + np.arange(int(grid["Nx"])) * grid["DxInMetres"] / k
    y = y0 + np.arange(int(grid["Ny"])) * grid["DyInMetres"] / k
    return x, y
