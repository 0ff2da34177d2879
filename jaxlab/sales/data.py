"""Olist CSVs -> product-day panel (parquet) -> normalised features -> forecasting windows.

Stages, each a function a test can drive on a hand-made order set:

1. `read_csv`: one Olist CSV through `pyarrow.csv` (quoted newlines allowed), only the columns
   needed, timestamps and integers parsed here with one clear error naming the file, the column,
   the record and the bad value.
2. `build_panel`: orders (purchase day, status) x items (one row = one unit sold) x reviews (score,
   dated by the day the review was written, so a feature never uses a review before it existed)
   -> one row per product and day, every day of a product's range (first to last sale) filled with
   zero sales; products with fewer than `min_sales` units are dropped (and counted).
3. `make_panel_arrays`: chronological split of the whole timeline (70 / 15 / 15 %), features
   (day-of-week one-hot, is-weekend, running mean rating in [0, 1], log(reviews + 1) normalised)
   and per-product min-max sales normalisation with statistics of the training period only.
4. `WindowSource`: one record per (product, start day): 30 days of history -> 7 target days. A
   window belongs to the split holding all its target days; its history may reach back into the
   previous split (that is observed past, not leakage).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from absl import logging

from jaxlab.sales import synthetic

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SPLITS = ("train", "val", "test")
NUM_TEMPORAL = 8  # day-of-week one-hot (Monday first) + is_weekend
NUM_FEATURES = 10  # temporal + running mean rating + normalised log(review count + 1)
PANEL_COLUMNS = ("product_id", "date", "sales", "review_count", "review_score_mean")


# ----------------------------------------------------------------------------------------------
# 1. CSV reading.


def read_csv(path: str, columns: dict[str, str]) -> pd.DataFrame:
    """Reads `columns` ({name: "string" | "timestamp" | "int"}) of one Olist CSV.

    Timestamps must be "YYYY-MM-DD HH:MM:SS" and non-empty; ints must be integers. Any other value
    raises ValueError naming the file, the column, the record number and the value.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: Olist CSV not found. Download the Olist dataset (Kaggle 'olistbr/"
            "brazilian-ecommerce') and point config.data.csv_dir at the folder holding it."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    missing = [name for name in columns if name not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {header}.")
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(columns),
            column_types={name: pa.string() for name in columns},
            strings_can_be_null=False,
        ),
    )
    frame = table.to_pandas()
    for name, kind in columns.items():
        if kind == "timestamp":
            frame[name] = _parse(path, name, frame[name], _to_timestamp, "a 'YYYY-MM-DD HH:MM:SS'")
        elif kind == "int":
            frame[name] = _parse(path, name, frame[name], _to_int, "an integer")
        elif kind != "string":
            raise ValueError(f"read_csv: unknown column kind {kind!r} for {name!r}.")
    return frame


def _to_timestamp(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format=TIME_FORMAT, errors="coerce")


def _to_int(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.where(numbers == np.round(numbers))


def _parse(path: str, name: str, values: pd.Series, parse, expected: str) -> pd.Series:
    parsed = parse(values)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{path}: column {name!r}, record {i + 1} (of {len(values)}): value {values.iloc[i]!r}"
            f" is not {expected} ({len(bad)} bad value(s) in this column)."
        )
    return parsed.astype(np.int64) if parsed.dtype.kind == "f" else parsed


# ----------------------------------------------------------------------------------------------
# 2. The product-day panel.


