"""Predictions of the example task on new, unlabelled data: an `.npz` with `x` [N, F] -> a CSV.

`predict(model, inputs, out)` takes a training workdir or an exported bundle (`jaxlab export`);
both give bitwise the same predictions.

    jaxlab predict --model=runs/example/bundle --input=new.npz --out=preds [batch_size=1024]

writes `preds/predictions.csv` with columns `index` (the row of `x`) and `prediction`.
Option `engine=stablehlo` (or `auto`: when the bundle carries one) runs the bundle's StableHLO
predict (`jaxlab.core.portable`) instead of building the model: equal to the Python network to
float32 rounding. The default, `python`, keeps bundle and workdir predictions bitwise equal.
"""

from __future__ import annotations

import csv
import functools
import os

import jax
import numpy as np
from absl import logging

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import portable
from jaxlab.example import data
from jaxlab.example import model as model_lib

PREDICTIONS_FILE = "predictions.csv"
DEMO_INPUT_FILE = "predict_input.npz"


def read_inputs(path: str, num_features: int) -> np.ndarray:
    """x [N, F] float32 from an .npz holding at least `x` (a `y`, if present, is ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such input file.")
    with np.load(path) as f:
        if "x" not in f:
            raise ValueError(f"{path}: missing array 'x'; found {sorted(f.files)}.")
        x = np.asarray(f["x"], np.float32)
    if x.ndim != 2 or x.shape[1] != num_features:
        raise ValueError(f"{path}: 'x' has shape {list(x.shape)}; expected [N, {num_features}].")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: 'x' holds {int(np.sum(~np.isfinite(x)))} NaN or Inf values.")
    return x


def network(config, batch_size: int | None = None) -> portable.Network:
    """The predict network: {"x": [B, F]} -> {"prediction": [B]} (what a bundle exports)."""
    model = model_lib.make_model(config)
    x = jax.ShapeDtypeStruct((batch_size or 1024, config.data.num_features), np.float32)
    return portable.Network(
        fn=lambda p, inputs: {"prediction": model.apply({"params": p}, inputs["x"])},
        inputs={"x": x},
    )


def predict_array(apply, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Predictions [N] in fixed-size batches (the last one padded), so one compile serves all.
    `apply`: {"x": [batch_size, F]} -> {"prediction": [batch_size]}."""
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        padded = np.zeros((batch_size, x.shape[1]), np.float32)
        padded[: len(chunk)] = chunk
        out.append(np.asarray(apply({"x": padded})["prediction"])[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def predict(
    model: str,
    inputs: str,
    out: str,
    config=None,
    batch_size: str | int = 1024,
    engine: str = "python",
) -> list[str]:
    """Writes `out/predictions.csv` (index, prediction) for every row of `inputs`; returns
    [its path]. `batch_size` (a CLI option, so it may come as a string) rows per compiled call;
    `engine`: "python" (the model's code), "stablehlo" (the bundle's artefact) or "auto"."""
    batch_size = bundle_lib.positive_int_option("batch_size", batch_size)
    if portable.use_artefact(model, engine):  # the bundle's StableHLO: no model code
        config, info = portable.bundle_config(model, "jaxlab.example")
        apply, batch_size = portable.load_callable(model), portable.input_batch(model)
    else:
        config, params, info = bundle_lib.load_model(model, config, task="jaxlab.example")
        apply = functools.partial(jax.jit(network(config, batch_size).fn), params)
    x = read_inputs(inputs, config.data.num_features)
    predictions = predict_array(apply, x, batch_size)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, PREDICTIONS_FILE)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "prediction"])
        writer.writerows((i, f"{p:.9g}") for i, p in enumerate(predictions))
    logging.info(
        "Predicted %d rows with step %d of %s (%s) -> %s",
        len(x),
        info["checkpoint_step"],
        model,
        "StableHLO" if portable.use_artefact(model, engine) else "Python",
        path,
    )
    return [path]


def demo_input(config, workdir: str) -> str:
    """`workdir/predict_input.npz`: the held-out eval split's `x` only (no labels)."""
    source = data.load(data.prepare(config, workdir), config.eval.split, config.data.num_features)
    path = os.path.join(workdir, DEMO_INPUT_FILE)
    np.savez(path, x=np.asarray(source.x, np.float32))
    return path
