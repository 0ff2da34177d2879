"""HRRR GRIB2 files -> one Zarr store + statistics (jaxlab/weather), in bounded memory.

  python scripts/prepare_weather.py --grib_dir=/data/hrrr --store=/data/hrrr.zarr [--workers=4]

Finds every `*.grib2` file under --grib_dir (any name and depth; e.g. NOAA's
`hrrr.YYYYMMDD/conus/` layout as `jaxlab download hrrr` writes it), selects REFC, 2 m TMP/DPT,
10 m UGRD/VGRD and surface CAPE/CIN by their GRIB2 codes (ecCodes), takes each file's valid time
from its content, and writes the store one time step at a time (dims time, y, x;
latitude/longitude; one time step per chunk) with `<store>.stats.json` beside it (mean/std over
the first --train_fraction of the times, after the CAPE/CIN transforms, merged in one pass).
An interrupted run resumes: rerun the same command. Policies (also `config.data.*`):
--missing=skip|fail (a file lacking a field), --on_duplicate=error|drop_later (two files at one
valid time), --on_gap=warn|error (missing hours). --synthetic writes a small synthetic archive
into --grib_dir first.

  python scripts/prepare_weather.py --measure [--measure_files=12,48] [--measure_dir=/tmp/m]

writes full-size (1059 x 1799) synthetic files and prepares stores of the first 12 and 48 of them,
each in its own process, and prints the peak RSS (which must not grow with the number of files)
and the files/s of each as JSON.

Bad input (an empty, truncated or text file, another grid, a missing or non-finite value, a value
out of range, two files at one valid time, a field twice in a file) ends in one line on stderr,
`prepare_weather.py: <Error>: <file>: <what is wrong>`, and exit status 1; --verbose prints the
traceback too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
from absl import app, flags, logging
from scipy import ndimage

from jaxlab.data import ownership
from jaxlab.weather import data, synthetic

_GRIB_DIR = flags.DEFINE_string("grib_dir", None, "Directory searched for *.grib2 files.")
_STORE = flags.DEFINE_string("store", None, "Output Zarr store, e.g. /data/hrrr.zarr.")
_TRAIN_FRACTION = flags.DEFINE_float(
    "train_fraction", 0.75, "Leading fraction of times used for training (and the statistics)."
)
_MISSING = flags.DEFINE_enum("missing", "skip", ["skip", "fail"], "A file lacking a field.")
_ON_DUPLICATE = flags.DEFINE_enum(
    "on_duplicate", "error", ["error", "drop_later"], "Two files at one valid time."
)
_ON_GAP = flags.DEFINE_enum("on_gap", "warn", ["warn", "error"], "Hours missing in the archive.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Decoding processes (0: decode in-process).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Use only the first N files (0: all).")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Write synthetic GRIB2 files first.")
_SHAPE = flags.DEFINE_list("shape", ["96", "160"], "Synthetic grid (y, x); 1059,1799 is HRRR.")
_NUM_TIMES = flags.DEFINE_integer("num_times", 48, "Synthetic hourly files.")
_DX = flags.DEFINE_float("dx_m", 3000.0, "Synthetic grid spacing (m).")
_MEASURE = flags.DEFINE_bool("measure", False, "Measure peak RSS and files/s (see docstring).")
_MEASURE_FILES = flags.DEFINE_list("measure_files", ["12", "48"], "Store sizes to measure.")
_MEASURE_DIR = flags.DEFINE_string("measure_dir", None, "Where --measure writes (default tmp).")
_REPORT = flags.DEFINE_string("report", None, "Write the --measure result (JSON) here too.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the full traceback too.")


def prepare(grib_dir: str, store: str, limit: int = 0) -> dict:
    paths = data.grib_paths(grib_dir)
    if not paths:
        raise app.UsageError(f"No *.grib2 files under {grib_dir}.")
    paths = paths[:limit] if limit else paths
    logging.info("Found %d GRIB2 files under %s", len(paths), grib_dir)
    return data.prepare_zarr(
        paths,
        store,
        train_fraction=_TRAIN_FRACTION.value,
        missing=_MISSING.value,
        on_duplicate=_ON_DUPLICATE.value,
        on_gap=_ON_GAP.value,
        workers=_WORKERS.value,
    )


def write_full_size_files(directory: str, num_files: int, shape=synthetic.FULL_SHAPE) -> None:
    """`num_files` hourly HRRR-like files at full size, from smooth patterns shifted each hour
    (cheap to make; `synthetic.simulate` would hold every hour of the full grid in memory)."""
    rng = np.random.default_rng(0)
    coarse = [rng.normal(size=(shape[0] // 32 + 1, shape[1] // 32 + 1)) for _ in range(4)]
    zoom = [s / c for s, c in zip(shape, coarse[0].shape, strict=True)]
    p = [np.clip(ndimage.zoom(c, zoom, order=1)[: shape[0], : shape[1]], -3, 3) for c in coarse]
    t0 = dt.datetime(2024, 6, 1)
    for hour in range(num_files):
        time_ = t0 + dt.timedelta(hours=hour)
        path = synthetic.file_path(directory, time_)
        if os.path.exists(path):
            continue
        q = [np.roll(x, 3 * hour, axis=1) for x in p]
        t2m = 295.0 + 3.0 * q[0]
        fields = {
            "refc": np.clip(-10.0 + 20.0 * q[1], -10.0, 70.0),
            "t2m": t2m,
            "d2m": t2m - 5.0 - np.abs(q[2]),
            "u10": 5.0 * q[2],
            "v10": 5.0 * q[3],
            "cape": 1000.0 * (1.0 + q[3]).clip(0.0),
            "cin": -50.0 * (1.0 + np.abs(q[0])),
        }
        synthetic.write_file(path, fields, time_, 3000.0)


def measure() -> dict:
    counts = sorted(int(n) for n in _MEASURE_FILES.value)
    root = _MEASURE_DIR.value or tempfile.mkdtemp(prefix="prepare_weather_measure_")
    grib_dir = os.path.join(root, "grib")
    start = time.perf_counter()
    write_full_size_files(grib_dir, counts[-1])
    logging.info("Wrote %d full-size files in %.0f s", counts[-1], time.perf_counter() - start)
    result = {"grid": list(synthetic.FULL_SHAPE), "workers": _WORKERS.value, "runs": []}
    for n in counts:
        store = os.path.join(root, f"hrrr_{n}.zarr")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            f"--grib_dir={grib_dir}",
            f"--store={store}",
            f"--limit={n}",
            f"--workers={_WORKERS.value}",
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        result["runs"].append(run)
        logging.info(
            "%d files: peak RSS %.0f MiB, %.2f files/s", n, run["peak_rss_mib"], run["files_per_s"]
        )
    first, last = result["runs"][0], result["runs"][-1]
    result["rss_growth_mib"] = last["peak_rss_mib"] - first["peak_rss_mib"]
    return result


def main(argv):
    """`run`, with an error as one line on stderr (exit 1); the traceback under --verbose."""
    try:
        run(argv)
    except app.UsageError:
        raise  # absl prints it with the usage
    except Exception as e:  # noqa: BLE001 - every error is reported the same way
        if _VERBOSE.value:
            traceback.print_exc()
        message = " ".join(str(e).split()) or "(no message)"
        hint = "" if _VERBOSE.value else " (--verbose prints the traceback)"
        print(f"prepare_weather.py: {type(e).__name__}: {message}{hint}", file=sys.stderr)
        sys.exit(1)


def run(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    if _MEASURE.value:
        result = measure()
        print(json.dumps(result))
        if _REPORT.value:
            with open(_REPORT.value, "w") as f:
                json.dump(result, f, indent=2)
        return
    if not _GRIB_DIR.value or not _STORE.value:
        raise app.UsageError("--grib_dir and --store are required (or --measure).")
    if _SYNTHETIC.value:
        shape = tuple(int(s) for s in _SHAPE.value)
        ownership.claim_synthetic_dir(_GRIB_DIR.value)  # never into a folder of the user's files
        synthetic.write_dataset(
            _GRIB_DIR.value, shape=shape, num_times=_NUM_TIMES.value, dx_m=_DX.value
        )
    start = time.perf_counter()
    stats = prepare(_GRIB_DIR.value, _STORE.value, _LIMIT.value)
    seconds = time.perf_counter() - start
    for name, s in stats["variables"].items():
        logging.info(
            "%-5s transform %-9s mean %10.4g std %10.4g", name, s["transform"], s["mean"], s["std"]
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "files": stats["num_times"],
                "seconds": round(seconds, 2),
                "files_per_s": round(stats["num_times"] / seconds, 3),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "peak_worker_rss_mib": round(children_kib / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
