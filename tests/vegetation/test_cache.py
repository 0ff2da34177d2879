"""The model-ready record cache (vegetation/cache.py): the records and batches it serves equal
the cube reader's (bitwise in float32, within the stated bound in uint16), a resumed iterator
continues bitwise, a stale cache is rebuilt in the workdir and refused with what changed in a
configured cache folder, and a user's data folder is left byte-for-byte untouched."""

import hashlib
import json
import os
import pickle

import jax
import numpy as np
import pytest
import xarray as xr

from jaxlab.data import pipeline
from jaxlab.vegetation import cache, data
from tests.vegetation import helpers


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """A user's data folder (no jaxlab marker) holding the tiny config's synthetic cubes."""
    root = str(tmp_path_factory.mktemp("greenearthnet"))
    config = helpers.tiny_config()
    data.write_synthetic(config, root)
    return root


@pytest.fixture(scope="module")
def norm(user_data, tmp_path_factory):
    """The training track's statistics (as train computes them), once for the module."""
    return data.normalisation(_config(user_data), str(tmp_path_factory.mktemp("norm")), user_data)


@pytest.fixture(scope="module")
def exact_records(user_data, norm):
    """The cube reader's training records (the uncached path)."""
    direct = data.load(_config(user_data), user_data, "train", norm)
    return direct, [direct.build_record(i) for i in range(len(direct))]


@pytest.fixture(scope="module")
def uint16_cache(user_data, norm, tmp_path_factory):
    """(config, workdir, source) of the default (uint16) training cache, built once."""
    config = _config(user_data)
    workdir = str(tmp_path_factory.mktemp("run"))
    return config, workdir, cache.load(config, workdir, user_data, "train", norm)


def _config(root, **data_overrides):
    config = helpers.tiny_config()
    config.data.dir = root
    config.data.synthetic = False
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


