"""Range / NaN / cloud-fraction report of GreenEarthNet minicubes, per variable and track.

  python scripts/check_vegetation_data.py --data_dir=/data/greenearthnet \
      --tracks=train,val_chopped,ood-t_chopped --max_cubes=200

For every track: cubes found, cubes that fail the reader's checks (missing variable, wrong dims,
wrong size) with the first errors, and per variable min / max / mean / NaN fraction over the
sampled cubes, plus the clear-sky and official-validity fractions of the Sentinel-2 acquisitions.
Exits non-zero when a cube fails, so it can gate a training job.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for configs/

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import vegetation as vegetation_config  # noqa: E402
from jaxlab.vegetation import data, metrics  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding the track folders.")
_TRACKS = flags.DEFINE_list("tracks", ["train", "val_chopped", "ood-t_chopped"], "Tracks.")
_MAX_CUBES = flags.DEFINE_integer("max_cubes", 100, "Cubes sampled per track (evenly spaced).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Expected lat / lon size.")
_ENGINE = flags.DEFINE_string("engine", "h5netcdf", "xarray engine (h5netcdf or netcdf4).")
_OUT = flags.DEFINE_string("out", "", "Also write the report as JSON here.")
flags.mark_flag_as_required("data_dir")

VARIABLES = (
    "s2_B02", "s2_B03", "s2_B04", "s2_B8A", "s2_mask", "s2_SCL", "s2_dlmask", "s2_avail",
    "esawc_lc", "cop_dem", "geom_cls", "eobs_tg", "eobs_tn", "eobs_tx", "eobs_rr", "eobs_pp",
    "eobs_hu", "eobs_qq", "eobs_fg",
)  # fmt: skip


class Running:
    """Min / max / sum / count / NaN count of one variable over many cubes."""

    def __init__(self):
        self.min, self.max, self.sum, self.count, self.nan, self.total = (
            np.inf,
            -np.inf,
            0.0,
            0,
            0,
            0,
        )

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

    def report(self) -> dict:
        return {
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "mean": self.sum / self.count if self.count else None,
            "nan_fraction": self.nan / max(self.total, 1),
        }


def check_track(root: str, track: str, config) -> dict:
    paths = data.list_cubes(root, track)
    picks = np.unique(np.linspace(0, len(paths) - 1, min(_MAX_CUBES.value, len(paths))).astype(int))
    stats = {name: Running() for name in VARIABLES}
    clear, valid, acquired = Running(), Running(), Running()
    errors = []
    for i in picks:
        path = paths[int(i)]
        try:
            with data.open_cube(path, config.data.engine) as ds:
                data.check_cube(ds, path, config)
                for name in VARIABLES:
                    if name in ds.variables:
                        stats[name].add(ds[name].values)
                frames = ds.isel(
                    time=slice(config.data.first_frame, None, config.data.frame_stride)
                )
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
    report = {
        "cubes": len(paths),
        "checked": int(len(picks)),
        "failed": len(errors),
        "errors": errors[:10],
        "variables": {name: s.report() for name, s in stats.items()},
        "acquired_frame_fraction": acquired.report()["mean"],
        "clear_fraction_of_acquired_pixels (s2_mask == 0)": clear.report()["mean"],
        "official_valid_fraction_of_frames (dlmask < 1 & SCL ok)": valid.report()["mean"],
    }
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = vegetation_config.get_config("paper")
    config.data.image_size = _IMAGE_SIZE.value
    config.data.engine = _ENGINE.value
    config.data.cloud_mask = "official"  # check every mask variable is there
    reports, failed = {}, 0
    for track in _TRACKS.value:
        logging.info("Checking %s/%s", _DATA_DIR.value, track)
        reports[track] = check_track(_DATA_DIR.value, track, config)
        failed += reports[track]["failed"]
        print(
            f"\n== {track}: {reports[track]['checked']}/{reports[track]['cubes']} cubes checked, "
            f"{reports[track]['failed']} failed"
        )
        for error in reports[track]["errors"]:
            print(f"   ERROR {error}")
        print(f"   {'variable':<12} {'min':>10} {'max':>10} {'mean':>10} {'NaN frac':>9}")
        for name, r in reports[track]["variables"].items():
            fmt = lambda v: f"{v:>10.4g}" if v is not None else f"{'-':>10}"  # noqa: E731
            print(
                f"   {name:<12} {fmt(r['min'])} {fmt(r['max'])} {fmt(r['mean'])} "
                f"{r['nan_fraction']:>9.3f}"
            )
        for key in (
            "acquired_frame_fraction",
            "clear_fraction_of_acquired_pixels (s2_mask == 0)",
            "official_valid_fraction_of_frames (dlmask < 1 & SCL ok)",
        ):
            value = reports[track][key]
            print(f"   {key}: {value:.3f}" if value is not None else f"   {key}: -")
    if _OUT.value:
        pathlib.Path(_OUT.value).write_text(json.dumps(reports, indent=2) + "\n")
    if failed:
        sys.exit(f"{failed} cube(s) failed the reader's checks; see the errors above.")


if __name__ == "__main__":
    app.run(main)