def build_panel(
    csv_dir: str,
    *,
    min_sales: int,
    exclude_statuses: Sequence[str] = ("canceled", "unavailable"),
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The product-day panel (columns `PANEL_COLUMNS`) and a report of what was kept/dropped.

    sales: item rows of the product in orders bought that day (status not excluded).
    review_count / review_score_mean: reviews written that day of orders holding the product
    (mean 0 where count is 0).
    """
    orders = read_csv(
        os.path.join(csv_dir, synthetic.ORDERS_FILE),
        {"order_id": "string", "order_status": "string", "order_purchase_timestamp": "timestamp"},
    )
    items = read_csv(
        os.path.join(csv_dir, synthetic.ITEMS_FILE), {"order_id": "string", "product_id": "string"}
    )
    reviews = read_csv(
        os.path.join(csv_dir, synthetic.REVIEWS_FILE),
        {"order_id": "string", "review_score": "int", "review_creation_date": "timestamp"},
    )
    bad_score = ~reviews["review_score"].between(1, 5)
    if bad_score.any():
        value = reviews["review_score"][bad_score].iloc[0]
        raise ValueError(
            f"{os.path.join(csv_dir, synthetic.REVIEWS_FILE)}: column 'review_score' holds "
            f"{value}; expected 1..5."
        )

    kept_orders = orders[~orders["order_status"].isin(list(exclude_statuses))]
    kept_orders = kept_orders.assign(date=kept_orders["order_purchase_timestamp"].dt.floor("D"))
    sold = items.merge(kept_orders[["order_id", "date"]], on="order_id", how="inner")
    sales = sold.groupby(["product_id", "date"]).size().rename("sales")
    totals = sales.groupby(level="product_id").sum()
    keep = totals.index[totals >= min_sales]
    report = {
        "orders": len(orders),
        "orders_kept": len(kept_orders),
        "items": len(items),
        "products_sold": len(totals),
        "products_kept": len(keep),
        "products_below_min_sales": int((totals < min_sales).sum()),
        "reviews": len(reviews),
    }

    # Reviews -> products of the reviewed order, dated by the day the review was written.
    order_products = sold[["order_id", "product_id"]].drop_duplicates()
    scored = reviews.merge(order_products, on="order_id", how="inner")
    scored = scored.assign(date=scored["review_creation_date"].dt.floor("D"))
    review_stats = scored.groupby(["product_id", "date"])["review_score"].agg(["count", "mean"])

    frames = []
    for product in sorted(keep):
        product_sales = sales.loc[product]
        days = pd.date_range(product_sales.index.min(), product_sales.index.max(), freq="D")
        frame = pd.DataFrame({"date": days})
        frame["sales"] = product_sales.reindex(days, fill_value=0).to_numpy()
        if product in review_stats.index.get_level_values(0):
            stats = review_stats.loc[product].reindex(days)
            frame["review_count"] = stats["count"].fillna(0).to_numpy()
            frame["review_score_mean"] = stats["mean"].fillna(0.0).to_numpy()
        else:
            frame["review_count"] = 0
            frame["review_score_mean"] = 0.0
        frame.insert(0, "product_id", product)
        frames.append(frame)
    if not frames:
        raise ValueError(
            f"{csv_dir}: no product has at least data.min_sales = {min_sales} units sold; "
            f"lower it (products sold: {len(totals)}, most units: {int(totals.max() or 0)})."
        )
    panel = pd.concat(frames, ignore_index=True)
    panel = panel.astype(
        {"sales": np.int32, "review_count": np.int32, "review_score_mean": np.float32}
    )
    report["panel_rows"] = len(panel)
    return panel, report


def write_panel(panel: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.Table.from_pandas(panel[list(PANEL_COLUMNS)], preserve_index=False)
    table = table.set_column(1, "date", table.column("date").cast(pa.date32()))
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_panel(path: str) -> pd.DataFrame:
    """The panel parquet, checked: columns present, counts >= 0, one row per contiguous day."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: panel parquet not found; build it with scripts/prepare_sales.py."
        )
    table = pq.read_table(path)
    missing = [c for c in PANEL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {table.column_names}.")
    panel = table.select(list(PANEL_COLUMNS)).to_pandas()
    panel["date"] = pd.to_datetime(panel["date"])
    for name in ("sales", "review_count"):
        if (panel[name] < 0).any() or panel[name].isna().any():
            raise ValueError(f"{path}: column {name!r} must be non-negative counts.")
    if not panel["review_score_mean"].between(0.0, 5.0).all():
        raise ValueError(f"{path}: column 'review_score_mean' must lie in [0, 5] (0 = no review).")
    steps = panel.groupby("product_id", sort=False)["date"].diff().dropna()
    if (steps != pd.Timedelta(days=1)).any():
        raise ValueError(f"{path}: each product's rows must be consecutive days in order.")
    return panel


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The panel path, after writing the synthetic CSVs and building the panel when missing."""
    dc = config.data
    data_dir = os.path.join(workdir, "data")
    csv_dir = dc.csv_dir or os.path.join(data_dir, "olist")
    panel_path = dc.panel_path or os.path.join(data_dir, "panel.parquet")
    if dc.synthetic:
        synthetic.write_dataset(
            csv_dir, num_products=dc.num_products, num_days=dc.num_days, seed=config.seed
        )
    if not os.path.exists(panel_path):
        panel, report = build_panel(
            csv_dir, min_sales=dc.min_sales, exclude_statuses=tuple(dc.exclude_statuses)
        )
        logging.info("Panel from %s: %s", csv_dir, report)
        write_panel(panel, panel_path)
    return panel_path


# ----------------------------------------------------------------------------------------------
# 3. Split, features, normalisation.


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
# 4. Windows.


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
    arrays = make_panel_arrays(read_panel(panel_path), tuple(config.data.split_fractions))
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
# Generated sequences and augmentation.


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
    pq.write_table(table, path)


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
