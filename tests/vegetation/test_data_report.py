"""The data report behind scripts/check_vegetation_data.py, against direct numpy on the cubes."""

import numpy as np

from jaxlab.vegetation import data_report
from tests.vegetation import helpers


def test_check_track_report_matches_direct_numpy(tmp_path):
    root = str(tmp_path)
    cubes = [helpers.cube(seed=0), helpers.cube(seed=1)]
    cubes[1]["eobs_tg"][:15] = np.nan  # a gap in one cube's temperature record
    for i, ds in enumerate(cubes):
        helpers.write_cube(root, ds, name=f"c{i}.nc")
    helpers.write_cube(root, helpers.cube(seed=2).drop_vars("eobs_rr"), name="c2.nc")
    config = helpers.tiny_config()
    config.data.cloud_mask = "official"

    report = data_report.check_track(root, "train", config)
    assert (report["cubes"], report["checked"], report["failed"]) == (3, 3, 1)
    assert "c2.nc" in report["errors"][0] and "eobs_rr" in report["errors"][0]
    for name in ("s2_B04", "s2_SCL", "eobs_tg", "esawc_lc"):
        values = np.concatenate([np.asarray(ds[name].values, np.float64).ravel() for ds in cubes])
        got = report["variables"][name]
        np.testing.assert_allclose(got["min"], np.nanmin(values), rtol=1e-6)
        np.testing.assert_allclose(got["max"], np.nanmax(values), rtol=1e-6)
        np.testing.assert_allclose(got["mean"], np.nanmean(values), rtol=1e-6)
        np.testing.assert_allclose(got["nan_fraction"], np.isnan(values).mean(), rtol=1e-9)
    assert report["variables"]["eobs_tg"]["nan_fraction"] >= 15 / 300

    frames = [ds.isel(time=slice(4, None, 5)) for ds in cubes]
    mask = np.stack([f["s2_mask"].values for f in frames])  # [cube, 30, H, W]
    acquired = np.isfinite(mask).any(axis=(2, 3))
    clear = mask[np.isfinite(mask)] == 0
    valid = np.stack([(f["s2_dlmask"].values < 1) & np.isin(f["s2_SCL"].values, (1, 2, 4, 5, 6, 7))
                      for f in frames])  # fmt: skip
    np.testing.assert_allclose(report["acquired_frame_fraction"], acquired.mean(), rtol=1e-9)
    np.testing.assert_allclose(
        report["clear_fraction_of_acquired_pixels (s2_mask == 0)"], clear.mean(), rtol=1e-9
    )
    np.testing.assert_allclose(
        report["official_valid_fraction_of_frames (dlmask < 1 & SCL ok)"], valid.mean(), rtol=1e-9
    )
    assert 0.05 < clear.mean() < 0.95  # the synthetic clouds are neither absent nor total
