"""Training data on the device: the normalised training states live in accelerator memory and the
jitted train step gathers its (t, t + lead) pairs and random crops by index.

Why: a full-grid HRRR pair is 107 MB of float32 (2 states x 1059 x 1799 x 7 x 4 B) and one H100
at 40% MFU trains 150-600 of them a second, 16-64 GB/s of input that no Zarr reader streams
(each state read decodes seven whole 7.6 MB chunks; README, "Data on the device"). The states
themselves are few: the seed's 14 days are 336 hourly states of 53 MB, 18 GB, which fit in one
H100 (80 GB) or H200 (141 GB). Loaded once, a step needs from the host only which pairs and
which crops: one int32 row per example.

The parts, in the order `train.sources` uses them:
- `plan`: `config.data.resident` ("auto" | True | False), the training states' size and the
  devices' memory (`memory_stats`, else `data.resident_budget_mb`) -> `Plan`: "replicated"
  (every device holds all states), "sharded" (time split over the mesh's `data` axis) or
  "streamed" (the host reads Zarr per record, as without this module).
- `load`: the states [T, H, W, C] float32 on the mesh, each `PairSource.state(t)` (exactly the
  array the streamed path crops), with their hour of day [T].
- `IndexSource` + `crop_columns`: the streamed path's grain pipeline (same shuffle, same
  per-record generator: `pipeline.train_iterator` with the same seed) over records that are
  int32 rows [index, time, verify, lead, y0, x0] instead of arrays. So the pairs, their order
  and the crop offsets are the streamed path's, and the iterator's checkpointed state is the
  same kind of position: a run resumes bitwise in either mode.
- `gather`: rows [B, 6] -> the batch {"cond", "target" [B, h, w, C], "lead", "hour", "index"
  [B]} on the device (`lax.dynamic_slice` per example; sharded: each device slices the rows
  whose time it holds, and one integer all-reduce over `data` assembles them bit for bit).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import data

# The columns of a row of the index pipeline (int32): the record id, the time indices of the
# initial and verifying states, the lead (hours) and the crop's top-left corner.
COLUMNS = ("index", "time", "verify", "lead", "y0", "x0")
INDEX, TIME, VERIFY, LEAD, Y0, X0 = range(len(COLUMNS))
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where the training states go, and why (`reason`, logged)."""

    placement: str  # "replicated", "sharded" or "streamed"
    num_times: int  # T: time steps the training pairs read (0 .. T - 1)
    store_bytes: int  # T x H x W x C x 4
    device_bytes: int  # per device under `placement` (sharded: T padded to the data axis)
    budget_bytes: int | None  # per device; None: unknown (no memory stats, no budget)
    reason: str

    @property
    def resident(self) -> bool:
        return self.placement != "streamed"


