"""The augmentation study: does adding generated windows help the LSTM forecaster, and when?

Augmentation can only help where real data are scarce, so the study varies how much real data
there is. For each fraction f of `config.study.fractions` (the chronologically first f of the
training windows, by first target day):

1. a WGAN-GP is trained on those windows only (`train.train_gan`, in `study/f<f>/gan`, resumable)
   and draws `max(study.ratios)` sequences per window;
2. for each seed of `study.seeds`, forecasters are trained (`forecast.build`'s jitted step, the
   best of the validation checks kept) on: the real windows ("real"), real + round(r * n)
   generated ones for each ratio r of `study.ratios` ("aug_<r>"), and generated ones only
   ("tstr": the TimeGAN protocol's predictive score, train on synthetic, test on real);
3. every forecaster predicts all test windows; per-window absolute errors go to
   `study/f<f>/errors_<name>_s<seed>.npy`, and the discriminative score of the fraction's GAN on
   test windows to `study/f<f>/discriminative.json`.

Each finished cell is a file, so a rerun (another Kaggle session) skips what is done. The table
and the figure are written by `study_report.report` from those files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import restore, rng
from jaxlab.core import workdir as workdir_lib
from jaxlab.sales import data_windows, evaluate, forecast, steps, study_report

KEYS = ("history_sales", "history_features", "target_features", "target", "index")


def window_arrays(source) -> dict[str, np.ndarray]:
    """All records of `source` stacked: {key: [N, ...]} for the forecaster's inputs."""
    return {k: evaluate.stack_field(source, k) for k in KEYS}


def chronological_subset(source: data_windows.WindowSource, fraction: float):
    """The first `fraction` of `source`'s windows by first target day (ties by window order)."""
    order = np.argsort(source.target_dates(), kind="stable")
    count = max(1, int(round(fraction * len(source))))
    return data_windows.Subset(source, np.sort(order[:count]))


def training_set(
    real: dict[str, np.ndarray], generated: np.ndarray, ratio: float | None, seed: int
) -> dict[str, np.ndarray]:
    """Real windows plus round(ratio * N) generated ones; ratio None: generated only.

    real: window arrays [N, ...]; generated [N, S, T]. A generated record is its real window with
    the target replaced; which (window, sample) pairs are used is fixed by `seed`.
    """
    n, s, _ = generated.shape
    pool = np.random.default_rng(seed).permutation(n * s)
    count = n if ratio is None else min(n * s, int(round(ratio * n)))
    chosen = pool[:count]
    window, sample = chosen // s, chosen % s
    fake = {k: v[window] for k, v in real.items()}
    fake["target"] = generated[window, sample]
    out = fake if ratio is None else {k: np.concatenate([real[k], fake[k]]) for k in real}
    out["index"] = np.arange(len(out["target"]), dtype=np.int32)
    return out


def fit_forecaster(
    config: ml_collections.ConfigDict,
    parts: parts_lib.Parts,
    train_set: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    mesh,
    seed: int,
):
    """`forecaster.num_steps` steps on random minibatches of `train_set`; returns the params with
    the lowest validation MAE among the checks every `forecaster.eval_every` steps (early
    stopping: small fractions overfit long before the last step)."""
    fc = config.forecaster
    state = parts_lib.init_state(parts, rng.stream(seed, "forecaster_init"))
    picks = np.random.default_rng(
        np.asarray(jax.random.key_data(rng.stream(seed, "study_batches")))
    )
    best_mae, best_params = np.inf, None
    for step in range(1, parts.num_steps + 1):
        idx = picks.integers(0, len(train_set["target"]), size=fc.global_batch_size)
        batch = mesh_lib.global_batch({k: v[idx] for k, v in train_set.items()}, mesh)
        state, _ = parts.train_step(state, batch)
        if step % fc.eval_every == 0 or step == parts.num_steps:
            mae = float(np.mean(predict_errors(config, parts, state.params, val, mesh)))
            if mae < best_mae:
                best_mae, best_params = mae, jax.device_get(state.params)
    return best_params


def predict_errors(config, parts, params, windows: dict[str, np.ndarray], mesh) -> np.ndarray:
    """Per-window MAE over the horizon [N] of `params` on `windows`."""
    size, n = config.eval.global_batch_size, len(windows["target"])
    errors = []
    for start in range(0, n, size):
        chunk = {k: v[start : start + size] for k, v in windows.items()}
        valid = np.ones(len(chunk["target"]), bool)
        pad = size - len(valid)
        if pad:
            chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, 0)]) for k, v in chunk.items()}
            valid = np.concatenate([valid, np.zeros(pad, bool)])
        _, pred = parts.eval_step(
            params, mesh_lib.global_batch(chunk, mesh), mesh_lib.global_batch(valid, mesh)
        )
        pred = np.asarray(jax.device_get(pred))[valid]
        errors.append(np.mean(np.abs(pred - chunk["target"][valid]), axis=1))
    return np.concatenate(errors)


