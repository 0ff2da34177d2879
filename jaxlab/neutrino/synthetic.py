"""Writes a small IceCube dataset in the Kaggle "Neutrinos in Deep Ice" layout, with real physics.

Files (exactly the Kaggle names, columns and dtypes):

    sensor_geometry.csv            sensor_id, x, y, z (metres)
    train_meta.parquet             batch_id, event_id, first_pulse_index, last_pulse_index,
                                   azimuth, zenith (int64 x4, float64 x2)
    train/batch_<n>.parquet        event_id, sensor_id (int16), time (int64, ns),
                                   charge (float64, p.e.), auxiliary (bool)
    test_meta.parquet, test/...    the same without azimuth / zenith

Geometry: 86 strings on a hexagonal grid (125 m spacing, the 86 grid points closest to the
centre) x 60 DOMs (17 m apart, z from +500 m down), sensor_id = 60 * string + DOM.

Physics (the planted signal). A muon comes *from* the direction n(azimuth, zenith) =
(cos az sin zen, sin az sin zen, cos zen), i.e. it travels along u = -n, through a point p0 inside
the detector, passing p0 at time t0 ~ 1e4 ns; it emits light over a segment of random length
around p0 (starting / stopping tracks). A DOM at r sees direct Cherenkov light at

    t_geo = t0 + (s - rho / tan(theta_c)) / c + rho / (c_ice sin(theta_c))

where s = (r - p0) . u is the distance along the track and rho the closest-approach distance
(cos theta_c = 1 / n_ice), or light from the nearest segment end when the Cherenkov emission
point lies off the segment. The expected number of photo-electrons falls with distance,
mu = energy * exp(-rho / attenuation) / (1 + rho / 10 m), and each photon arrives late by an
exponential scattering delay growing with rho. Energies are Pareto-distributed, so event sizes are
long-tailed (capped at `max_pulses`). Dark-noise hits land on random DOMs at random times and are
mostly flagged auxiliary. The direction is learnable from pulse times against DOM positions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from jaxlab.data import ownership
from jaxlab.neutrino.format import batch_path, direction_vector, geometry_path, meta_path

NUM_STRINGS = 86
DOMS_PER_STRING = 60
NUM_SENSORS = NUM_STRINGS * DOMS_PER_STRING  # 5160
STRING_SPACING_M = 125.0
DOM_SPACING_M = 17.0
TOP_DOM_Z_M = 500.0

C_VACUUM = 0.299792458  # m / ns
N_ICE = 1.32
C_ICE = C_VACUUM / N_ICE
THETA_C = np.arccos(1.0 / N_ICE)

T0_NS = 1.0e4
ATTENUATION_M = 30.0
SCATTER_DELAY_NS = 5.0  # mean extra delay of scattered light: 5 ns + 1.5 ns per metre of rho
SCATTER_DELAY_NS_PER_M = 1.5
JITTER_NS = 5.0
TRACK_HALF_LENGTH_M = 150.0  # lit track: exponential lengths before and after p0
NOISE_HITS_MEAN = 8.0
NOISE_WINDOW_NS = (T0_NS - 3000.0, T0_NS + 6000.0)


def geometry() -> np.ndarray:
    """[5160, 3] float64 x, y, z of every DOM in metres, row = sensor_id."""
    span = np.arange(-7, 8)
    q, r = np.meshgrid(span, span, indexing="ij")
    x = STRING_SPACING_M * (q + 0.5 * r).ravel()
    y = STRING_SPACING_M * (np.sqrt(3.0) / 2.0 * r).ravel()
    # The 86 grid points nearest the centre; ties broken by angle so the choice is deterministic.
    order = np.lexsort((np.round(np.arctan2(y, x), 6), np.round(np.hypot(x, y), 6)))
    strings = np.stack([x[order], y[order]], axis=1)[:NUM_STRINGS]
    z = TOP_DOM_Z_M - DOM_SPACING_M * np.arange(DOMS_PER_STRING)
    xy = np.repeat(strings, DOMS_PER_STRING, axis=0)
    return np.concatenate([xy, np.tile(z, NUM_STRINGS)[:, None]], axis=1)


def simulate_event(
    rng: np.random.Generator,
    positions: np.ndarray,
    *,
    max_pulses: int,
    energy_scale: float,
    energy_cap: float,
    track_half_length: float = TRACK_HALF_LENGTH_M,
    noise_hits: float = NOISE_HITS_MEAN,
) -> tuple[dict[str, np.ndarray], float, float]:
    """One muon event: (pulses {sensor_id, time, charge, auxiliary} in time order, az, zen)."""
    while True:
        azimuth = rng.uniform(0.0, 2.0 * np.pi)
        zenith = np.arccos(rng.uniform(-1.0, 1.0))
        travel = -direction_vector(azimuth, zenith)
        radius, angle = 450.0 * np.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * np.pi)
        p0 = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-450, 450)])
        t0 = T0_NS + rng.normal(0.0, 30.0)
        energy = min(energy_scale * (rng.pareto(1.2) + 1.0), energy_cap)

        # The muon emits light between s = -start and s = +stop along its path.
        start, stop = rng.exponential(track_half_length, size=2) + 20.0
        t_geo, distance = light_arrival(positions, p0, travel, t0, -start, stop)
        expected = energy * np.exp(-distance / ATTENUATION_M) / (1.0 + distance / 10.0)
        counts = rng.poisson(expected)
        hit = np.flatnonzero(counts)
        if len(hit) >= 3:
            break

    sensors = np.repeat(hit, counts[hit])
    rho_p, t_geo = distance[sensors], t_geo[sensors]
    delay = rng.exponential(SCATTER_DELAY_NS + SCATTER_DELAY_NS_PER_M * rho_p)
    times = t_geo + delay + rng.normal(0.0, JITTER_NS, size=len(sensors))
    charges = rng.lognormal(0.0, 0.35, size=len(sensors))
    auxiliary = rng.uniform(size=len(sensors)) < 0.05 + 0.3 * (delay > 100.0)

    num_noise = rng.poisson(noise_hits)
    sensors = np.concatenate([sensors, rng.integers(0, len(positions), num_noise)])
    times = np.concatenate([times, rng.uniform(*NOISE_WINDOW_NS, size=num_noise)])
    charges = np.concatenate([charges, rng.lognormal(-0.3, 0.3, size=num_noise)])
    auxiliary = np.concatenate([auxiliary, rng.uniform(size=num_noise) < 0.8])

    order = np.argsort(times, kind="stable")[:max_pulses]  # The cap keeps the earliest pulses.
    pulses = {
        "sensor_id": sensors[order].astype(np.int16),
        "time": np.round(times[order]).astype(np.int64),
        "charge": np.round(charges[order], 3).astype(np.float64),
        "auxiliary": auxiliary[order].astype(bool),
    }
    return pulses, float(azimuth), float(zenith)


def light_arrival(
    positions: np.ndarray, p0: np.ndarray, travel: np.ndarray, t0: float, s_min: float, s_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Direct-light arrival time [N] and photon path length [N] at each DOM.

    The Cherenkov photon reaching a DOM leaves the track at s_e = s - rho / tan(theta_c); when
    s_e falls outside the lit segment [s_min, s_max], the light comes from the nearest segment end
    instead (straight to the DOM at c_ice).
    """
    rel = positions - p0
    along = rel @ travel  # s, metres along the track
    rho = np.linalg.norm(rel - along[:, None] * travel, axis=1)
    s_emit = along - rho / np.tan(THETA_C)
    inside = (s_emit >= s_min) & (s_emit <= s_max)
    s_clip = np.clip(s_emit, s_min, s_max)
    end_distance = np.linalg.norm(rel - s_clip[:, None] * travel, axis=1)
    cherenkov_path = rho / np.sin(THETA_C)
    distance = np.where(inside, cherenkov_path, end_distance)
    t = t0 + np.where(inside, s_emit, s_clip) / C_VACUUM + distance / C_ICE
    return t, distance