def setting(value: Any) -> str | bool:
    """`config.data.resident` as "auto", True or False (strings from a command line too)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[text]
    raise ValueError(f"config.data.resident must be 'auto', True or False, got {value!r}.")


def device_budget(
    stats: list[dict[str, Any] | None], fraction: float, budget_mb: float
) -> tuple[int | None, str]:
    """(bytes per device the states may take, where that number comes from).

    `stats`: each local device's `memory_stats()` (None where the backend has none, as on CPU).
    With stats on every device: `fraction` of the smallest free memory (bytes_limit minus
    bytes_in_use; the rest is the model's, its activations and optimizer state). Else
    `budget_mb` when > 0, else None (unknown).
    """
    if stats and all(s and "bytes_limit" in s for s in stats):
        free = min(int(s["bytes_limit"]) - int(s.get("bytes_in_use", 0)) for s in stats)
        return int(fraction * free), (
            f"{fraction:g} x {free / 2**30:.1f} GiB free device memory (memory_stats; "
            "config.data.resident_fraction)"
        )
    if budget_mb > 0:
        return int(budget_mb * 2**20), "config.data.resident_budget_mb (no memory stats)"
    return None, "no memory stats on this backend and config.data.resident_budget_mb = 0"


def decide(
    mode: str | bool,
    num_times: int,
    state_bytes: int,
    data_size: int,
    budget: tuple[int | None, str],
) -> Plan:
    """The placement of `num_times` states of `state_bytes` each on a mesh whose data axis has
    `data_size` devices, given `device_budget`'s (bytes, source).

    Replicated when all states fit one device's budget (no communication in the step), else
    sharded over the data axis when a 1 / data_size share fits, else streamed. `mode` True
    insists (an error naming the sizes when even sharding does not fit; with an unknown budget
    it trusts the config and replicates); False always streams.
    """
    budget_bytes, source = budget
    total = num_times * state_bytes
    shard = -(-num_times // data_size) * state_bytes
    gib = 2**30

    def result(placement: str, device_bytes: int, reason: str) -> Plan:
        return Plan(placement, num_times, total, device_bytes, budget_bytes, reason)

    sizes = (
        f"{num_times} training states x {state_bytes / 2**20:.1f} MiB = {total / gib:.2f} GiB "
        f"({shard / gib:.2f} GiB a device sharded over {data_size})"
    )
    if mode is False:
        return result("streamed", 0, "config.data.resident = False")
    if budget_bytes is None:
        if mode is True:
            return result("replicated", total, f"config.data.resident = True; {sizes}; {source}")
        return result("streamed", 0, f"{source}: auto streams ({sizes})")
    within = f"{sizes}; budget {budget_bytes / gib:.2f} GiB a device from {source}"
    if total <= budget_bytes:
        return result("replicated", total, within)
    if data_size > 1 and shard <= budget_bytes:
        return result("sharded", shard, within)
    if mode is True:
        raise ValueError(
            f"config.data.resident = True, but the store does not fit the devices: {within}. "
            "Set config.data.resident='auto' (stream from Zarr), use more devices on the data "
            "axis, or raise config.data.resident_fraction / resident_budget_mb."
        )
    return result("streamed", 0, f"does not fit: {within}")


def num_times(source: data.PairSource) -> int:
    """T: the states the training pairs read are time indices 0 .. T - 1."""
    return 1 + max(max(i, j) for i, j, _ in source.pairs)


def plan(config: ml_collections.ConfigDict, source: data.PairSource, mesh) -> Plan:
    """`decide` for this run: its training pairs' states, its mesh and its devices' memory."""
    dc = config.data
    mode = setting(dc.get("resident", False))
    stats = []
    if mode is not False:
        for device in mesh.local_devices:
            try:
                stats.append(device.memory_stats())
            except Exception:  # noqa: BLE001 - a backend without the query: no stats
                stats.append(None)
    budget = device_budget(
        stats, float(dc.get("resident_fraction", 0.5)), float(dc.get("resident_budget_mb", 0.0))
    )
    data_size = int(dict(mesh.shape).get(DATA_AXIS, 1))
    state_bytes = 4 * int(np.prod(source.shape))
    return decide(mode, num_times(source), state_bytes, data_size, budget)


@dataclasses.dataclass(frozen=True)
class ResidentStore:
    """The training states on the mesh and what `gather` needs besides them."""

    states: jax.Array  # [T_pad, H, W, C] float32, replicated or time sharded over `data`
    hours: jax.Array  # [T_pad] float32 hour of day UTC of each state, replicated
    crop: tuple[int, int]  # (h, w) of a training example: the crop or the full grid
    sharded: bool


def load(source: data.PairSource, chosen: Plan, mesh, crop: tuple[int, ...]) -> ResidentStore:
    """The training states 0 .. T - 1 on `mesh` as `chosen` (a resident `Plan`) places them.

    Each state is `source.state(t)`, the array the streamed path reads, so the bits are the
    same. Each process reads only the times its devices hold (sharded: T / data-axis devices;
    the time axis is padded with zero states to a multiple of it, never indexed), one block of
    times at a time (devices holding the same times share one read); host memory peaks at
    one device's share.
    """
    t_total = chosen.num_times
    ny, nx, c = source.shape
    sharded = chosen.placement == "sharded"
    data_size = int(dict(mesh.shape).get(DATA_AXIS, 1)) if sharded else 1
    padded = -(-t_total // data_size) * data_size
    spec = PartitionSpec(DATA_AXIS) if sharded else PartitionSpec()
    sharding = NamedSharding(mesh, spec)
    block: dict[tuple[int, int], np.ndarray] = {}  # the last block read (devices share it)
    start_s = time.perf_counter()

    def states(index: tuple[slice, ...]) -> np.ndarray:
        first, stop, _ = index[0].indices(padded)
        if (first, stop) not in block:
            block.clear()
            out = np.zeros((stop - first, ny, nx, c), np.float32)
            for t in range(first, min(stop, t_total)):
                out[t - first] = source.state(t)
            block[(first, stop)] = out
        return block[(first, stop)][(slice(None), *index[1:])]

    shape = (padded, ny, nx, c)
    index_map = sharding.addressable_devices_indices_map(shape)
    by_block = sorted(index_map.items(), key=lambda item: item[1][0].indices(padded))
    pieces = [jax.device_put(states(index), device) for device, index in by_block]
    array = jax.make_array_from_single_device_arrays(shape, sharding, pieces)
    hours = np.zeros(padded, np.float32)
    hours[:t_total] = [data.hour_of_day(source.times[t]) for t in range(t_total)]
    hours = jax.device_put(hours, mesh_lib.replicated(mesh))
    jax.block_until_ready(array)
    seconds = time.perf_counter() - start_s
    logging.info(
        "Device-resident training data: %d states [%d, %d, %d] (%.2f GiB) %s in %.1f s "
        "(%.2f GiB/s): %s",
        t_total,
        ny,
        nx,
        c,
        chosen.store_bytes / 2**30,
        "sharded over 'data'" if sharded else "replicated",
        seconds,
        chosen.store_bytes / 2**30 / max(seconds, 1e-9),
        chosen.reason,
    )
    size = tuple(int(s) for s in crop) or (ny, nx)
    return ResidentStore(states=array, hours=hours, crop=size, sharded=sharded)


class IndexSource:
    """The training pairs as int32 rows [index, time, verify, lead, 0, 0] (`COLUMNS`): the
    record k of a `data.PairSource` (or `WithHour`) without its arrays."""

    def __init__(self, source):
        self.pairs = np.asarray(source.pairs, np.int32).reshape(-1, 3)  # (i, j, lead)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> np.ndarray:
        i, j, lead = self.pairs[k]
        return np.array([k, i, j, lead, 0, 0], np.int32)


def crop_columns(size: tuple[int, ...], grid: tuple[int, int]):
    """`random_transform` of the index pipeline: fills the y0, x0 columns with
    `data.crop_offsets`, the streamed path's draw (no draw, zeros, without a crop)."""

    def fill(row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not size:
            return row
        row = row.copy()
        row[Y0], row[X0] = data.crop_offsets(tuple(size), tuple(grid), rng)
        return row

    return fill


def _slice_pairs(states, rows, crop):
    """(cond, target) [B, h, w, C]: the crops of rows [B, 6] cut from states [T, H, W, C]."""
    h, w = crop
    c = states.shape[-1]

    def one(t, y0, x0):
        return jax.lax.dynamic_slice(states, (t, y0, x0, 0), (1, h, w, c))[0]

    take = jax.vmap(one)
    return take(rows[:, TIME], rows[:, Y0], rows[:, X0]), take(
        rows[:, VERIFY], rows[:, Y0], rows[:, X0]
    )


def _sharded_slice_pairs(states, rows, crop, mesh):
    """`_slice_pairs` for states whose time axis is split over `data`: every device cuts the
    crops whose time it holds (zeros elsewhere), and a sum over `data` of the float32 bit
    patterns as integers assembles each crop from its one owner, bit for bit (a float sum
    would turn -0.0 into +0.0)."""
    h, w = crop

    def local(block, all_rows):
        n, c = block.shape[0], block.shape[-1]
        first = jax.lax.axis_index(DATA_AXIS) * n

        def one(t, y0, x0):
            local_t = t - first
            owned = (local_t >= 0) & (local_t < n)
            x = jax.lax.dynamic_slice(block, (jnp.clip(local_t, 0, n - 1), y0, x0, 0), (1, h, w, c))
            return jnp.where(owned, jax.lax.bitcast_convert_type(x[0], jnp.uint32), 0)

        take = jax.vmap(one)
        parts = [take(all_rows[:, col], all_rows[:, Y0], all_rows[:, X0]) for col in (TIME, VERIFY)]
        summed = jax.lax.psum(parts, DATA_AXIS)
        return tuple(jax.lax.bitcast_convert_type(p, jnp.float32) for p in summed)

    spec = PartitionSpec(DATA_AXIS)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec()),
    )(states, rows)


