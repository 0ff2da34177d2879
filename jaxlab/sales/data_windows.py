"""The panel's features, chronological splits and forecasting windows; generated windows.

1. `make_panel_arrays`: chronological split of the whole timeline (70 / 15 / 15 %), features
   (day-of-week one-hot, is-weekend, running mean rating in [0, 1], log(reviews + 1) normalised)
   and per-product min-max sales normalisation with statistics of the training period only.
2. `WindowSource`: one record per (product, start day): 30 days of history -> 7 target days. A
   window belongs to the split holding all its target days; its history may reach back into the
   previous split (that is observed past, not leakage).
3. Generated sequences (`write_generated` / `read_generated`, parquet) and `AugmentedSource`, the
   training sets of the augmentation study.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging

from jaxlab.sales import data

SPLITS = ("train", "val", "test")
NUM_TEMPORAL = 8  # day-of-week one-hot (Monday first) + is_weekend
NUM_FEATURES = 10  # temporal + running mean rating + normalised log(review count + 1)


# ----------------------------------------------------------------------------------------------
# 1. Split, features, normalisation.


def split_bounds(first: np.datetime64, last: np.datetime64, fractions=(0.7, 0.15)):
    """(train_end, val_end): exclusive end days of train and val; test runs to `last`."""
    num_days = int((last - first) / np.timedelta64(1, "D")) + 1
    train_end = first + np.timedelta64(int(round(fractions[0] * num_days)), "D")
    val_end = first + np.timedelta64(int(round(sum(fractions) * num_days)), "D")
    return train_end, val_end


@dataclasses.dataclass
class PanelArrays:
    """All products' daily series concatenated; product p owns rows offsets[p]:offsets[p+1]."""

    product_ids: list[str]
    offsets: np.ndarray  # [P + 1] int64
    dates: np.ndarray  # [N] datetime64[D]
    sales: np.ndarray  # [N] float32, units
    sales_norm: np.ndarray  # [N] float32, (sales - min) / scale with train-period statistics
    features: np.ndarray  # [N, NUM_FEATURES] float32
    sales_min: np.ndarray  # [P] float32
    sales_scale: np.ndarray  # [P] float32 (max - min, or 1 where max == min)
    train_end: np.datetime64
    val_end: np.datetime64


def make_panel_arrays(panel: pd.DataFrame, fractions=(0.7, 0.15)) -> PanelArrays:
    """Features and train-period normalisation of the panel (see module docstring)."""
    dates_all = panel["date"].to_numpy().astype("datetime64[D]")
    train_end, val_end = split_bounds(dates_all.min(), dates_all.max(), fractions)
    in_train = dates_all < train_end
    max_count = float(panel["review_count"].to_numpy()[in_train].max(initial=0))
    count_scale = np.log1p(max_count) if max_count > 0 else 1.0

    product_ids, offsets, blocks = [], [0], []
    mins, scales = [], []
    dropped = 0
    for product, frame in panel.groupby("product_id", sort=True):
        dates = frame["date"].to_numpy().astype("datetime64[D]")
        sales = frame["sales"].to_numpy().astype(np.float32)
        train_sales = sales[dates < train_end]
        if len(train_sales) == 0:
            dropped += 1  # no training-period days: no normalisation statistics
            continue
        low, high = float(train_sales.min()), float(train_sales.max())
        scale = high - low if high > low else 1.0
        counts = frame["review_count"].to_numpy().astype(np.float64)
        score_sums = counts * frame["review_score_mean"].to_numpy()
        cum_counts, cum_sums = np.cumsum(counts), np.cumsum(score_sums)
        rating = np.where(cum_counts > 0, (cum_sums / np.maximum(cum_counts, 1) - 1.0) / 4.0, 0.5)
        features = np.concatenate(
            [
                temporal_features(dates),
                rating[:, None],
                (np.log1p(counts) / count_scale)[:, None],
            ],
            axis=1,
        ).astype(np.float32)
        product_ids.append(product)
        offsets.append(offsets[-1] + len(frame))
        mins.append(low)
        scales.append(scale)
        blocks.append((dates, sales, (sales - low) / scale, features))
    if dropped:
        logging.info("%d product(s) have no training-period days and are left out.", dropped)
    if not blocks:
        raise ValueError("No product has days in the training period; check the panel dates.")
    return PanelArrays(
        product_ids=product_ids,
        offsets=np.asarray(offsets, np.int64),
        dates=np.concatenate([b[0] for b in blocks]),
        sales=np.concatenate([b[1] for b in blocks]),
        sales_norm=np.concatenate([b[2] for b in blocks]).astype(np.float32),
        features=np.concatenate([b[3] for b in blocks]),
        sales_min=np.asarray(mins, np.float32),
        sales_scale=np.asarray(scales, np.float32),
        train_end=train_end,
        val_end=val_end,
    )


