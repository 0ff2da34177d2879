"""Scenarios and forecasts for products' next 7 days from their recent history.

    jaxlab predict --model=runs/sales --input=<Olist CSV folder | panel.parquet> --out=preds \\
        [product_ids=<id,id,...>] [as_of=YYYY-MM-DD] [num_scenarios=20]
(defaults: the last day of the input and the first five products with a full history then)

For each product: the last `data.history` days up to and including `as_of` (sales, calendar,
reviews) are the condition; the generator draws `num_scenarios` 7-day sequences and the real-only
forecaster gives its point forecast. Written in the product's units (items per day):
`scenarios.csv` (product_id, scenario, date, units), `forecast.csv` (product_id, date, forecast,
p10, p90: the 10-90% band of the scenarios) and `<product_id>.png` per product.

Normalisation: the model was trained on per-product min-max scaled sales (training-period
statistics). For new data these statistics are recomputed from the input's own history up to
`as_of` (the same rule applied to the history the model sees), and outputs are mapped back with
them. `model` is a training workdir (the forecaster's checkpoints live beside the GAN's in
`forecast_real/`) or an exported bundle (it carries the generator and, as
`forecaster_real.safetensors`, the real-only forecaster).

Option `engine=stablehlo` (or `auto`: when the bundle carries one) runs the bundle's StableHLO
predict (`network`: generator and forecaster in one function, the scenario noise an input) in
place of the model's code: the same noise, so the same files to float32 rounding. The default,
`engine=python`, keeps bundle and workdir predictions bitwise equal.
"""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from absl import logging
from safetensors import numpy as safetensors_np

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import portable, rng
from jaxlab.sales import data, data_windows, forecast, gan, steps
from jaxlab.sales import model as model_lib

TASK = "jaxlab.sales"
SCENARIOS_FILE = "scenarios.csv"
FORECAST_FILE = "forecast.csv"


def read_history(inputs: str, config) -> pd.DataFrame:
    """The product-day panel of `inputs`: an Olist CSV folder or a panel parquet."""
    if os.path.isdir(inputs):
        panel, _ = data.build_panel(
            inputs,
            min_sales=0,
            exclude_statuses=tuple(config.data.exclude_statuses),
            on_duplicate=config.data.get("on_duplicate", "error"),
        )
        return panel
    return data.read_panel(inputs)


DEFAULT_PRODUCTS = 5


def default_as_of(panel: pd.DataFrame) -> np.datetime64:
    """Without `as_of`: the last day of the input's history (forecast the week after it)."""
    return np.datetime64(panel["date"].max(), "D")


def default_products(panel: pd.DataFrame, as_of: np.datetime64, history: int) -> list[str]:
    """Without `product_ids`: the first products (by id) with `history` days ending `as_of`."""
    past = panel[panel["date"] <= pd.Timestamp(as_of)]
    days = past.groupby("product_id")["date"].agg(["max", "count"])
    ok = days[(days["max"] == pd.Timestamp(as_of)) & (days["count"] >= history)]
    if ok.empty:
        raise ValueError(
            f"no product has {history} days of history ending {as_of}; pass product_ids=... and "
            "as_of=YYYY-MM-DD."
        )
    return sorted(ok.index.astype(str))[:DEFAULT_PRODUCTS]


def conditions(panel: pd.DataFrame, product_ids, as_of: np.datetime64, config, inputs: str):
    """Window inputs [P, ...] of the products' last H days up to `as_of`, and their min, scale."""
    dc = config.data
    past = panel[panel["date"] <= pd.Timestamp(as_of)]
    arrays = data_windows.make_panel_arrays(past, fractions=(1.0, 0.0))
    index = {p: i for i, p in enumerate(arrays.product_ids)}
    rows = {k: [] for k in ("history_sales", "history_features", "target_features")}
    lows, scales = [], []
    target_dates = as_of + np.arange(1, dc.horizon + 1).astype("timedelta64[D]")
    for product in product_ids:
        if product not in index:
            raise ValueError(f"{inputs}: product_id {product!r} has no sales up to {as_of}.")
        p = index[product]
        lo, hi = arrays.offsets[p], arrays.offsets[p + 1]
        if arrays.dates[hi - 1] != as_of or hi - lo < dc.history:
            raise ValueError(
                f"{inputs}: product_id {product!r} needs {dc.history} days of history ending "
                f"{as_of}; it has {hi - lo} days ending {arrays.dates[hi - 1]}."
            )
        rows["history_sales"].append(arrays.sales_norm[hi - dc.history : hi])
        rows["history_features"].append(arrays.features[hi - dc.history : hi])
        rows["target_features"].append(data_windows.temporal_features(target_dates))
        lows.append(arrays.sales_min[p])
        scales.append(arrays.sales_scale[p])
    batch = {k: np.stack(v).astype(np.float32) for k, v in rows.items()}
    return batch, np.asarray(lows, np.float32), np.asarray(scales, np.float32), target_dates


