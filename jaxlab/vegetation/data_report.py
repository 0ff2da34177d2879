"""Range / NaN / cloud-fraction report of GreenEarthNet minicubes, per variable and track.

The library half of `scripts/check_vegetation_data.py`: `check_track` samples up to `max_cubes`
cubes of a track (evenly spaced), runs the reader's checks on each (missing variable, wrong dims,
wrong size, reflectance scale) and accumulates per variable min / max / mean / NaN fraction, plus
the fraction of 5-daily frames with a Sentinel-2 acquisition, the clear fraction (`s2_mask` == 0)
of acquired pixels, and the official validity fraction (`s2_dlmask` < 1 and SCL in the clear
classes) of the frames. The per-cube checks themselves are `data_checks.py` (which the reader
runs on every cube); this module only summarises a whole track (`jaxlab check-data`).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from jaxlab.vegetation import data, metrics
from jaxlab.vegetation.format import VARIABLES


class Running:
    """Min / max / sum / count / NaN count of one variable over many cubes."""

    def __init__(self):
        self.min, self.max, self.sum = np.inf, -np.inf, 0.0
        self.count, self.nan, self.total = 0, 0, 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        finite = values[np.isfinite(values)]
        self.total += values.size
        self.nan += values.size - finite.size
        if finite.size:
            self.min = min(self.min, float(finite.min()))
            self.max = max(self.max, float(finite.max()))
            self.sum += float(finite.sum())
            self.count += finite.size

    def report(self) -> dict[str, float | None]:
        return {
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "mean": self.sum / self.count if self.count else None,
            "nan_fraction": self.nan / max(self.total, 1),
        }


def check_track(
    root: str, track: str, config: ml_collections.ConfigDict, max_cubes: int = 100
) -> dict[str, Any]:
    """The report of `<root>/<track>`; `failed` counts cubes the reader rejects (first 10 errors
    in `errors`). Variables a cube lacks are only an error when the reader needs them."""
    paths = data.list_cubes(root, track)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(max_cubes, len(paths))).astype(int))
    stats = {name: Running() for name in VARIABLES}
    clear, valid, acquired = Running(), Running(), Running()
    errors = []
    d = config.data
    for i in picks:
        path = paths[int(i)]
        try:
            with data.open_cube(path, d.engine) as ds:
                data.check_cube(ds, path, config)
                for name in VARIABLES:
                    if name in ds.variables:
                        stats[name].add(ds[name].values)
                frames = ds.isel(time=slice(d.first_frame, None, d.frame_stride))
                mask = frames["s2_mask"].values
                acquired.add(np.isfinite(mask).any(axis=(1, 2)))
                clear.add(mask[np.isfinite(mask)] == 0)
                _, ok = metrics.target_ndvi(
                    frames["s2_B8A"].values, frames["s2_B04"].values,
                    frames["s2_dlmask"].values, frames["s2_SCL"].values,
                )  # fmt: skip
                valid.add(ok)
        except (data.CubeError, FileNotFoundError, KeyError) as e:
            errors.append(str(e))
    return {
        "cubes": len(paths),
        "checked": int(len(picks)),
        "failed": len(errors),
        "errors": errors[:10],
        "variables": {name: s.report() for name, s in stats.items()},
        "acquired_frame_fraction": acquired.report()["mean"],
        "clear_fraction_of_acquired_pixels (s2_mask == 0)": clear.report()["mean"],
        "official_valid_fraction_of_frames (dlmask < 1 & SCL ok)": valid.report()["mean"],
    }
