"""scripts/prepare_weather.py on malformed GRIB2 archives: one line naming the file and what is
wrong, exit status 1, no traceback unless --verbose (issue 28 item 4).

Each case is a small archive of valid files (written with ecCodes by `synthetic.write_file`)
plus one bad file; the script runs as a user runs it, in a subprocess.
"""

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxlab.weather import synthetic
from tests.core import scripts_util
from tests.weather import grib_edit

SHAPE = (6, 8)
T0 = dt.datetime(2024, 6, 1, 0)
SCRIPT = str(scripts_util.REPO / "scripts" / "prepare_weather.py")


def _fields(seed: int = 0, shape=SHAPE) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in synthetic.simulate(shape, 1, dx_m=9000.0, seed=seed).items()}


def _write(path, hour: int = 0, shape=SHAPE, fields=None) -> str:
    fields = _fields(hour, shape) if fields is None else fields
    synthetic.write_file(str(path), fields, T0 + dt.timedelta(hours=hour), 9000.0)
    return str(path)


def _bad_archive(case: str, directory) -> str:
    """Three good hourly files and the case's bad one in `directory`; the bad file's name."""
    for hour in range(3):
        _write(directory / f"good_{hour:02d}.grib2", hour)
    bad = directory / "z_bad.grib2"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        _write(bad, 3)
        bad.write_bytes(bad.read_bytes()[:-100])  # the last message loses its end
    elif case == "text":
        bad.write_text("not a GRIB file\n")
    elif case == "grid":
        _write(bad, 3, shape=(6, 10))
    elif case == "missing_values":
        source = _write(directory / "source.tmp", 3)
        grib_edit.with_missing_dew_point(source, str(bad))
        os.remove(source)
    elif case == "out_of_range":
        hot = _fields(3)
        hot["t2m"] = hot["t2m"] + 200.0  # 500 K
        _write(bad, 3, fields=hot)
    elif case == "duplicate_time":
        _write(bad, 1)  # valid at the hour of good_01
    elif case == "duplicate_field":
        _write(bad, 3)
        with open(bad, "ab") as f:
            t2m = _fields(4)["t2m"]
            synthetic.write_message(f, t2m, time=T0 + dt.timedelta(hours=3), dx_m=9000.0,
                                    code=(0, 0, 0, 103, 2))  # fmt: skip
    return str(bad)


EXPECTED = {
    "empty": "GribError: {bad}: no GRIB2 messages (an empty file, or not GRIB2).",
    "truncated": "GribError: {bad}: GRIB2 message ",
    "text": "GribError: {bad}: GRIB2 message 1 unreadable",
    "grid": "GribError: {bad}: grid differs from ",
    "missing_values": "GribError: {bad}: field 'd2m' has 3 missing (bitmap)",
    "out_of_range": "GribError: {bad}: field 't2m' has 48 values outside",
    "duplicate_time": "ValueError: valid time 2024-06-01T01",
    "duplicate_field": "DuplicateFieldError: {bad}: field 't2m'",
}


def _prepare(grib_dir, store, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, SCRIPT, f"--grib_dir={grib_dir}", f"--store={store}", *flags]
    env = scripts_util.script_env(1)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _check_one_line(case: str, tmp_path) -> str:
    grib_dir = tmp_path / "grib"
    grib_dir.mkdir()
    bad = _bad_archive(case, grib_dir)
    result = _prepare(grib_dir, tmp_path / "hrrr.zarr")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    expected = "prepare_weather.py: " + EXPECTED[case].format(bad=bad)
    assert last.startswith(expected), (last, expected)
    assert last.endswith(" (--verbose prints the traceback)")
    return bad


def test_an_empty_file_is_one_line_and_verbose_adds_the_traceback(tmp_path):
    bad = _check_one_line("empty", tmp_path)
    result = _prepare(tmp_path / "grib", tmp_path / "hrrr.zarr", "--verbose")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"prepare_weather.py: GribError: {bad}: no GRIB2 messages (an empty file, or not GRIB2)."
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in EXPECTED if c != "empty"])
def test_each_malformed_archive_is_one_line(case, tmp_path):
    _check_one_line(case, tmp_path)
