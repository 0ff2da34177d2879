"""Kaggle submission from new, unlabelled IceCube events: batch parquet(s) + geometry -> CSV.

    predict(model, inputs, out) -> [out/submission.csv]   (event_id,azimuth,zenith; radians)

`model` is a training workdir or an exported bundle (`jaxlab export`); both give bitwise the same
file. `inputs` is a folder in the Kaggle layout (`sensor_geometry.csv`, `test/batch_<n>.parquet`,
optionally `test_meta.parquet`), a folder of `batch_<n>.parquet` files, one batch file, or several
separated by commas. `geometry=` names `sensor_geometry.csv` when it is not found in the inputs'
folder or one of its two parents.

Events are found in each batch file itself: the `event_id` column (the Kaggle files' index),
each event's pulses in consecutive rows, so no meta table is needed and a test parquet alone is
enough. When a `test_meta.parquet` is found in a Kaggle folder, or given with `meta=`, it is a
cross-check only: every meta event of the file must own the rows it names, and the file must
hold no event the meta table lacks.

Memory is bounded by one batch file: files are read, packed (`data_packing`, the training
shapes), predicted and appended to the CSV one at a time. Every event of the inputs appears
exactly once (an event_id in two files is an error); azimuth in [0, 2 pi) and zenith in [0, pi]
are checked before each file's rows are written. The log ends with events/s and a summary line.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import loop, portable
from jaxlab.neutrino import data, data_packing, data_pipeline, metrics
from jaxlab.neutrino import model as model_lib
from jaxlab.neutrino.format import geometry_path, meta_path

SUBMISSION_FILE = "submission.csv"
HEADER = ("event_id", "azimuth", "zenith")
_BATCH_NAME = re.compile(r"batch_(\d+)\.parquet$")


def batch_files(inputs: str) -> list[str]:
    """The batch parquet files named by `inputs` (see the module docstring), in batch-id order."""
    if "," in inputs:
        files = [p.strip() for p in inputs.split(",") if p.strip()]
    elif os.path.isdir(inputs):
        folder = (
            os.path.join(inputs, "test") if os.path.isdir(os.path.join(inputs, "test")) else inputs
        )
        files = glob.glob(os.path.join(folder, "batch_*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"{inputs}: no batch_<n>.parquet files (looked in {folder}); expected the Kaggle "
                "test layout: sensor_geometry.csv and test/batch_<n>.parquet."
            )
    else:
        files = [inputs]
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such input file (a Kaggle batch_<n>.parquet).")

    def key(path: str) -> tuple[int, str]:
        match = _BATCH_NAME.search(path)
        return (int(match.group(1)) if match else -1, path)

    return sorted(files, key=key)


def find_geometry(inputs: str, files: Sequence[str]) -> str:
    """`sensor_geometry.csv` in the inputs' folder or one of its two parents."""
    start = inputs if os.path.isdir(inputs) else os.path.dirname(os.path.abspath(files[0]))
    folder = os.path.abspath(start)
    for _ in range(3):
        path = geometry_path(folder)
        if os.path.isfile(path):
            return path
        folder = os.path.dirname(folder)
    raise FileNotFoundError(
        f"{inputs}: no sensor_geometry.csv in {start} or its two parents; pass geometry=PATH "
        "(--geometry) to the Kaggle sensor_geometry.csv."
    )