DEFAULT_SCENARIOS = 20
FORECASTER = "forecaster"  # the forecaster's parameter set in the StableHLO predict


def network(
    config, num_products: int | None = None, num_scenarios: int | None = None
) -> portable.Network:
    """The predict network: generator and real-only forecaster in one pure function,
        {"noise" [P, S, T, Z], "history_sales" [P, H], "history_features" [P, H, F],
         "target_features" [P, T, F_t]}
        -> {"scenarios": [P, S, T], "forecast": [P, T]}, normalised units,
    with P = `num_products` (default 5, predict's default product count) and S =
    `num_scenarios` (default 20, predict's default) draws per product; the noise carries all the
    randomness (predict: `gan.sample_noise` of draw s * num_products + p). Its parameters are
    the bundle's generator (params.safetensors) and, as the extra set "forecaster", the
    forecaster's (`steps.FORECASTER_FILE`). What a bundle exports as its StableHLO predict."""
    generator, _ = model_lib.make_gan(config)
    forecaster = model_lib.make_forecaster(config)
    forecaster_params = jax.eval_shape(
        lambda: forecaster.init(jax.random.key(0), *gan.dummy_condition(config))["params"]
    )
    dc, p, s = config.data, num_products or DEFAULT_PRODUCTS, num_scenarios or DEFAULT_SCENARIOS
    windows = steps.random_windows(config)
    inputs = {
        "noise": jax.ShapeDtypeStruct((p, s, dc.horizon, config.gan.noise_dim), np.float32),
        **{
            k: jax.ShapeDtypeStruct((p, *windows[k].shape[1:]), np.float32)
            for k in ("history_sales", "history_features", "target_features")
        },
    }

    def fn(params, x):
        products, draws, horizon, noise_dim = x["noise"].shape
        cond = model_lib.condition(x)
        per_draw = [jnp.repeat(c, draws, axis=0) for c in cond]  # row p * S + s
        noise = x["noise"].reshape(products * draws, horizon, noise_dim)
        scenarios = generator.apply({"params": params[portable.MAIN_PARAMS]}, noise, *per_draw)
        point = forecaster.apply({"params": params[FORECASTER]}, *cond)
        return {"scenarios": scenarios.reshape(products, draws, horizon), "forecast": point}

    return portable.Network(
        fn=fn,
        inputs=inputs,
        extra_params={FORECASTER: (steps.FORECASTER_FILE, forecaster_params)},
    )


def python_draws(model, config, gen_params, batch, key, count):
    """(scenarios [P, S, T], point forecast [P, T]), normalised, with the model's code: draw s
    of product p from `gan.sample_noise` index s * P + p."""
    cond = model_lib.condition(batch)
    generator, _ = model_lib.make_gan(config)
    horizon, num = config.data.horizon, len(batch["history_sales"])
    sample = jax.jit(lambda p, noise, *c: generator.apply({"params": p}, noise, *c))
    draws = []
    for s in range(count):
        noise = gan.sample_noise(key, s * num + np.arange(num), horizon, config.gan.noise_dim)
        draws.append(np.asarray(sample(gen_params, noise, *cond)))
    scenarios = np.stack(draws, axis=1)  # [P, S, T], normalised
    parts = forecast.build(config, _single_device_mesh())
    params = forecaster_params(model, config, parts)
    point = np.asarray(jax.jit(parts.model.apply)({"params": params}, *cond))  # [P, T]
    return scenarios, point


def artefact_draws(model, info, batch, key, count):
    """`python_draws` with the bundle's StableHLO predict (no model code): products and draws
    in blocks of the artefact's [P_a, S_a] (the last ones padded, the padding dropped), each
    draw's noise the same `gan.sample_noise` index as on the Python path."""
    apply = portable.load_callable(model)
    block_p, block_s, horizon, noise_dim = info[portable.INFO_KEY]["inputs"]["noise"]["shape"]
    num = len(batch["history_sales"])
    scenarios = np.zeros((num, count, horizon), np.float32)
    point = np.zeros((num, horizon), np.float32)
    for p0 in range(0, num, block_p):
        rows = np.minimum(np.arange(p0, p0 + block_p), num - 1)  # padded with the last product
        n_p = min(block_p, num - p0)
        cond = {k: v[rows] for k, v in batch.items()}
        for s0 in range(0, count, block_s):
            draw = np.arange(s0, s0 + block_s)
            index = (draw[None, :] * num + rows[:, None]).reshape(-1)
            noise = gan.sample_noise(key, index, horizon, noise_dim)
            out = apply({"noise": noise.reshape(block_p, block_s, horizon, noise_dim), **cond})
            n_s = min(block_s, count - s0)
            scenarios[p0 : p0 + n_p, s0 : s0 + n_s] = np.asarray(out["scenarios"])[:n_p, :n_s]
            if s0 == 0:
                point[p0 : p0 + n_p] = np.asarray(out["forecast"])[:n_p]
    return scenarios, point


