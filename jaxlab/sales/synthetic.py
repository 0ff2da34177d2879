"""Writes a small Olist-format dataset: the four CSVs the sales reader needs, with planted signal.

Files (exact Olist names and headers, listed in docs/data.md; the "lenght" misspellings included):
`olist_orders_dataset.csv`, `olist_order_items_dataset.csv`, `olist_order_reviews_dataset.csv`,
`olist_products_dataset.csv`. Timestamps are "YYYY-MM-DD HH:MM:SS"; review texts contain commas,
double quotes and newlines (quoted by the `csv` module exactly as in the real export).

Planted demand of product p on day t (items per day, Poisson):

    rate = base_p * weekly_p[dow(t)] * exp(trend_p * t / 365) * promo_p(t) * review_p(t)

- weekly_p = 1 + amplitude_p * shape[kind_p], kind in {weekend peak, midweek peak, flat};
- promo_p(t) = PROMO_LIFT on a few random 3-7 day promotions;
- review_p(t) = exp(REVIEW_EFFECT * (quality_p(t) - 3)); the quality drops by 2 stars at a random
  day for some products, and reviews (scored around the quality, written 2-10 days after the
  purchase) reveal it;
- intermittent demand: a share of products with base rates well below one item a day, and a few
  below the minimum-sales threshold (the panel builder must drop them).

A ground-truth file `synthetic_truth.json` (per-product weekly kind and amplitude) is written next
to the CSVs for tests; no reader looks at it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os

import numpy as np

from jaxlab.sales.format import (
    ITEMS_FILE,
    ITEMS_HEADER,
    ORDERS_FILE,
    ORDERS_HEADER,
    PRODUCTS_FILE,
    PRODUCTS_HEADER,
    REVIEWS_FILE,
    REVIEWS_HEADER,
    TIME_FORMAT,
)

TRUTH_FILE = "synthetic_truth.json"
START_DATE = dt.datetime(2017, 1, 2)  # a Monday
# Mean-zero day-of-week shapes (Monday first) of the three weekly kinds.
WEEKLY_SHAPES = {
    "weekend": np.array([-0.4, -0.4, -0.4, -0.2, 0.1, 0.65, 0.65]),
    "midweek": np.array([0.2, 0.6, 0.6, 0.2, -0.3, -0.65, -0.65]),
    "flat": np.zeros(7),
}
PROMO_LIFT = 2.5
REVIEW_EFFECT = 0.3
REVIEW_PROBABILITY = 0.7
STATUSES = ("delivered", "shipped", "canceled", "invoiced")
STATUS_PROBS = (0.95, 0.02, 0.02, 0.01)
CATEGORIES = ("beleza_saude", "cama_mesa_banho", "esporte_lazer", "informatica_acessorios")
REVIEW_TEXTS = (
    "Produto bom, chegou no prazo.",
    'Gostei muito, "recomendo", entrega rápida',
    "Veio com defeito,\nquero trocar, péssimo",
    "ok",
    'Muito bom!\r\nMas a caixa veio "amassada", enfim',
    "",
)


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """Olist-style 32-hex-digit identifiers."""
    return [row.tobytes().hex() for row in rng.integers(0, 256, size=(n, 16), dtype=np.uint8)]


def _time(t: dt.datetime) -> str:
    return t.strftime(TIME_FORMAT)


def product_plan(rng: np.random.Generator, num_products: int, num_days: int) -> dict:
    """Per-product demand parameters (see module docstring); arrays of length num_products."""
    kinds = rng.choice(list(WEEKLY_SHAPES), size=num_products, p=[0.4, 0.4, 0.2])
    base = np.exp(rng.normal(np.log(1.2), 0.6, size=num_products))
    intermittent = rng.random(num_products) < 0.2
    base[intermittent] = rng.uniform(0.1, 0.35, size=int(intermittent.sum()))
    rare = rng.random(num_products) < 0.03  # below any sensible minimum-sales threshold
    base[rare] = 0.01
    quality = rng.uniform(2.5, 4.8, size=num_products)
    shock_day = np.where(
        rng.random(num_products) < 0.25,
        rng.integers(num_days // 4, num_days, size=num_products),
        num_days + 1,
    )
    return {
        "kind": kinds,
        "amplitude": rng.uniform(0.6, 1.0, size=num_products),
        "base": base,
        "trend": rng.normal(0.0, 0.4, size=num_products),
        "quality": quality,
        "shock_day": shock_day,
        "launch_day": rng.integers(0, max(1, num_days // 8), size=num_products),
    }


def daily_rates(plan: dict, rng: np.random.Generator, num_days: int) -> np.ndarray:
    """Expected items per day [P, D] and the quality [P, D] behind the reviews."""
    num_products = len(plan["base"])
    days = np.arange(num_days)
    dow = (START_DATE.weekday() + days) % 7
    shapes = np.stack([WEEKLY_SHAPES[k] for k in plan["kind"]])  # [P, 7]
    weekly = 1.0 + plan["amplitude"][:, None] * shapes[:, dow]
    trend = np.exp(plan["trend"][:, None] * days[None] / 365.0)
    promo = np.ones((num_products, num_days))
    for p in range(num_products):
        for start in rng.integers(0, num_days, size=rng.integers(1, 4)):
            promo[p, start : start + rng.integers(3, 8)] = PROMO_LIFT
    quality = plan["quality"][:, None] - 2.0 * (days[None] >= plan["shock_day"][:, None])
    quality = np.clip(quality, 1.0, 5.0)
    review = np.exp(REVIEW_EFFECT * (quality - 3.0))
    rate = plan["base"][:, None] * weekly * trend * promo * review
    rate[days[None] < plan["launch_day"][:, None]] = 0.0
    return rate, quality


def write_dataset(directory: str, *, num_products: int, num_days: int, seed: int) -> None:
    """Writes the four CSVs (and the truth file) into `directory`; skips when already there."""
    paths = [os.path.join(directory, f) for f in (ORDERS_FILE, ITEMS_FILE, REVIEWS_FILE)]
    paths.append(os.path.join(directory, PRODUCTS_FILE))
    if all(os.path.exists(p) for p in paths):
        return
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan = product_plan(rng, num_products, num_days)
    rate, quality = daily_rates(plan, rng, num_days)
    units = rng.poisson(rate)  # [P, D] items sold
    product_ids = _ids(rng, num_products)
    sellers = _ids(rng, 20)

    orders, items, reviews = [], [], []
    prod_idx, day_idx = np.nonzero(units)
    for p, d in zip(prod_idx, day_idx, strict=True):
        remaining = int(units[p, d])
        while remaining:
            # Mostly one item per order; sometimes two rows of the same product (quantity 2).
            n_items = 2 if remaining >= 2 and rng.random() < 0.1 else 1
            remaining -= n_items
            orders.append((p, d, n_items))
    order_ids = _ids(rng, len(orders))
    customer_ids = _ids(rng, len(orders))
    review_ids = _ids(rng, len(orders))
    status = rng.choice(STATUSES, size=len(orders), p=STATUS_PROBS)
    seconds = rng.integers(0, 86400, size=len(orders))
    order_rows = []
    for i, (p, d, n_items) in enumerate(orders):
        bought = START_DATE + dt.timedelta(days=int(d), seconds=int(seconds[i]))
        delivered = status[i] == "delivered"
        order_rows.append(
            (
                order_ids[i],
                customer_ids[i],
                status[i],
                _time(bought),
                _time(bought + dt.timedelta(hours=1)) if status[i] != "canceled" else "",
                _time(bought + dt.timedelta(days=2)) if delivered else "",
                _time(bought + dt.timedelta(days=8)) if delivered else "",
                _time(dt.datetime.combine(bought.date(), dt.time()) + dt.timedelta(days=20)),
            )
        )
        for k in range(n_items):
            items.append(
                (
                    order_ids[i],
                    k + 1,
                    product_ids[p],
                    sellers[p % len(sellers)],
                    _time(bought + dt.timedelta(days=3)),
                    f"{20 + 5 * (p % 7):.2f}",
                    f"{8 + p % 5:.2f}",
                )
            )
        if rng.random() < REVIEW_PROBABILITY:
            score = int(np.clip(np.round(quality[p, d] + rng.normal(0.0, 0.7)), 1, 5))
            created = dt.datetime.combine(bought.date(), dt.time()) + dt.timedelta(
                days=int(rng.integers(2, 11))
            )
            text = REVIEW_TEXTS[int(rng.integers(len(REVIEW_TEXTS)))]
            reviews.append(
                (
                    review_ids[i],
                    order_ids[i],
                    score,
                    "recomendo" if score >= 4 and rng.random() < 0.3 else "",
                    text,
                    _time(created),
                    _time(created + dt.timedelta(days=1, seconds=int(seconds[i]))),
                )
            )
    product_rows = [
        (
            pid,
            CATEGORIES[p % len(CATEGORIES)],
            40 + p % 20,
            200 + 13 * (p % 50),
            1 + p % 4,
            300 + 10 * p,
            20 + p % 10,
            10 + p % 7,
            15 + p % 9,
        )
        for p, pid in enumerate(product_ids)
    ]
    for name, header, rows in (
        (ORDERS_FILE, ORDERS_HEADER, order_rows),
        (ITEMS_FILE, ITEMS_HEADER, items),
        (REVIEWS_FILE, REVIEWS_HEADER, reviews),
        (PRODUCTS_FILE, PRODUCTS_HEADER, product_rows),
    ):
        write_csv(os.path.join(directory, name), header, rows)
    truth = {
        pid: {"kind": str(plan["kind"][p]), "amplitude": float(plan["amplitude"][p])}
        for p, pid in enumerate(product_ids)
    }
    with open(os.path.join(directory, TRUTH_FILE), "w") as f:
        json.dump(truth, f)


def write_csv(path: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    """Olist's quoting: minimal, with fields holding commas, quotes or newlines in double quotes.

    Written under a temporary name and renamed, since processes of a multi-host job may race.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
