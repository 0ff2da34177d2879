"""Range / NaN / cloud-fraction report of GreenEarthNet minicubes, per variable and track.

  python scripts/check_vegetation_data.py --data_dir=<greenearthnet> \
      --tracks=train,val_chopped,ood-t_chopped --max_cubes=200

For every track: cubes found, cubes that fail the reader's checks (missing variable, wrong dims,
wrong size) with the first errors, and per variable min / max / mean / NaN fraction over the
sampled cubes, plus the clear-sky and official-validity fractions of the Sentinel-2 acquisitions.
Exits non-zero when a cube fails, so it can gate a training job. The checks are
`jaxlab.vegetation.data_report.check_track`; this binary parses flags and prints.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for jaxlab/configs/

from absl import app, flags, logging  # noqa: E402

from jaxlab.configs import vegetation as vegetation_config  # noqa: E402
from jaxlab.vegetation import data_report  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root holding the track folders.")
_TRACKS = flags.DEFINE_list("tracks", ["train", "val_chopped", "ood-t_chopped"], "Tracks.")
_MAX_CUBES = flags.DEFINE_integer("max_cubes", 100, "Cubes sampled per track (evenly spaced).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Expected lat / lon size.")
_ENGINE = flags.DEFINE_string("engine", "h5netcdf", "xarray engine (h5netcdf or netcdf4).")
_OUT = flags.DEFINE_string("out", "", "Also write the report as JSON here.")
flags.mark_flag_as_required("data_dir")


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
        reports[track] = data_report.check_track(
            _DATA_DIR.value, track, config, max_cubes=_MAX_CUBES.value
        )
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