def _snapshot(folder):
    """{relative path: (size, mtime_ns, sha256)} of every file below `folder`."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns, digest)
    return out


def _built_at(source):
    return os.stat(os.path.join(source.folder, cache.MANIFEST)).st_mtime_ns


def test_float32_cache_records_equal_the_cube_reader_bitwise(
    user_data, norm, exact_records, tmp_path
):
    config = _config(user_data, cache_dtype="float32")
    workdir = str(tmp_path)
    cached = cache.load(config, workdir, user_data, "train", norm)
    direct, records = exact_records
    assert isinstance(cached, cache.CachedSource) and len(cached) == len(direct) == 8
    assert cached.items == direct.items
    for i, want in enumerate(records):
        got = cached[i]
        assert sorted(got) == sorted(want)
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    # The training iterator's batches, cached or not, are bitwise the same.
    kwargs = dict(global_batch_size=4, seed=3, process_index=0, process_count=1)
    uncached = cache.load(_config(user_data, cache="off"), workdir, user_data, "train", norm)
    assert isinstance(uncached, data.CubeSource)
    a = pipeline.train_iterator(cached, **kwargs)
    b = pipeline.train_iterator(records, **kwargs)  # the reader's records, read once
    for _ in range(3):  # past one epoch: the reshuffle too
        jax.tree.map(np.testing.assert_array_equal, next(a), next(b))


def test_uint16_cache_is_within_the_stated_bound(uint16_cache, exact_records):
    """context / target_delta within `cache.error_bound` of the exact values (half a step of the
    window's own scale, about 1e-4 here), zero deltas (cloudy targets) exactly zero, every other
    field exact; the bound is not vacuous (the error is a sizeable fraction of it)."""
    config, _, cached = uint16_cache
    assert config.data.cache_dtype == "uint16"  # the default
    _, records = exact_records
    arrays = cached.arrays()
    assert arrays["context"].dtype == arrays["target_delta"].dtype == np.uint16
    worst_fraction = 0.0
    for i, want in enumerate(records):
        got = cached[i]
        for key in want:
            if key in ("context", "target_delta", "bap"):
                continue
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        for key in cache.QUANTISED:
            scale, offset = arrays[f"{key}_scale"][i], arrays[f"{key}_offset"][i]
            bound = cache.error_bound(want[key], scale, offset)
            error = np.abs(got[key].astype(np.float64) - want[key])
            assert (error <= bound).all(), (key, i, float((error - bound).max()))
            assert (
                float(scale.max()) * 65534 <= 2 * float(np.abs(want[key]).max()) + 1e-6
            )  # spans x
            worst_fraction = max(worst_fraction, float((error / bound).max()))
        np.testing.assert_array_equal(got["bap"], got["context"][-1])
        cloudy = want["target_mask"] == 0
        assert cloudy.any()
        assert (got["target_delta"][cloudy] == 0).all()
    assert worst_fraction > 0.3


def test_quantise_bound_on_planted_values():
    """Random values spanning several orders of magnitude, a constant channel (exact), zeros."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 7, 4)) * np.array([1e-3, 1.0, 30.0, 0.0]) + np.array([0, 2, 0, 1.5])
    x[0, 0, 0] = 0.0
    for symmetric in (False, True):
        codes, scale, offset = cache.quantise(x, symmetric)
        decoded = cache.dequantise(codes, scale, offset)
        assert codes.dtype == np.uint16 and decoded.dtype == np.float32
        error = np.abs(decoded - x)
        assert (error <= cache.error_bound(x, scale, offset)).all()
        # Half a step of the channel's range: the step is range / 65535 (or 2 max|x| / 65534).
        span = 2 * np.abs(x).max((0, 1, 2)) if symmetric else np.ptp(x, (0, 1, 2))
        assert (error.max((0, 1, 2)) <= span / 65534 / 2 + 1e-6 * (1 + np.abs(x).max())).all()
        np.testing.assert_array_equal(decoded[..., 3], x[..., 3].astype(np.float32))
        if symmetric:
            assert decoded[0, 0, 0, 0] == 0 and decoded[0, 0, 0, 2] == 0


def test_resumed_iterator_over_the_cache_is_bitwise(user_data, norm, uint16_cache):
    """The iterator state saved after 3 batches, restored on a new iterator over the cache
    reopened from disk (as after a restart) and pickled (as for a worker process), continues
    with bitwise the same batches."""
    config, workdir, source = uint16_cache
    kwargs = dict(global_batch_size=4, seed=0, process_index=0, process_count=1)
    first = pipeline.train_iterator(source, **kwargs)
    for _ in range(3):
        next(first)
    state = first.get_state()
    want = [next(first) for _ in range(3)]
    reopened = cache.load(config, workdir, user_data, "train", norm)
    assert _built_at(reopened) == _built_at(source)  # fresh: not rebuilt
    # As a worker process gets it: pickled without its mapped arrays, which it maps itself.
    reopened.arrays()
    reopened = pickle.loads(pickle.dumps(reopened))
    assert reopened._arrays is None
    second = pipeline.train_iterator(reopened, **kwargs)
    second.set_state(state)
    for batch in want:
        jax.tree.map(np.testing.assert_array_equal, next(second), batch)


def test_stale_cache_in_the_workdir_is_rebuilt(user_data, norm, tmp_path, caplog):
    config = _config(user_data)
    workdir = str(tmp_path / "run")
    source = cache.load(config, workdir, user_data, "val_chopped", norm)
    built = _built_at(source)
    assert _built_at(cache.load(config, workdir, user_data, "val_chopped", norm)) == built

    # A source cube touched (same bytes, new mtime): rebuilt, the log names the file.
    cube = data.list_cubes(user_data, "val_chopped")[0]
    stat = os.stat(cube)
    try:
        os.utime(cube, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        with caplog.at_level("WARNING"):
            source = cache.load(config, workdir, user_data, "val_chopped", norm)
        assert _built_at(source) != built
        assert os.path.relpath(cube, user_data) in caplog.text
    finally:
        os.utime(cube, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # A config key that changes the records: rebuilt with the new content.
    changed = _config(user_data, cloud_mask="s2_SCL")
    caplog.clear()
    with caplog.at_level("WARNING"):
        source = cache.load(changed, workdir, user_data, "val_chopped", norm)
    assert "data.cloud_mask 's2_mask' -> 's2_SCL'" in caplog.text
    manifest = cache.read_manifest(source.folder)
    assert manifest["config"]["data.cloud_mask"] == "s2_SCL"
    np.testing.assert_array_equal(
        source[0]["target_mask"],
        data.load(changed, user_data, "val_chopped", norm)[0]["target_mask"],
    )
    # data.cache="rebuild" always rebuilds.
    built = _built_at(source)
    changed.data.cache = "rebuild"
    assert _built_at(cache.load(changed, workdir, user_data, "val_chopped", norm)) != built


def test_stale_cache_in_a_configured_folder_is_refused(user_data, norm, tmp_path):
    shared = str(tmp_path / "shared_cache")
    config = _config(user_data, cache_dir=shared)
    workdir = str(tmp_path / "run")
    source = cache.load(config, workdir, user_data, "val_chopped", norm)
    assert source.folder == os.path.join(shared, "vegetation", "val_chopped")
    before = _snapshot(shared)
    changed = _config(user_data, cache_dir=shared, climatology_window=15)
    with pytest.raises(cache.StaleCacheError, match=r"data\.climatology_window 21 -> 15"):
        cache.load(changed, workdir, user_data, "val_chopped", norm)
    with pytest.raises(cache.StaleCacheError, match="normalisation statistics"):
        other = data.Normalisation({**norm.stats, "band_low": [0.0] * 4})
        cache.load(config, workdir, user_data, "val_chopped", other)
    assert _snapshot(shared) == before  # refused: nothing rewritten

    # A folder that is not a jaxlab cache is never written into.
    foreign = tmp_path / "foreign"
    (foreign / "vegetation" / "val_chopped").mkdir(parents=True)
    (foreign / "vegetation" / "val_chopped" / "notes.txt").write_text("mine")
    with pytest.raises(cache.StaleCacheError, match="not a jaxlab cache"):
        cache.load(
            _config(user_data, cache_dir=str(foreign)), workdir, user_data, "val_chopped", norm
        )
    # Nor inside the data folder.
    inside = _config(user_data, cache_dir=os.path.join(user_data, "cache"))
    with pytest.raises(ValueError, match="inside the data folder"):
        cache.load(inside, workdir, user_data, "val_chopped", norm)
    with pytest.raises(ValueError, match="data.cache_dtype"):
        cache.load(_config(user_data, cache_dtype="float16"), workdir, user_data, "train", norm)


def test_prepare_builds_both_caches_and_leaves_the_user_folder_untouched(
    user_data, norm, uint16_cache, tmp_path
):
    """`jaxlab prepare`'s cache step, here with build worker processes: the same bytes as the
    in-process build, found fresh by train, and not one byte of the data folder changed."""
    before = _snapshot(user_data)
    config = _config(user_data, cache_build_workers=2)
    workdir = str(tmp_path)
    norm.save(os.path.join(workdir, "normalisation.json"))  # as computed by train (fixture)
    folders = cache.prepare(config, workdir).split(", ")
    assert folders == [
        os.path.join(workdir, "cache", "vegetation", track) for track in ("train", "val_chopped")
    ]
    manifest = cache.read_manifest(folders[0])
    build = manifest["build"]
    assert build["windows"] == 8 and build["bytes_per_window"] > 0
    assert manifest["format_version"] == cache.FORMAT_VERSION
    assert build["worker_processes"] == 1  # 8 windows: one process (at most one per 8)
    in_process = uint16_cache[2].arrays()
    for name, array in cache.CachedSource(folders[0], manifest, config, norm).arrays().items():
        np.testing.assert_array_equal(array, in_process[name], err_msg=name)
    assert len(manifest["files"]) == 8 and all(size > 0 for _, size, _ in manifest["files"])
    json.dumps(manifest)  # plain JSON
    # train's first use finds them fresh (no rebuild); reading changes nothing in the data folder.
    built = os.stat(os.path.join(folders[0], cache.MANIFEST)).st_mtime_ns
    source = cache.load(config, workdir, user_data, "train", norm)
    assert _built_at(source) == built
    for i in range(len(source)):
        source[i]
    assert _snapshot(user_data) == before


def test_overlapping_windows_of_a_long_cube(norm, tmp_path):
    """A 300-day train cube with data.train_window_stride=75 gives windows on days 0, 75, 150
    (the time length read by h5py, or by xarray for a NetCDF3 file); each is cached whole
    (its BAP restarts at the window start) and equals the reader's record bitwise."""
    first = helpers.cube(seed=1)
    # The next 150 days: the same values again (a valid cube; windows across the seam differ).
    later = first.time.values + np.timedelta64(150, "D")
    second = first.assign_coords(time=later)
    long = xr.concat(
        [first, second], dim="time", data_vars="minimal", coords="minimal", compat="override"
    )  # static variables (land cover, DEM) once
    root = str(tmp_path / "long")
    path = helpers.write_cube(root, long, track="train")
    netcdf3 = str(tmp_path / "classic.nc")
    long[["s2_B02"]].to_netcdf(netcdf3, engine="scipy")
    assert data.num_days(path, "h5netcdf") == data.num_days(netcdf3, "scipy") == 300

    config = _config(root, train_window_stride=75, cache_dtype="float32")
    direct = data.load(config, root, "train", norm)
    assert direct.items == [(path, 0), (path, 75), (path, 150)]
    cached = cache.load(config, str(tmp_path / "run"), root, "train", norm)
    assert cached.items == direct.items
    for i in range(3):
        want, got = direct.build_record(i), cached[i]
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=(i, key))
    assert not np.array_equal(cached[0]["context"], cached[1]["context"])  # distinct windows
