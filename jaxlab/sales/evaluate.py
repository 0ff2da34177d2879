"""Evaluation from checkpoints: the augmentation study and the synthetic-data quality.

- Forecasters (best validation checkpoints) on `config.eval.split` windows: test MAE / RMSE of the
  forecaster trained on real windows vs on real + generated windows, the difference
  (augmented - real) and a paired bootstrap 95% interval of it; train-on-synthetic-test-on-real
  (TSTR) MAE of the forecaster trained on generated windows only.
- Discriminative score (Yoon et al. 2019, TimeGAN): a GRU classifier learns real vs generated
  targets (with their calendar features) on 70% of the windows; score = |accuracy - 0.5| on the
  other 30% (0 = indistinguishable). The same classifier against a naive generator (the history's
  mean repeated) is the baseline the GAN must beat.
- Figures: real vs generated sequences for the same condition, per-day-of-week means,
  autocorrelation and value histograms, the GAN's training curves.

With `config.eval.model` (an exported bundle) only what the bundle carries is evaluated: the
generator and the real-only forecaster against the naive baselines (`metrics["bundle"] = True`).

All values are on the normalised scale (per-product min-max of the training period). The ordered
passes `generate` and `forecast_pass` also serve train.py's evaluations.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore, rng, steps_jit
from jaxlab.core.writer import read_metrics
from jaxlab.sales import data, data_windows, forecast, plots, predict, steps, study_report
from jaxlab.sales import metrics as metrics_lib
from jaxlab.sales import model as model_lib


def generate(
    eval_step: Callable, gen_params: Any, source: Any, mesh: Any, batch_size: int, key: jax.Array
) -> tuple[dict[str, float], np.ndarray]:
    """One generated sequence per window of `source` with the GAN parts' `eval_step`:
    (`metrics.sample_statistics` of them vs the real targets, generated [N, T])."""
    totals, generated = steps_jit.eval_pass(eval_step, gen_params, source, mesh, batch_size, key)
    return metrics_lib.sample_statistics(totals), generated


def forecast_pass(
    eval_step: Callable, params: Any, source: Any, mesh: Any, batch_size: int
) -> tuple[dict[str, float], np.ndarray]:
    """Forecasts of every window of `source` with `forecast.build(...).eval_step`:
    ({"val_mae", "val_rmse"}, forecasts [N, T])."""
    totals, pred = steps_jit.eval_pass(eval_step, params, source, mesh, batch_size)
    metrics = {
        "val_mae": float(totals["abs_err_sum"] / totals["count"]),
        "val_rmse": float(np.sqrt(totals["sq_err_sum"] / totals["count"])),
    }
    return metrics, pred


@functools.cache
def _classifier_fns(hidden: int, lr: float):
    """(model, tx, jitted train step, jitted logits) of the discriminative-score classifier,
    built once per (hidden, lr): an evaluation scores several generators (the GAN, the naive
    baseline, a bundle, each study cell) and each call would otherwise trace and compile again."""
    model = model_lib.SequenceClassifier(hidden=hidden)
    tx = optax.adam(lr)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean(optax.sigmoid_binary_cross_entropy(model.apply({"params": p}, x), y))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda p, x: model.apply({"params": p}, x))
    return model, tx, step, predict


def discriminative_score(
    real: np.ndarray,
    fake: np.ndarray,
    features: np.ndarray,
    ec: ml_collections.ConfigDict,
    seed: int,
) -> float:
    """|accuracy - 0.5| of a GRU real-vs-fake classifier on held-out windows.

    real, fake [N, T] (fake[i] generated for the condition of real[i]); features [N, T, 8] the
    target days' calendar. Both sequences of a window fall on the same side of the split. `seed`
    fixes the split, the minibatches (numpy) and the classifier's initialisation (the
    "discriminator" stream), so scores of two generators are paired.
    """
    n = len(real)
    gen = np.random.default_rng(seed)
    order = gen.permutation(n)
    num_test = max(1, int(round(ec.disc_test_fraction * n)))
    test_idx, train_idx = order[:num_test], order[num_test:]

    def inputs(idx):
        x = np.concatenate([real[idx], fake[idx]])[..., None]
        f = np.concatenate([features[idx], features[idx]])
        y = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))]).astype(np.float32)
        return np.concatenate([x, f], axis=-1).astype(np.float32), y

    x_train, y_train = inputs(train_idx)
    x_test, y_test = inputs(test_idx)
    model, tx, step, predict = _classifier_fns(ec.disc_hidden, ec.disc_lr)
    params = model.init(rng.stream(seed, "discriminator"), x_train[:1])["params"]
    opt_state = tx.init(params)
    batch = min(ec.disc_batch_size, len(x_train))
    for _ in range(ec.disc_steps):
        idx = gen.integers(0, len(x_train), size=batch)
        params, opt_state, _ = step(params, opt_state, x_train[idx], y_train[idx])
    logits = predict(params, x_test)
    accuracy = float(np.mean((np.asarray(logits) > 0) == (y_test > 0.5)))
    return abs(accuracy - 0.5)


def comparison_table(m: dict[str, float]) -> str:
    """The evaluation's table; a bundle's (`m["bundle"]`) has no augmented / TSTR rows."""
    bundle = m.get("bundle", False)
    lines = [
        f"{'forecaster':<22} {'test MAE':>9} {'test RMSE':>10}",
        f"{'real only':<22} {m['real_mae']:>9.4f} {m['real_rmse']:>10.4f}",
    ]
    if not bundle:
        lines += [
            f"{'real + generated':<22} {m['augmented_mae']:>9.4f} {m['augmented_rmse']:>10.4f}",
            f"{'generated only (TSTR)':<22} {m['tstr_mae']:>9.4f} {m['tstr_rmse']:>10.4f}",
        ]
    lines += [
        f"{'history mean (naive)':<22} {m['naive_mae']:>9.4f} {m['naive_rmse']:>10.4f}",
        f"{'same weekday (s-naive)':<22} {m['seasonal_naive_mae']:>9.4f} "
        f"{m['seasonal_naive_rmse']:>10.4f}",
        f"{'history median':<22} {m['median_naive_mae']:>9.4f} {m['median_naive_rmse']:>10.4f}",
        f"real only - {m['best_naive']}: MAE {m['real_vs_naive_mae_diff']:+.4f} "
        f"[{m['real_vs_naive_mae_diff_lo']:+.4f}, {m['real_vs_naive_mae_diff_hi']:+.4f}] "
        f"(95% paired bootstrap; ratio {m['real_over_best_naive_mae']:.3f})",
    ]
    if bundle:
        lines.append("augmented - real: not evaluated (a bundle carries the real-only forecaster)")
    else:
        lines.append(
            f"augmented - real: MAE {m['mae_diff']:+.4f} [{m['mae_diff_lo']:+.4f}, "
            f"{m['mae_diff_hi']:+.4f}], RMSE {m['rmse_diff']:+.4f} [{m['rmse_diff_lo']:+.4f}, "
            f"{m['rmse_diff_hi']:+.4f}] (95% paired bootstrap)"
        )
    lines.append(
        f"discriminative score |acc - 0.5|: GAN {m['discriminative_score']:.3f}, naive "
        f"flat-history generator {m['discriminative_score_naive']:.3f} (0 = indistinguishable)"
    )
    return "\n".join(lines)


def stack_field(source, name: str) -> np.ndarray:
    return np.stack([source[i][name] for i in range(len(source))])


def naive_forecasts(source, history: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
    """The baselines [N, T]: history mean, history median, same weekday's history mean."""
    horizon = real.shape[1]
    seasonal = model_lib.weekday_history(
        history, stack_field(source, "history_features"), stack_field(source, "target_features")
    )
    return {
        "naive": np.repeat(history.mean(axis=1, keepdims=True), horizon, axis=1),
        "median_naive": np.repeat(np.median(history, axis=1, keepdims=True), horizon, axis=1),
        "seasonal_naive": np.asarray(seasonal)[..., 0],
    }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores the GAN and the three forecasters; writes metrics.json, comparison.txt, PNGs.

    With `config.eval.model` naming an exported bundle (`jaxlab evaluate --model=BUNDLE`), what
    the bundle carries is evaluated instead: the generator (sample statistics, discriminative
    score) and the real-only forecaster (`forecaster_real.safetensors`) against the naive
    baselines; the augmented / TSTR forecasters and the study stay in the training workdir
    (`metrics["bundle"] = True`). Outputs go to `<workdir>/eval/<split>_bundle/`.
    """
    ec = config.eval
    bundle = ec.get("model", "")
    mesh = mesh_lib.make_mesh(config.mesh)
    sources = data_windows.load_windows(config, data.prepare(config, workdir))
    if config.study.mode == "only" and not bundle:
        return study_metrics(config, workdir, sources["test"])
    source = sources[ec.split]
    real = stack_field(source, "target")
    features = stack_field(source, "target_features")
    naive = naive_forecasts(source, stack_field(source, "history_sales"), real)

    parts = steps.build(config, mesh)
    gan_state, gan_step = restore.restore_for_eval(config, workdir, parts)  # or the bundle's
    sample_stats, fake = generate(
        parts.eval_step,
        gan_state.params,
        source,
        mesh,
        ec.global_batch_size,
        rng.stream(config.seed, "eval_samples"),
    )
    metrics: dict[str, float] = {"gan_checkpoint_step": gan_step, "num_windows": len(source)}
    metrics["discriminative_score"] = discriminative_score(real, fake, features, ec, config.seed)
    metrics["discriminative_score_naive"] = discriminative_score(
        real, naive["naive"], features, ec, config.seed
    )
    metrics.update({k.replace("eval_", "gen_"): v for k, v in sample_stats.items()})
    for name, pred in naive.items():
        metrics[f"{name}_mae"] = float(np.abs(pred - real).mean())
        metrics[f"{name}_rmse"] = float(np.sqrt(np.square(pred - real).mean()))

    forecaster_parts = forecast.build(config, mesh)
    if bundle:
        logging.info(
            "eval.model=%s: evaluating the bundle's generator and real-only forecaster; the "
            "augmented and generated-only (TSTR) forecasters and the study are not in a bundle "
            "(evaluate the training workdir for them).",
            bundle,
        )
        params = predict.forecaster_params(bundle, config, forecaster_parts)
        _, pred = forecast_pass(
            forecaster_parts.eval_step, params, source, mesh, ec.global_batch_size
        )
        real_errors = metrics_lib.forecast_errors(pred, real)
        metrics["bundle"] = True
        metrics["real_mae"] = float(real_errors["abs"].mean())
        metrics["real_rmse"] = float(np.sqrt(real_errors["sq"].mean()))
    else:
        errors = forecaster_errors(config, workdir, forecaster_parts, source, real, mesh, metrics)
        real_errors = errors["real"]
        boot = metrics_lib.paired_bootstrap(
            real_errors, errors["augmented"], num_resamples=ec.bootstrap_resamples, seed=config.seed
        )
        metrics.update(
            {
                "real_mae": boot["mae_a"],
                "real_rmse": boot["rmse_a"],
                "augmented_mae": boot["mae_b"],
                "augmented_rmse": boot["rmse_b"],
                **{k: v for k, v in boot.items() if "diff" in k},
                "tstr_mae": float(errors["synthetic"]["abs"].mean()),
                "tstr_rmse": float(np.sqrt(errors["synthetic"]["sq"].mean())),
            }
        )
    # Does the real-only forecaster beat the better of the two mean-based naive forecasts?
    best = "naive" if metrics["naive_mae"] <= metrics["seasonal_naive_mae"] else "seasonal_naive"
    versus = metrics_lib.paired_bootstrap(
        metrics_lib.forecast_errors(naive[best], real),
        real_errors,
        num_resamples=ec.bootstrap_resamples,
        seed=config.seed,
    )
    metrics.update(
        {
            "best_naive": best,
            "real_over_best_naive_mae": metrics["real_mae"] / metrics[f"{best}_mae"],
            "real_vs_naive_mae_diff": versus["mae_diff"],
            "real_vs_naive_mae_diff_lo": versus["mae_diff_lo"],
            "real_vs_naive_mae_diff_hi": versus["mae_diff_hi"],
        }
    )
    table = comparison_table(metrics)
    logging.info("sales evaluation on %d %s windows:\n%s", len(source), ec.split, table)

    out_dir = os.path.join(workdir, "eval", f"{ec.split}_bundle" if bundle else ec.split)
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        with open(os.path.join(out_dir, "comparison.txt"), "w") as f:
            f.write(table + "\n")
        write_figures(config, parts, gan_state.params, source, real, fake, workdir, out_dir, mesh)
    if config.study.mode in ("only", "also") and bundle:
        logging.info(
            "study.mode=%s: the study's cells are in the training workdir, not in a "
            "bundle; skipped.",
            config.study.mode,
        )
    elif config.study.mode == "also":
        metrics.update(study_metrics(config, workdir, sources["test"]))
    return metrics


def forecaster_errors(config, workdir, forecaster_parts, source, real, mesh, metrics) -> dict:
    """Per-window errors of the workdir's three forecasters (best checkpoints) on `source`;
    their checkpoint steps go into `metrics`."""
    errors = {}
    for name in forecast.NAMES:
        params, step = forecast.restore_params(
            config, forecast.forecast_dir(workdir, name), forecaster_parts
        )
        _, pred = forecast_pass(
            forecaster_parts.eval_step, params, source, mesh, config.eval.global_batch_size
        )
        errors[name] = metrics_lib.forecast_errors(pred, real)
        metrics[f"{name}_checkpoint_step"] = step
    return errors


def study_metrics(config: ml_collections.ConfigDict, workdir: str, test_source) -> dict:
    """Rewrites the study's table and figure from its finished cells; flat scalars of it."""
    test = {
        k: stack_field(test_source, k)
        for k in ("history_sales", "history_features", "target_features", "target")
    }
    report = study_report.report(config, workdir, test)
    logging.info("sales study:\n%s", report["table"])
    return study_report.flat(report)


def write_figures(config, parts, gen_params, source, real, fake, workdir, out_dir, mesh) -> None:
    """distributions.png, samples.png (several samples per window) and training_curves.png."""
    ec = config.eval
    first_dow = np.argmax(stack_field(source, "target_features")[:, 0, :7], axis=-1)
    plots.plot_distributions(real, fake, first_dow, os.path.join(out_dir, "distributions.png"))
    picks = np.linspace(0, len(source) - 1, ec.num_plot_windows).round().astype(np.int64)
    subset = data_windows.Subset(source, picks)
    samples = np.stack(
        [
            generate(
                parts.eval_step,
                gen_params,
                subset,
                mesh,
                ec.global_batch_size,
                rng.stream(config.seed, "plot_samples", s),
            )[1]
            for s in range(ec.plot_samples)
        ],
        axis=1,
    )
    history = np.stack([source[int(i)]["history_sales"] for i in picks])
    plots.plot_samples(history, real[picks], samples, os.path.join(out_dir, "samples.png"))
    records = (
        read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    )
    plots.plot_training_curves(records, os.path.join(out_dir, "training_curves.png"))