def gather(states, hours, rows, *, crop, mesh, sharded: bool) -> dict[str, jax.Array]:
    """The training batch of index rows [B, 6] (`COLUMNS`), as the streamed path builds it:
    cond / target [B, h, w, C] float32, lead [B] float32 hours, hour [B] float32 hour of day of
    cond, index [B] int32; split over the mesh's batch axes. Call it inside a jitted step."""
    rows = rows.astype(jnp.int32)
    if sharded:
        cond, target = _sharded_slice_pairs(states, rows, crop, mesh)
    else:
        cond, target = _slice_pairs(states, rows, crop)
    batch = {
        "cond": cond,
        "target": target,
        "lead": rows[:, LEAD].astype(jnp.float32),
        "hour": jnp.take(hours, rows[:, TIME]),
        "index": rows[:, INDEX],
    }
    return jax.lax.with_sharding_constraint(batch, mesh_lib.data_sharding(mesh))


def gather_fn(store: ResidentStore, mesh):
    """rows [B, 6] (a global array) -> batch, jitted on its own (tests, the benchmark); the train
    step calls `gather` inside its own jit instead."""
    fn = jax.jit(
        lambda states, hours, rows: gather(
            states, hours, rows, crop=store.crop, mesh=mesh, sharded=store.sharded
        )
    )
    return lambda rows: fn(store.states, store.hours, rows)