def save_atomic(path: str, array: np.ndarray) -> None:
    """np.save under a temporary name, then rename: a cell file exists only when complete."""
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def fraction_dir(workdir: str, fraction: float) -> str:
    return os.path.join(workdir, "study", f"f{fraction:g}")


def generate_pool(config, parts, gan_dir, subset, mesh, count: int) -> np.ndarray:
    """`count` sequences per window of `subset` from the GAN in gan_dir: [N, count, T]."""
    path = os.path.join(gan_dir, "generated.npy")
    if os.path.exists(path):
        return np.load(path)
    state, _ = restore.restore_for_eval(config, gan_dir, parts, "latest")
    pool = np.stack(
        [
            evaluate.generate(
                parts.eval_step,
                state.params,
                subset,
                mesh,
                config.eval.global_batch_size,
                rng.stream(config.seed, "study_generate", s),
            )[1]
            for s in range(count)
        ],
        axis=1,
    )
    save_atomic(path, pool)
    return pool


def discriminative(config, parts, gan_dir, test_source, mesh, out_path) -> None:
    """The fraction's GAN against real test targets (evaluate.discriminative_score)."""
    if os.path.exists(out_path):
        return
    state, _ = restore.restore_for_eval(config, gan_dir, parts, "latest")
    source = data_windows.spread_subset(test_source, config.eval.max_windows)
    _, fake = evaluate.generate(
        parts.eval_step,
        state.params,
        source,
        mesh,
        config.eval.global_batch_size,
        rng.stream(config.seed, "eval_samples"),
    )
    real = evaluate.stack_field(source, "target")
    features = evaluate.stack_field(source, "target_features")
    score = evaluate.discriminative_score(real, fake, features, config.eval, config.seed)
    with open(out_path, "w") as f:
        json.dump({"discriminative_score": score, "num_windows": len(source)}, f)


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    mesh,
    sources: dict,
    train_gan: Callable,
) -> dict[str, float]:
    """All cells of the study (skipping finished ones), then the report; returns its summary.

    `train_gan` is `train.train_gan` (passed in: train.py imports this module).
    """
    sc = config.study
    test = window_arrays(sources["test"])
    val = window_arrays(data_windows.spread_subset(sources["val"], sc.val_windows))
    parts = forecast.build(config, mesh)
    gan_config = config.copy_and_resolve_references()
    gan_config.train.num_steps = sc.gan_steps
    gan_parts = steps.build(gan_config, mesh)  # sampling: the parts train_gan trains with
    for fraction in sc.fractions:
        out = fraction_dir(workdir, fraction)
        os.makedirs(out, exist_ok=True)
        subset = chronological_subset(sources["train"], fraction)
        logging.info("=== study: fraction %g (%d training windows)", fraction, len(subset))
        gan_dir = os.path.join(out, "gan")
        gan_sources = {"train": subset, "val": sources["val"]}
        with workdir_lib.opened(gan_config, gan_dir) as gan_writer:
            trained = train_gan(gan_config, gan_dir, gan_writer, mesh, gan_sources)
        if not trained:
            return {}
        count = int(np.ceil(max(sc.ratios)))
        pool = generate_pool(gan_config, gan_parts, gan_dir, subset, mesh, count)
        disc_path = os.path.join(out, "discriminative.json")
        discriminative(gan_config, gan_parts, gan_dir, sources["test"], mesh, disc_path)
        real = window_arrays(subset)
        for seed in sc.seeds:
            names = {"real": 0.0, "tstr": None, **{f"aug_{r:g}": r for r in sc.ratios}}
            for name, ratio in names.items():
                path = os.path.join(out, f"errors_{name}_s{seed}.npy")
                if os.path.exists(path):
                    continue
                train_set = real if ratio == 0.0 else training_set(real, pool, ratio, seed)
                params = fit_forecaster(config, parts, train_set, val, mesh, seed)
                errors = predict_errors(config, parts, params, test, mesh)
                save_atomic(path, errors.astype(np.float32))
                logging.info(
                    "study f=%g seed %d %s: test MAE %.4f", fraction, seed, name, errors.mean()
                )
    return study_report.report(config, workdir, test)