def write_geometry(root: str) -> None:
    xyz = geometry()
    table = pa.table(
        {
            "sensor_id": pa.array(np.arange(NUM_SENSORS), pa.int64()),
            "x": pa.array(np.round(xyz[:, 0], 2)),
            "y": pa.array(np.round(xyz[:, 1], 2)),
            "z": pa.array(np.round(xyz[:, 2], 2)),
        }
    )
    pa_csv.write_csv(table, ownership.check_not_overwriting(geometry_path(root), key="data.root"))


def write_split(
    root: str,
    split: str,
    *,
    batch_ids: list[int],
    events_per_batch: int,
    first_event_id: int,
    seed: int,
    with_angles: bool,
    physics: Mapping[str, float],
) -> None:
    """Writes `<split>_meta.parquet` and `<split>/batch_<n>.parquet` for the given batch ids.

    `physics`: `simulate_event`'s keyword arguments (event sizes and physics; `data.event_physics`
    reads them from the config)."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    positions = geometry()
    meta_columns: dict[str, list] = {
        k: [] for k in ("batch_id", "event_id", "first_pulse_index", "last_pulse_index")
    }
    angles: dict[str, list] = {"azimuth": [], "zenith": []}
    event_id = first_event_id
    for batch_id in batch_ids:
        rng = np.random.default_rng([seed, batch_id])
        columns: dict[str, list] = {k: [] for k in ("event_id", "sensor_id", "time")}
        columns.update(charge=[], auxiliary=[])
        first = 0
        for _ in range(events_per_batch):
            pulses, azimuth, zenith = simulate_event(rng, positions, **physics)
            n = len(pulses["time"])
            columns["event_id"].append(np.full(n, event_id, np.int64))
            for key, values in pulses.items():
                columns[key].append(values)
            meta_columns["batch_id"].append(batch_id)
            meta_columns["event_id"].append(event_id)
            meta_columns["first_pulse_index"].append(first)
            meta_columns["last_pulse_index"].append(first + n - 1)  # inclusive, as on Kaggle
            angles["azimuth"].append(azimuth)
            angles["zenith"].append(zenith)
            first += n
            event_id += 1
        table = pa.table(
            {
                "event_id": pa.array(np.concatenate(columns["event_id"]), pa.int64()),
                "sensor_id": pa.array(np.concatenate(columns["sensor_id"]), pa.int16()),
                "time": pa.array(np.concatenate(columns["time"]), pa.int64()),
                "charge": pa.array(np.concatenate(columns["charge"]), pa.float64()),
                "auxiliary": pa.array(np.concatenate(columns["auxiliary"]), pa.bool_()),
            }
        )
        _write_parquet(table, batch_path(root, split, batch_id))
    meta = {k: pa.array(np.asarray(v, np.int64), pa.int64()) for k, v in meta_columns.items()}
    if with_angles:
        meta.update({k: pa.array(np.asarray(v, np.float64)) for k, v in angles.items()})
    _write_parquet(pa.table(meta), meta_path(root, split))


def _write_parquet(table: pa.Table, path: str) -> None:
    # Written under a temporary name then renamed: processes of a multi-host job may race.
    path = ownership.check_not_overwriting(path, key="data.root")  # below a claimed folder only
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_dataset(
    root: str,
    *,
    train_batches: int,
    test_batches: int,
    events_per_batch: int,
    seed: int,
    physics: Mapping[str, float],
) -> None:
    """Writes geometry, train split (batches 1..train_batches) and test split; idempotent.

    `physics`: `simulate_event`'s keyword arguments, as for `write_split`.

    `root` must have been claimed with `jaxlab.data.ownership.claim_synthetic_dir` (as
    `data.prepare` does): replacing a file is refused outside a claimed folder.
    """
    os.makedirs(root, exist_ok=True)
    done = os.path.join(root, ".synthetic_done")
    if os.path.exists(done):
        return
    write_geometry(root)
    write_split(
        root,
        "train",
        batch_ids=list(range(1, train_batches + 1)),
        events_per_batch=events_per_batch,
        first_event_id=24,  # Kaggle's first train event id
        seed=seed,
        with_angles=True,
        physics=physics,
    )
    write_split(
        root,
        "test",
        batch_ids=list(range(train_batches + 1, train_batches + test_batches + 1)),
        events_per_batch=events_per_batch,
        first_event_id=10_000_000,
        seed=seed,
        with_angles=False,
        physics=physics,
    )
    with open(done, "w") as f:
        f.write("ok\n")
