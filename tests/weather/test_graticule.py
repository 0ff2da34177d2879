"""Latitude / longitude lines on the weather maps (issue 28 item 7): drawn where the grid's own
coordinates (decoded by ecCodes from a GRIB2 file) have those values, on every product map."""

import datetime as dt

import matplotlib
import numpy as np
import pytest
from scipy import ndimage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab.weather import data, plots, predict_output, synthetic  # noqa: E402


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 30 x 48 Lambert grid at 27 km (HRRR's projection), read back from a GRIB2 file."""
    path = str(tmp_path_factory.mktemp("graticule") / "f.grib2")
    fields = {k: v[0] for k, v in synthetic.simulate((30, 48), 1, dx_m=27000.0, seed=0).items()}
    synthetic.write_file(path, fields, dt.datetime(2024, 6, 1), 27000.0)
    return data.read_grib(path)


@pytest.mark.parametrize("max_points", [240, 12])  # every point, and a coarser contouring grid
def test_lines_lie_where_the_grid_has_their_latitude_or_longitude(grid, max_points):
    lat, lon = grid["latitude"], grid["longitude"]
    lon_180 = (lon + 180.0) % 360.0 - 180.0
    assert lon.max() > 180.0  # ecCodes gives 0..360 east; the labels say W
    fig, ax = plt.subplots()
    ax.imshow(grid["t2m"], origin="lower")
    drawn = plots.graticule(ax, lat, lon, max_points=max_points)
    for key, values in (("latitude", lat), ("longitude", lon_180)):
        levels = drawn[key]
        step = np.diff(levels)
        assert 1 <= len(levels) <= 7 and np.allclose(step, step[0])
        assert values.min() <= levels.min() and levels.max() <= values.max()
        assert np.allclose(levels / step[0], np.round(levels / step[0]))  # round values
    tolerance = 1e-3 if max_points == 240 else 0.05  # degrees; coarse contouring is approximate
    for lines, values in zip(drawn["sets"], (lat, lon_180), strict=True):
        checked = 0
        for level, segments in zip(lines.levels, lines.allsegs, strict=True):
            for segment in segments:
                cols, rows = segment[:, 0], segment[:, 1]
                at = ndimage.map_coordinates(values, [rows, cols], order=1, mode="nearest")
                np.testing.assert_allclose(at, level, atol=tolerance)
                checked += len(segment)
        assert checked > 10
    labels = [t.get_text() for t in ax.texts]
    assert any(t.endswith("°N") for t in labels) and any(t.endswith("°W") for t in labels)
    assert ax.get_xlim() == (-0.5, 47.5) and ax.get_ylim() == (-0.5, 29.5)  # the map's extent
    plt.close(fig)


def test_every_product_map_gets_the_lines(grid, tmp_path, monkeypatch):
    calls = []
    draw = plots.graticule
    monkeypatch.setattr(plots, "graticule", lambda ax, *a: calls.append(a) or draw(ax, *a))
    state = np.stack([grid[name] for name in data.VARIABLES], -1)
    probs = {"prob_refc_ge_35": ("refc", 35.0, np.zeros((1, *state.shape[:2]), np.float32))}
    members = np.stack([state, state])
    plots.products(str(tmp_path), state, state, state * 0, probs, members, 2,
                   grid["latitude"], grid["longitude"])  # fmt: skip
    pngs = list(tmp_path.rglob("*.png"))
    assert len(pngs) == 3 * len(data.VARIABLES) + 1 + 2 == len(calls)
    assert all(c[0] is grid["latitude"] and c[1] is grid["longitude"] for c in calls)
    calls.clear()
    predict_output._map(state[..., 0], "refc", "t", str(tmp_path / "p.png"),
                        latlon=(grid["latitude"], grid["longitude"]))  # fmt: skip
    assert len(calls) == 1