def predict(
    model: str,
    inputs: str,
    out: str,
    config=None,
    product_ids: str = "",
    as_of: str = "",
    num_scenarios: str | int = DEFAULT_SCENARIOS,
    engine: str = "python",
) -> list[str]:
    """Writes scenarios.csv, forecast.csv and one PNG per product; returns their paths.

    `engine` (`core.portable.use_artefact`): python (default) runs the generator and forecaster
    code; stablehlo their exported StableHLO, without that code; auto, stablehlo if present."""
    hlo = portable.use_artefact(model, engine)
    if hlo:
        config, info = portable.bundle_config(model, TASK)
    else:
        config, gen_params, info = bundle_lib.load_model(model, config, task=TASK)
    panel = read_history(inputs, config)
    ids = [p for p in str(product_ids).split(",") if p]
    try:
        day = np.datetime64(as_of, "D") if as_of else default_as_of(panel)
        count = int(num_scenarios)
    except ValueError as e:
        raise ValueError(
            f"predict options as_of={as_of!r} (YYYY-MM-DD), num_scenarios={num_scenarios!r}: {e}"
        ) from e
    if count < 1:
        raise ValueError(f"predict option num_scenarios={num_scenarios!r}: expected >= 1.")
    if not ids:
        ids = default_products(panel, day, config.data.history)
        logging.info("No product_ids given: the first %d with a full history: %s", len(ids), ids)
    batch, low, scale, dates = conditions(panel, ids, day, config, inputs)
    horizon, num = config.data.horizon, len(ids)
    key = rng.stream(config.seed, "predict_scenarios")
    if hlo:
        scenarios, point = artefact_draws(model, info, batch, key, count)
    else:
        scenarios, point = python_draws(model, config, gen_params, batch, key, count)

    def to_units(x):  # [P, ...] normalised -> items per day (the inverse min-max)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return x * scale.reshape(shape) + low.reshape(shape)

    scenarios_u = np.maximum(to_units(scenarios), 0.0)
    point_u = np.maximum(to_units(point), 0.0)
    p10, p90 = np.quantile(scenarios_u, [0.1, 0.9], axis=1)
    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, SCENARIOS_FILE), os.path.join(out, FORECAST_FILE)]
    with open(written[0], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "scenario", "date", "units"])
        for i, product in enumerate(ids):
            for s in range(count):
                for t in range(horizon):
                    writer.writerow([product, s, str(dates[t]), f"{scenarios_u[i, s, t]:.6g}"])
    with open(written[1], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "date", "forecast", "p10", "p90"])
        for i, product in enumerate(ids):
            for t in range(horizon):
                values = (point_u[i, t], p10[i, t], p90[i, t])
                writer.writerow([product, str(dates[t]), *(f"{v:.6g}" for v in values)])
    history_u = to_units(batch["history_sales"])
    for i, product in enumerate(ids):
        path = os.path.join(out, f"{product}.png")
        _plot(product, history_u[i], scenarios_u[i], point_u[i], p10[i], p90[i], day, path)
        written.append(path)
    logging.info(
        "sales predict: %d products x %d scenarios (GAN step %s, %s) -> %s",
        num,
        count,
        info.get("checkpoint_step"),
        "StableHLO" if hlo else "Python",
        out,
    )
    return written


def forecaster_params(model: str, config, parts: parts_lib.Parts):
    """The real-only forecaster's parameters from a bundle (its safetensors file) or a workdir."""
    if bundle_lib.is_bundle(model):
        path = os.path.join(model, steps.FORECASTER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: the bundle has no forecaster; export it from a workdir whose "
                "forecasters finished training."
            )
        abstract = parts.abstract_state.params
        return bundle_lib.unflatten_params(safetensors_np.load_file(path), abstract, path)
    forecaster_dir = forecast.forecast_dir(model, "real")
    if not os.path.isdir(forecaster_dir):
        raise FileNotFoundError(
            f"{forecaster_dir}: the real-only forecaster's checkpoints are needed; pass a "
            "training workdir or a bundle as --model."
        )
    params, _ = forecast.restore_params(config, forecaster_dir, parts)
    return params


def _single_device_mesh():
    return mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])


def _plot(product, history, scenarios, point, p10, p90, as_of, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, t = len(history), len(point)
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.plot(np.arange(-h + 1, 1), history, color="0.3", lw=1, label="history")
    days = np.arange(1, t + 1)
    for s in scenarios:
        ax.plot(days, s, color="C1", alpha=0.25, lw=0.8)
    ax.fill_between(days, p10, p90, color="C1", alpha=0.2, label="scenarios 10-90%")
    ax.plot(days, point, color="C0", lw=2, label="forecast")
    ax.set_xlabel(f"days after {as_of}")
    ax.set_ylabel("units")
    ax.set_title(f"product {product}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def demo_input(config, workdir: str) -> str:
    """The workdir's panel (synthetic data) as the input: its history is the public format."""
    return data.prepare(config, workdir)