def event_runs(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(event_id [N], first row [N], end row [N], exclusive) of each event in a batch file.

    An event is a run of equal `event_id` values; an event_id in two runs is an error.
    """
    path = columns["_path"]
    if "event_id" not in columns:
        raise ValueError(
            f"{path}: missing column 'event_id' (the Kaggle batch files' index); predict finds "
            "each event's pulses by it."
        )
    ids = columns["event_id"]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1])
    ends = np.append(starts[1:], len(ids))
    event_ids = ids[starts].astype(np.int64)
    unique, counts = np.unique(event_ids, return_counts=True)
    if len(unique) != len(event_ids):
        split = unique[counts > 1]
        raise ValueError(
            f"{path}: column 'event_id': the pulses of {len(split)} event(s) (e.g. event_id "
            f"{int(split[0])}) are not in consecutive rows; expected each event's pulses together."
        )
    return event_ids, starts, ends


class FileEvents:
    """Raw event records of one batch file (what `data.IceCubeSource[i]` returns, unlabelled)."""

    def __init__(self, columns: dict[str, np.ndarray], event_ids, starts, ends):
        self.columns, self.event_ids, self.starts, self.ends = columns, event_ids, starts, ends

    def __len__(self) -> int:
        return len(self.event_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = slice(int(self.starts[i]), int(self.ends[i]))
        c = self.columns
        return {
            "sensor_id": c["sensor_id"][rows].astype(np.int64),
            "time": c["time"][rows].astype(np.float64),
            "charge": c["charge"][rows].astype(np.float64),
            "auxiliary": c["auxiliary"][rows].astype(bool),
            "event_id": np.int64(self.event_ids[i]),
            "azimuth": 0.0,
            "zenith": 0.0,
        }

    def raw_block(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Events `indices` as one raw block (`data.raw_block`'s layout), gathered at once."""
        starts = self.starts[indices]
        counts = (self.ends[indices] - starts).astype(np.int64)
        rows = data.concat_ranges(starts, counts)
        c, zeros = self.columns, np.zeros(len(indices))
        return {
            "sensor_id": c["sensor_id"][rows].astype(np.int64),
            "time": c["time"][rows].astype(np.float64),
            "charge": c["charge"][rows].astype(np.float64),
            "auxiliary": c["auxiliary"][rows].astype(bool),
            "pulse_count": counts,
            "event_id": self.event_ids[indices].astype(np.int64),
            "azimuth": zeros,
            "zenith": zeros,
        }


def cross_check_meta(meta_path: str, columns: dict[str, np.ndarray], event_ids) -> None:
    """The meta rows of this file's batch id own their rows, and cover every event of the file."""
    path = columns["_path"]
    match = _BATCH_NAME.search(path)
    if match is None:
        raise ValueError(
            f"{path}: cannot tell its batch_id (name is not batch_<n>.parquet) to check it against "
            f"{meta_path}; rename it or predict without the meta file."
        )
    meta = data.read_meta_file(meta_path, [int(match.group(1))])
    data.check_events_in_file(meta, columns)
    extra = np.setdiff1d(event_ids, meta["event_id"])
    if len(extra):
        raise ValueError(
            f"{path}: holds {len(extra)} event(s) that {meta_path} does not list for batch_id "
            f"{match.group(1)} (e.g. event_id {int(extra[0])})."
        )


def check_angles(path: str, event_ids, azimuth, zenith, vectors) -> None:
    """Finite, non-zero predicted directions; azimuth in [0, 2 pi), zenith in [0, pi]."""
    norm = np.linalg.norm(vectors, axis=-1)
    bad = ~np.isfinite(norm) | (norm <= 0)
    bad |= ~((azimuth >= 0) & (azimuth < 2 * np.pi) & (zenith >= 0) & (zenith <= np.pi))
    if bad.any():
        i = int(np.argmax(bad))
        raise RuntimeError(
            f"{path}: the model's direction for event_id {int(event_ids[i])} is {vectors[i]} "
            f"(azimuth {azimuth[i]}, zenith {zenith[i]}); expected a finite non-zero vector with "
            f"azimuth in [0, 2 pi) and zenith in [0, pi] ({int(bad.sum())} such events)."
        )


def predict_file(apply, params, events: FileEvents, processor, spec, packs: int) -> np.ndarray:
    """[N, 3] float32 predicted directions of `events`, in their order (one pass, padded packs)."""
    outputs, keeps, ids = [], [], []
    batches = data_pipeline.eval_batches(
        events, processor, spec, packs_per_batch=packs, process_index=0, process_count=1
    )
    for _, full in batches:
        outputs.append(apply(params, data_packing.model_inputs(full)))
        keeps.append(full["event_valid"])
        ids.append(full["event_id"][full["event_valid"]])
    vectors = [p[keep] for p, keep in zip(jax.device_get(outputs), keeps, strict=True)]
    got = np.concatenate(ids)
    if not np.array_equal(got, events.event_ids):  # packing keeps the stream order
        raise RuntimeError(f"packing lost or reordered events: {len(got)} of {len(events)}.")
    return np.concatenate(vectors)


def network(config: ml_collections.ConfigDict, packs: int | None = None) -> portable.Network:
    """The predict network: `data_packing.MODEL_KEYS` arrays of `packs` (default
    `eval.global_batch_size`) packs, less the target `direction` -> {"direction": [G, E, 3]} unit
    vectors (what a bundle exports as its StableHLO predict)."""
    net = model_lib.make_model(config)
    spec = data_packing.PackSpec.from_config(config)
    batch = jax.eval_shape(
        lambda: model_lib.dummy_batch(spec, packs or config.eval.global_batch_size)
    )
    target = batch.pop("direction")  # the model reads only its shape (E events per pack)

    def fn(params, inputs):
        full = inputs | {"direction": jnp.zeros(target.shape, target.dtype)}
        return {"direction": net.apply({"params": params}, full, deterministic=True)}

    return portable.Network(fn=fn, inputs=batch)


def predict(
    model: str,
    inputs: str,
    out: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    geometry: str | None = None,
    meta: str | None = None,
    packs_per_batch: int | str | None = None,
    engine: str = "python",
) -> list[str]:
    """Writes `out/submission.csv` for every event of `inputs`; returns [its path].

    Options (strings from the command line): geometry=PATH, meta=PATH (a test_meta.parquet to
    cross-check against), packs_per_batch=N (packs per device call; default
    eval.global_batch_size), engine (python, the default: the model's code; stablehlo: the
    bundle's StableHLO predict, without the model's code, at its packs per call; auto: stablehlo
    when the bundle carries one).
    """
    if portable.use_artefact(model, engine):
        config, info = portable.bundle_config(model, "jaxlab.neutrino")
        hlo, params = portable.load_callable(model), None
        packs_per_batch = portable.input_batch(model)

        def apply(_, batch):  # the artefact takes no target direction
            return hlo({k: v for k, v in batch.items() if k != "direction"})["direction"]

    else:
        config, params, info = bundle_lib.load_model(model, config, task="jaxlab.neutrino")
        net = model_lib.make_model(config)
        apply = jax.jit(lambda p, batch: net.apply({"params": p}, batch, deterministic=True))
    files = batch_files(inputs)
    geometry = geometry or find_geometry(inputs, files)
    if meta is None and os.path.isdir(inputs):
        found = meta_path(inputs, "test")
        meta = found if os.path.isfile(found) else None
    xyz = data.read_geometry_file(geometry)
    processor = data_packing.EventProcessor(
        xyz, config.data.max_doms, config.data.max_pulses_per_dom
    )
    spec = data_packing.PackSpec.from_config(config)
    params = jax.device_put(params)
    packs = int(packs_per_batch or config.eval.global_batch_size)
    logging.info(
        "Predicting %d batch file(s) with step %d of %s (geometry %s, meta %s)",
        len(files),
        info["checkpoint_step"],
        model,
        geometry,
        meta or "none: events from event_id",
    )

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, SUBMISSION_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    seen: dict[int, str] = {}
    start = time.perf_counter()
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(HEADER)
        for file in loop.progress_bar(files, len(files), desc="predict"):
            columns = data.read_pulses(file, len(xyz))
            event_ids, starts, ends = event_runs(columns)
            if meta:
                cross_check_meta(meta, columns, event_ids)
            for event_id in event_ids.tolist():
                if event_id in seen:
                    raise ValueError(f"{file}: event_id {event_id} is also in {seen[event_id]}.")
                seen[event_id] = file
            events = FileEvents(columns, event_ids, starts, ends)
            vectors = predict_file(apply, params, events, processor, spec, packs)
            azimuth, zenith = metrics.vector_to_angles(vectors)
            azimuth = np.where(azimuth >= 2 * np.pi, 0.0, azimuth)  # mod may round up to 2 pi
            check_angles(file, event_ids, azimuth, zenith, vectors)
            writer.writerows(
                zip(event_ids.tolist(), azimuth.tolist(), zenith.tolist(), strict=True)
            )
            del columns, events
    os.replace(tmp, path)
    elapsed = time.perf_counter() - start
    logging.info("Prediction speed: %.1f events/s", len(seen) / max(elapsed, 1e-9))
    logging.info(
        "Wrote %s: %d events from %d batch file(s) in %.1f s (%.1f events/s), model step %d.",
        path,
        len(seen),
        len(files),
        elapsed,
        len(seen) / max(elapsed, 1e-9),
        info["checkpoint_step"],
    )
    return [path]


def demo_input(config: ml_collections.ConfigDict, workdir: str) -> str:
    """A held-out, unlabelled input in the Kaggle test layout: `<workdir>/predict_input/` with
    `sensor_geometry.csv` and `test/batch_<n>.parquet` (the first test batch of the data), no meta.
    """
    root = data.prepare(config, workdir)
    tests = (
        batch_files(os.path.join(root, "test")) if os.path.isdir(os.path.join(root, "test")) else []
    )
    if not tests:
        raise FileNotFoundError(f"{root}: no test/batch_<n>.parquet to predict on.")
    folder = os.path.join(workdir, "predict_input")
    os.makedirs(os.path.join(folder, "test"), exist_ok=True)
    shutil.copyfile(geometry_path(root), geometry_path(folder))
    shutil.copyfile(tests[0], os.path.join(folder, "test", os.path.basename(tests[0])))
    return folder