def temporal_features(dates: np.ndarray) -> np.ndarray:
    """[N] datetime64[D] -> [N, 8]: day-of-week one-hot (Monday = 0) and is_weekend."""
    dow = (dates.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    one_hot = np.eye(7, dtype=np.float32)[dow]
    return np.concatenate([one_hot, (dow >= 5).astype(np.float32)[:, None]], axis=1)


# ----------------------------------------------------------------------------------------------
# 2. Windows.


class WindowSource:
    """Random-access windows of one split; records are dicts of numpy arrays:

    history_sales [H], history_features [H, 10], target_features [7(T), 8], target [T] (normalised
    sales), sales_min [], sales_scale [] (to turn normalised values back into units), product [],
    index [] (the window's index in this source).
    """

    def __init__(self, arrays: PanelArrays, split: str, history: int, horizon: int, stride: int):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        self.arrays, self.split = arrays, split
        self.history, self.horizon = history, horizon
        windows = []
        for p in range(len(arrays.product_ids)):
            lo, hi = arrays.offsets[p], arrays.offsets[p + 1]
            starts = np.arange(0, hi - lo - history - horizon + 1, stride)
            first_target = arrays.dates[lo + starts + history]
            last_target = first_target + np.timedelta64(horizon - 1, "D")
            if split == "train":
                ok = last_target < arrays.train_end
            elif split == "val":
                ok = (first_target >= arrays.train_end) & (last_target < arrays.val_end)
            else:
                ok = first_target >= arrays.val_end
            windows.append(np.stack([np.full(ok.sum(), p), lo + starts[ok]], axis=1))
        self.windows = np.concatenate(windows).astype(np.int64)  # [W, 2]: product, row offset

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        p, row = self.windows[i]
        a, h, t = self.arrays, self.history, self.horizon
        return {
            "history_sales": a.sales_norm[row : row + h],
            "history_features": a.features[row : row + h],
            "target_features": a.features[row + h : row + h + t, :NUM_TEMPORAL],
            "target": a.sales_norm[row + h : row + h + t],
            "sales_min": a.sales_min[p],
            "sales_scale": a.sales_scale[p],
            "product": np.int32(p),
            "index": np.int32(i),
        }

    def target_dates(self) -> np.ndarray:
        """[W] first target day of each window."""
        return self.arrays.dates[self.windows[:, 1] + self.history]


def load_windows(config: ml_collections.ConfigDict, panel_path: str) -> dict[str, WindowSource]:
    """The three splits' window sources of the panel."""
    arrays = make_panel_arrays(data.read_panel(panel_path), tuple(config.data.split_fractions))
    dc = config.data
    sources = {
        split: WindowSource(arrays, split, dc.history, dc.horizon, dc.window_stride)
        for split in SPLITS
    }
    for split, source in sources.items():
        if len(source) == 0:
            raise ValueError(
                f"{panel_path}: the {split} split has no {dc.history}+{dc.horizon}-day window; "
                "the timeline is too short for data.split_fractions."
            )
    logging.info(
        "Windows: %s over %d products; train < %s <= val < %s <= test",
        {s: len(v) for s, v in sources.items()},
        len(arrays.product_ids),
        arrays.train_end,
        arrays.val_end,
    )
    return sources


# ----------------------------------------------------------------------------------------------
# 3. Generated sequences and augmentation.


def write_generated(path: str, source: WindowSource, samples: np.ndarray) -> None:
    """samples [W, S, T] (normalised, one row per window of `source`) -> parquet.

    Columns: window (index in the source), sample, product_id, target_start (date), target
    (list of T float32, normalised), target_units (list of T float32, units).
    """
    num_windows, num_samples, horizon = samples.shape
    if num_windows != len(source):
        raise ValueError(
            f"samples has {num_windows} windows, the {source.split} split {len(source)}"
        )
    window = np.repeat(np.arange(num_windows), num_samples)
    product = source.windows[window, 0]
    scale = source.arrays.sales_scale[product][:, None]
    low = source.arrays.sales_min[product][:, None]
    flat = samples.reshape(-1, horizon).astype(np.float32)
    table = pa.table(
        {
            "window": pa.array(window, pa.int64()),
            "sample": pa.array(np.tile(np.arange(num_samples), num_windows), pa.int32()),
            "product_id": pa.array([source.arrays.product_ids[p] for p in product]),
            "target_start": pa.array(source.target_dates()[window]),
            "target": pa.FixedSizeListArray.from_arrays(flat.ravel(), horizon),
            "target_units": pa.FixedSizeListArray.from_arrays(
                (flat * scale + low).ravel(), horizon
            ),
        }
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Written under a temporary name then renamed: an interrupted run never leaves half a file.
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_generated(path: str, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(window [M] int64, target [M, T] float32) from a `write_generated` parquet."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: generated sequences not found (run training first).")
    table = pq.read_table(path, columns=["window", "target"])
    target = np.asarray(table.column("target").combine_chunks().flatten(), np.float32)
    return table.column("window").to_numpy(), target.reshape(-1, horizon)


class AugmentedSource:
    """Real windows followed by `round(ratio * len(real))` generated ones (or only generated).

    A generated record is the real window's record (same history and features) with its target
    replaced by a generated sequence; which generated rows are used is fixed by `seed`.
    """

    def __init__(
        self,
        real: WindowSource,
        window: np.ndarray,
        target: np.ndarray,
        *,
        ratio: float,
        seed: int,
        include_real: bool = True,
    ):
        count = len(target) if not include_real else min(len(target), round(ratio * len(real)))
        self.real, self.include_real = real, include_real
        chosen = np.random.default_rng(seed).permutation(len(target))[:count]
        self.window, self.target = window[chosen], target[chosen]
        self.num_real = len(real) if include_real else 0

    def __len__(self) -> int:
        return self.num_real + len(self.target)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if i < self.num_real:
            return {**self.real[i], "is_synthetic": np.int32(0)}
        j = i - self.num_real
        record = self.real[int(self.window[j])]
        return {
            **record,
            "target": self.target[j],
            "index": np.int32(i),
            "is_synthetic": np.int32(1),
        }


class Subset:
    """Records `indices` of `source`, re-indexed 0..len-1 (record "index" keeps the original)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def spread_subset(source, max_size: int):
    """At most `max_size` records evenly spread over `source` (all of them when max_size <= 0)."""
    if max_size <= 0 or len(source) <= max_size:
        return source
    return Subset(source, np.linspace(0, len(source) - 1, max_size).round().astype(np.int64))
