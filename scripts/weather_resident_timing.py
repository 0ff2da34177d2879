"""Host time per train step of the weather task, device-resident vs streamed (jaxlab/weather).

  python scripts/weather_resident_timing.py [--variants=tiny,demo] [--steps=40] [--full_grid]

For each variant, on synthetic data in a temporary folder and this process's devices, prints as
JSON per mode ("resident": `data.resident=True`, "streamed": False):
- `host_batch_s`: the host's cost of one batch, pulled synchronously from the train iterator
  (grain without threads): index rows [B, 6] when resident, cropped arrays when streamed;
- `dispatch_s`: `mesh.global_batch` plus the jitted step's call returning (dispatch is
  asynchronous, so this is host time, not the step);
- `step_s`: wall time per step over `--steps` steps (blocked once at the end);
- `wait_s`: time `next()` waits on the threaded iterator the trainer uses (2 reader threads);
- `host_fraction`: (host_batch_s + dispatch_s) / step_s, the host's work as a share of a step;
  `critical_path_fraction`: (wait_s + dispatch_s) / step_s, what the loop itself waits for.
With --full_grid it also reads states of a 1059 x 1799 store (written from synthetic GRIB2 files
by the project's converter) and prints the seconds per state and MB/s: the streamed path's cost
per full-grid sample is two of them.
Run it pinned to one core (`taskset -c 0`) for a per-core number.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.data import pipeline
from jaxlab.weather import data, data_resident, synthetic, train

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["tiny", "demo"], "weather config variants to time")
flags.DEFINE_integer("steps", 40, "timed steps per mode (after 3 warm-up steps)")
flags.DEFINE_bool("full_grid", False, "also time state reads of a 1059 x 1799 Zarr store")


def _iterator(config, pairs, resident: bool, threads: int):
    crop = tuple(config.data.crop)
    if resident:
        records = data_resident.IndexSource(pairs)
        transform = data_resident.crop_columns(crop, pairs.shape[:2])
    else:
        records, transform = data.WithHour(pairs), data.random_crop(crop)
    return pipeline.train_iterator(
        records,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        random_transform=transform,
        num_threads=threads,
        prefetch=0 if threads == 0 else 4,
    )


def time_mode(config, workdir: str, resident: bool, steps: int) -> dict[str, float]:
    config.data.resident = resident
    store = data.prepare(config, workdir)
    pairs = data.PairSource(store, "train", tuple(config.data.leads), config.data.preload_max_mb)
    mesh = mesh_lib.make_mesh(config.mesh)
    kwargs = {}
    if resident:
        plan = data_resident.plan(config, pairs, mesh)
        kwargs["resident"] = data_resident.load(pairs, plan, mesh, tuple(config.data.crop))
    parts = train.build(config, mesh, residual_std=None, residual_mean=None, **kwargs)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))

    def as_input(batch):
        return train.rows_batch(batch) if resident else batch

    # The host's cost of one batch, pulled synchronously (no reader threads).
    sync = _iterator(config, pairs, resident, threads=0)
    next(sync)
    start = time.perf_counter()
    for _ in range(steps):
        next(sync)
    host_batch_s = (time.perf_counter() - start) / steps

    batches = _iterator(config, pairs, resident, threads=2)
    for _ in range(3):  # compile and warm up
        state, metrics = parts.train_step(
            state, mesh_lib.global_batch(as_input(next(batches)), mesh)
        )
    jax.block_until_ready(metrics)
    wait = dispatch = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        host = next(batches)
        t1 = time.perf_counter()
        state, metrics = parts.train_step(state, mesh_lib.global_batch(as_input(host), mesh))
        wait, dispatch = wait + t1 - t0, dispatch + time.perf_counter() - t1
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
    wait_s, dispatch_s = wait / steps, dispatch / steps
    return {
        "host_batch_s": host_batch_s,
        "wait_s": wait_s,
        "dispatch_s": dispatch_s,
        "step_s": step_s,
        "host_fraction": (host_batch_s + dispatch_s) / step_s,
        "critical_path_fraction": (wait_s + dispatch_s) / step_s,
    }


def time_full_grid_reads(directory: str, num_times: int = 4) -> dict[str, float]:
    """Seconds per standardised state read from a full-grid store (7 whole chunks, zstd)."""
    paths = synthetic.write_dataset(
        os.path.join(directory, "grib"),
        shape=synthetic.FULL_SHAPE,
        num_times=num_times,
        dx_m=3000.0,
        seed=0,
    )
    store = os.path.join(directory, "hrrr.zarr")
    data.prepare_zarr(paths, store)
    pairs = data.PairSource(store, "train", (1,), preload_max_mb=0.0)
    pairs.state(0)  # open and warm
    start = time.perf_counter()
    for t in range(num_times):
        pairs.state(t)
    seconds = (time.perf_counter() - start) / num_times
    mb = 4 * np.prod(pairs.shape) / 1e6
    return {"state_s": seconds, "state_mb": mb, "mb_per_s": mb / seconds}


def main(argv):
    del argv
    results = {"devices": str(jax.devices()), "cpu_count": os.cpu_count()}
    for variant in FLAGS.variants:
        for resident in (True, False):
            with tempfile.TemporaryDirectory() as workdir:
                config = weather_config.get_config(variant)
                mode = "resident" if resident else "streamed"
                results[f"{variant}/{mode}"] = time_mode(config, workdir, resident, FLAGS.steps)
                print(variant, mode, results[f"{variant}/{mode}"], file=sys.stderr, flush=True)
    if FLAGS.full_grid:
        with tempfile.TemporaryDirectory() as directory:
            results["full_grid_read"] = time_full_grid_reads(directory)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
