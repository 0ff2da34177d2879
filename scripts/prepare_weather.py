"""HRRR GRIB2 files -> one Zarr store + statistics (jaxlab/weather).

  python scripts/prepare_weather.py --grib_dir=/data/hrrr --store=/data/hrrr.zarr

Finds every `hrrr.tHHz.wrfsfcfFF.grib2` under --grib_dir (NOAA's `hrrr.YYYYMMDD/conus/` layout),
reads REFC, 2 m TMP/DPT, 10 m UGRD/VGRD and surface CAPE/CIN with xarray + cfgrib, and writes the
store (dims time, y, x; latitude/longitude; one time step per chunk) with `<store>.stats.json`
beside it (mean/std over the first --train_fraction of the times, after the CAPE/CIN transforms).
A file lacking a field is named and skipped (--missing=skip) or stops the run (--missing=fail).
--synthetic writes a small synthetic GRIB2 archive into --grib_dir first.
"""

from __future__ import annotations

from absl import app, flags, logging

from jaxlab.weather import data, synthetic

_GRIB_DIR = flags.DEFINE_string("grib_dir", None, "Directory searched for HRRR GRIB2 files.")
_STORE = flags.DEFINE_string("store", None, "Output Zarr store, e.g. /data/hrrr.zarr.")
_TRAIN_FRACTION = flags.DEFINE_float(
    "train_fraction", 0.75, "Leading fraction of times used for training (and the statistics)."
)
_MISSING = flags.DEFINE_enum("missing", "skip", ["skip", "fail"], "A file lacking a field.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Write synthetic GRIB2 files first.")
_SHAPE = flags.DEFINE_list("shape", ["96", "160"], "Synthetic grid (y, x); 1059,1799 is HRRR.")
_NUM_TIMES = flags.DEFINE_integer("num_times", 48, "Synthetic hourly files.")
_DX = flags.DEFINE_float("dx_m", 3000.0, "Synthetic grid spacing (m).")


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    if _SYNTHETIC.value:
        shape = tuple(int(s) for s in _SHAPE.value)
        synthetic.write_dataset(
            _GRIB_DIR.value, shape=shape, num_times=_NUM_TIMES.value, dx_m=_DX.value
        )
    paths = data.grib_paths(_GRIB_DIR.value)
    if not paths:
        raise app.UsageError(f"No hrrr.t*z.wrfsfcf*.grib2 files under {_GRIB_DIR.value}.")
    logging.info("Found %d GRIB2 files under %s", len(paths), _GRIB_DIR.value)
    stats = data.prepare_zarr(
        paths, _STORE.value, train_fraction=_TRAIN_FRACTION.value, missing=_MISSING.value
    )
    for name, s in stats["variables"].items():
        logging.info(
            "%-5s transform %-9s mean %10.4g std %10.4g", name, s["transform"], s["mean"], s["std"]
        )


if __name__ == "__main__":
    flags.mark_flags_as_required(["grib_dir", "store"])
    app.run(main)
