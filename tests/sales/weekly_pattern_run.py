"""Trains the demo-sized GAN of tests/sales/test_weekly_pattern.py and writes the weekday-profile
correlations its test asserts on, as JSON.

Why a script: the check is a learning run (200 WGAN-GP iterations at demo size, then sampling
twice), so its cost is executing the steps, not compiling them. The test suite compiles at XLA's
backend optimisation level 0 on 8 fake devices, which suits its many short, compile-bound tests
but runs this one about 3x slower than XLA's default level on 1 device (measured alone: 221
against 66 CPU-seconds). The test therefore launches this script in a subprocess with its own
XLA_FLAGS (default level, 1 device).

  python -m tests.sales.weekly_pattern_run --workdir=<dir> --out=<correlations.json> [--seed=0]

Output: {"own": [...], "flipped": [...], "num_strong_windows": int, "num_donors": int}: per
strong-pattern product of the test split, the correlation of its samples' weekday profile with
its planted shape, with its own history ("own") and with the history of a product of the
opposite kind ("flipped").
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import numpy as np

from jaxlab.configs import sales as sales_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore
from jaxlab.core import workdir as workdir_lib
from jaxlab.sales import data, data_windows, evaluate, steps, synthetic, train
from jaxlab.sales import metrics as metrics_lib


class _SwappedHistory:
    """`source` with each listed window's history taken from a donor window (same dates)."""

    def __init__(self, source, donors):
        self.source, self.donors = source, donors

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        record = dict(self.source[i])
        donor = self.source[self.donors.get(i, i)]
        record["history_sales"] = donor["history_sales"]
        record["history_features"] = donor["history_features"]
        return record


def _opposite_kind_donors(strong, products, dates):
    """{window: donor window}: for each window of a product in `strong` ({product: kind}), the
    window with the same target dates of a product of the other kind. Recipients of one kind
    cycle through all donors of the other, so no single (e.g. intermittent) donor decides."""
    window_of = {(p, d): i for i, (p, d) in enumerate(zip(products, dates, strict=True))}
    of_kind = {
        k: sorted(p for p, kind in strong.items() if kind == k) for k in set(strong.values())
    }
    opposite = {"weekend": "midweek", "midweek": "weekend"}
    donors = {}
    for rank, (p, kind) in enumerate(sorted(strong.items())):
        candidates = of_kind.get(opposite[kind], [])
        for i in np.flatnonzero(products == p):
            for j in range(len(candidates)):
                q = candidates[(rank + j) % len(candidates)]
                if (q, dates[i]) in window_of:
                    donors[int(i)] = window_of[(q, dates[i])]
                    break
    return donors


def weekly_pattern_correlations(workdir: str, seed: int, num_steps: int) -> dict:
    """Trains the GAN on demo data (72 products) in `workdir`; returns the correlations."""
    config = sales_config.get_config("demo")
    config.seed = seed
    config.data.num_products = 72  # 45 strong-pattern products in the test split (>= 10 asserted)
    config.train.num_steps = num_steps
    config.train.eval_every = config.train.ckpt_every = num_steps  # only the final evaluation
    mesh = mesh_lib.make_mesh(config.mesh)
    sources = data_windows.load_windows(config, data.prepare(config, workdir))
    if not train.train_gan(
        config, workdir, workdir_lib.open_workdir(config, workdir), mesh, sources
    ):
        raise RuntimeError("train_gan did not finish")
    source = sources["test"]
    with open(os.path.join(workdir, "data", "olist", synthetic.TRUTH_FILE)) as f:
        truth = json.load(f)
    parts = steps.build(config, mesh)
    state, _ = restore.restore_for_eval(config, workdir, parts, "latest")
    first_dow = np.array(
        [np.argmax(source[i]["target_features"][0, :7]) for i in range(len(source))]
    )
    dates = source.target_dates()
    products = source.windows[:, 0]
    strong = {
        p: truth[product_id]["kind"]
        for p, product_id in enumerate(source.arrays.product_ids)
        if truth[product_id]["kind"] != "flat"
        and truth[product_id]["amplitude"] >= 0.7
        and (products == p).sum() >= 14
    }
    donors = _opposite_kind_donors(strong, products, dates)
    key = jax.random.key(7)
    _, fake = evaluate.generate(parts.eval_step, state.params, source, mesh, 256, key)
    _, swapped = evaluate.generate(
        parts.eval_step, state.params, _SwappedHistory(source, donors), mesh, 256, key
    )
    own, flipped, own_planted = [], [], []
    for p, kind in strong.items():
        rows = products == p
        own.append(metrics_lib.weekday_profile(fake[rows], first_dow[rows]))
        flipped.append(metrics_lib.weekday_profile(swapped[rows], first_dow[rows]))
        own_planted.append(synthetic.WEEKLY_SHAPES[kind])
    own_planted = np.asarray(own_planted)
    return {
        "own": metrics_lib.profile_correlation(np.asarray(own), own_planted).tolist(),
        "flipped": metrics_lib.profile_correlation(np.asarray(flipped), own_planted).tolist(),
        "num_strong_windows": int(sum((products == p).sum() for p in strong)),
        "num_donors": len(donors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_steps", type=int, default=200)
    args = parser.parse_args()
    result = weekly_pattern_correlations(args.workdir, args.seed, args.num_steps)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
