"""The vegetation study: what do the weather residual and the DC term of the decoder buy?

The seed's forecaster sums three decoder terms on top of the ConvLSTM features: Fourier harmonics
of the day of year (the seasonal shape), a DC offset per pixel (the k = 0 term: a level that the
harmonics, tied to the calendar, cannot hold still over the horizon) and a weather residual (the
response to the target period's E-OBS weather, which the context frames cannot know). The study
trains, on the same cubes and with the same seeds, and scores on the same held-out cubes:

  full                  the reference: the model as `model.VegetationForecaster` has it
  no_weather_residual   without the weather term (`model.weather_residual=False`): the weather
                        input is unused
  no_dc                 without the DC offset (`model.fourier_dc=False`): harmonics k >= 1 only
  persistence           the last best-available-pixel composite, held (no training)
  climatology           the mean NDVI of past years per pixel and day of year (no training): the
                        synthetic cubes' written climatology (synthetic.py), or on real data
                        `eval.climatology_dir` (the official GreenEarthNet climatology); left
                        out when there is none

Each trained arm x seed is an ordinary run (`train.train_and_evaluate` in
`<workdir>/arms/<arm>/s<seed>`, resumable, best checkpoint by validation loss; all cells read one
record cache, `<workdir>/cache` unless `data.cache_dir` is set) followed by
`evaluate.evaluate`, which writes its forecasts of the held-out split in the official layout
(`eval/<split>/preds`, persistence in `preds_persistence`) and its metrics.json; a finished cell
leaves `<workdir>/study/done_<arm>_s<seed>.json` and a rerun skips it. The report reads every
arm's forecast files back and scores each held-out cube with the official scorer
(`metrics.pixel_scores`): NDVI RMSE, R^2 and outperformance against climatology (against
persistence without one), each with its difference to `full` and a paired bootstrap 95% interval
over held-out cubes (`core.study`). A resample's cubes are scored as the official summary scores a
dataset (per cube and land cover, then per land cover, then the mean over land covers), so on
all cubes the study's numbers are evaluate's metrics.json numbers; with several seeds a trained
arm's statistic is the mean over seeds inside every resample. Files: `study/table.md`,
`study/study.png`, `study/study.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import study as study_lib
from jaxlab.vegetation import data, evaluate, metrics, train
from jaxlab.vegetation.format import CLIMATOLOGY_FOLDER

TRAINED = {  # arm -> model keys it changes
    "full": {},
    "no_weather_residual": {"weather_residual": False},
    "no_dc": {"fourier_dc": False},
}
BASELINES = ("persistence", "climatology")
ARMS = (*TRAINED, *BASELINES)
SCORED_LANDCOVERS = tuple(metrics.LANDCOVER_NAMES)  # the classes the quality filter keeps
METRIC_LABELS = {"ndvi_rmse": "NDVI RMSE", "ndvi_r2": "NDVI R^2"}


def arm_config(
    config: ml_collections.ConfigDict, arm: str, seed: int, data_dir: str, clim_dir: str
) -> ml_collections.ConfigDict:
    """`config` for one trained arm and seed, reading the study's one dataset in `data_dir`."""
    if arm not in TRAINED:
        raise ValueError(f"config.study.arms: {arm!r} is not a trained arm; expected {ARMS}.")
    c = study_lib.cell_config(config, seed, "dir", data_dir)
    c.eval.climatology_dir = clim_dir
    c.eval.num_plot_cubes = 0
    for key, value in TRAINED[arm].items():
        c.model[key] = value
    return c


def climatology_dir(config: ml_collections.ConfigDict, data_dir: str) -> str:
    """The held-out split's climatology predictions: `eval.climatology_dir`, else the synthetic
    data's written one, else "" (none)."""
    if config.eval.climatology_dir:
        return config.eval.climatology_dir
    path = os.path.join(data_dir, CLIMATOLOGY_FOLDER, config.eval.split)
    return path if os.path.isdir(path) else ""


def done_path(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, "study", f"done_{arm}_s{seed}.json")


def cell_dir(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, "arms", arm, f"s{seed}")


def finished(result: dict, config: ml_collections.ConfigDict) -> bool:
    """Whether a `train_and_evaluate` result is a finished run (not one stopped by SIGTERM)."""
    if result.get("stopped_at", -1) >= 0:
        return True
    if config.train.get("num_steps", 0) > 0:
        return result.get("step", 0) >= config.train.num_steps
    return result.get("epoch", 0) >= config.train.num_epochs


def run_cells(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str] | None:
    """Trains and evaluates every trained arm x seed not done yet; returns (data_dir,
    climatology dir or ""), or None when a run stopped early (preemption: rerun to go on)."""
    sc = config.study
    data_dir = data.prepare(config, workdir)
    clim_dir = climatology_dir(config, data_dir)
    os.makedirs(os.path.join(workdir, "study"), exist_ok=True)
    # The training track's normalisation, computed once and given to every cell (each would
    # compute the same from the same cubes).
    data.normalisation(config, os.path.join(workdir, "study"), data_dir)
    for arm in sc.arms:
        if arm in BASELINES:
            continue
        for seed in sc.seeds:
            path = done_path(workdir, arm, seed)
            if os.path.exists(path):
                continue
            c = arm_config(config, arm, seed, data_dir, clim_dir)
            # Every cell reads the same cubes with the same normalisation: one record cache,
            # <workdir>/cache, built by the first cell and read by the others (cache.py).
            c.data.cache_dir = config.data.cache_dir or os.path.join(workdir, "cache")
            arm_dir = cell_dir(workdir, arm, seed)
            os.makedirs(arm_dir, exist_ok=True)
            norm_path = os.path.join(arm_dir, "normalisation.json")
            if not os.path.exists(norm_path):
                shutil.copy(os.path.join(workdir, "study", "normalisation.json"), norm_path)
            logging.info("=== study: arm %s, seed %d (%s)", arm, seed, arm_dir)
            if not finished(train.train_and_evaluate(c, arm_dir), c):
                return None
            result = evaluate.evaluate(c, arm_dir)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=2)
            os.replace(tmp, path)
    return data_dir, clim_dir


# ----------------------------------------------------------------------------- per-cube scores


def cube_scores(
    config: ml_collections.ConfigDict, workdir: str, data_dir: str, clim_dir: str
) -> tuple[list[str], dict[str, list[list[dict]]]]:
    """(cube ids [N], arm -> per seed -> [N] official `metrics.pixel_scores` of each cube).

    Trained arms are read from their forecast files (one list per seed), persistence from the
    first trained cell's `preds_persistence` (the same last BAP for every cell), climatology
    from `clim_dir` (a cube without one is an error: the arms must see the same cubes).
    """
    sc, d = config.study, config.data
    split = config.eval.split
    source = data.CubeSource(data_dir, split, config)
    target_index = source.frame_days[d.num_context :]
    trained = [a for a in sc.arms if a in TRAINED]
    first_cell = cell_dir(workdir, trained[0], sc.seeds[0])
    files = {  # arm -> per seed -> prediction folder
        arm: [os.path.join(cell_dir(workdir, arm, s), "eval", split, "preds") for s in sc.seeds]
        for arm in trained
    }
    files["persistence"] = [os.path.join(first_cell, "eval", split, "preds_persistence")]
    ids: list[str] = []
    scores: dict[str, list[list[dict]]] = {
        arm: [[] for _ in folders] for arm, folders in files.items()
    }
    if "climatology" in sc.arms and clim_dir:
        scores["climatology"] = [[]]
    for path, start in source.items:
        region, name = data.region_and_name(path)
        ids.append(f"{region}/{name}")
        target = evaluate.read_target(path, d.engine, start, d.cube_days)
        times = target["time"][target_index]
        for arm, folders in files.items():
            for k, folder in enumerate(folders):
                pred = evaluate.read_prediction(os.path.join(folder, region, name), times, d.engine)
                scores[arm][k].append(metrics.pixel_scores(target, pred, target_index))
        if "climatology" in scores:
            clim = evaluate.read_climatology(clim_dir, region, name, times, d.engine)
            if clim is None:
                raise FileNotFoundError(
                    f"{clim_dir}: no climatology for cube {region}/{name}; expected "
                    f"{os.path.join(clim_dir, region, name)} with `ndvi_pred` (or drop "
                    "'climatology' from config.study.arms)."
                )
            scores["climatology"][0].append(metrics.pixel_scores(target, clim, target_index))
    return ids, scores


def landcover_table(ids: list[str], cubes: list[dict]) -> np.ndarray:
    """[N, L, 2] per cube and scored land cover: the official (cube, land cover) group means of
    rmse and r^2 (NaN where the cube has no high-quality pixel of that class)."""
    out = np.full((len(cubes), len(SCORED_LANDCOVERS), 2), np.nan)
    for n, (cube_id, s) in enumerate(zip(ids, cubes, strict=True)):
        summary = metrics.summarize([(cube_id, s)])
        for j, lc in enumerate(SCORED_LANDCOVERS):
            name = metrics.LANDCOVER_NAMES[lc]
            out[n, j] = summary[f"rmse_{name}"], summary[f"R2_{name}"]
    return out


def outperformance_counts(
    ids: list[str], cubes: list[dict], reference: list[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """(groups that outperform [N], groups [N]) per cube against `reference`'s forecast of the
    same cube: the official outperformance (`metrics.outperformance`) of one cube, as counts,
    so any set of cubes' outperformance is sum(passed) / sum(groups)."""
    passed, groups = np.zeros(len(cubes)), np.zeros(len(cubes))
    for n, (cube_id, s, r) in enumerate(zip(ids, cubes, reference, strict=True)):
        either = s["quality"] | r["quality"]
        groups[n] = len(np.unique(s["landcover"][either]))
        if groups[n]:
            fraction = metrics.outperformance([(cube_id, s)], [(cube_id, r)])["outperform"]
            passed[n] = round(fraction * groups[n])
    return passed, groups


def _landcover_mean(table: np.ndarray, idx: np.ndarray, column: int) -> float:
    """The official dataset mean over the cubes `idx` (repeats count as separate cubes): per
    land cover the mean over its (cube, land cover) groups, then the mean over land covers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.nanmean(table[idx, :, column], axis=0)))


def statistics(
    tables: list[np.ndarray], counts: list[tuple[np.ndarray, np.ndarray]] | None
) -> dict[str, study_lib.Statistic]:
    """One arm's metrics as functions of held-out cube indices, averaged over its seeds.

    tables: per seed `landcover_table` [N, L, 2]; counts: per seed `outperformance_counts`
    (None: no outperformance reference).
    """
    out = {
        "ndvi_rmse": lambda idx: float(np.mean([_landcover_mean(t, idx, 0) for t in tables])),
        "ndvi_r2": lambda idx: float(np.mean([_landcover_mean(t, idx, 1) for t in tables])),
    }
    if counts is not None:
        out["outperform"] = lambda idx: float(
            np.mean([p[idx].sum() / max(g[idx].sum(), 1) for p, g in counts])
        )
    return out


def report(config: ml_collections.ConfigDict, workdir: str, data_dir: str, clim_dir: str) -> dict:
    """Scores every arm's forecasts, writes study/table.md, study.png, study.json; returns the
    `core.study.compare` result (plus per-seed values)."""
    sc = config.study
    ids, scores = cube_scores(config, workdir, data_dir, clim_dir)
    arms = [a for a in study_lib.arms_in_order(sc.arms, sc.reference) if a in scores]
    against = "climatology" if "climatology" in scores else "persistence"
    labels = {**METRIC_LABELS, "outperform": f"outperformance vs {against}"}
    by_metric: dict[str, dict] = {m: {} for m in labels}
    per_seed: dict[str, dict] = {}
    reference = scores[against][0]
    for arm in arms:
        tables = [landcover_table(ids, cubes) for cubes in scores[arm]]
        counts = [outperformance_counts(ids, cubes, reference) for cubes in scores[arm]]
        everything = np.arange(len(ids))
        stats = statistics(tables, counts)
        per_seed[arm] = {
            m: [statistics([t], [c])[m](everything) for t, c in zip(tables, counts, strict=True)]
            for m in labels
        }
        for name, fn in stats.items():
            by_metric[name][arm] = fn
    notes = (
        f"Seeds {tuple(sc.seeds)} (a trained arm's statistic is its mean over seeds); split "
        f"{config.eval.split}; official GreenEarthNet scores (high-quality pixels, per cube and "
        f"land cover, then per land cover); outperformance against {against}."
    )
    extra = {"per_seed": per_seed, "seeds": list(sc.seeds), "cubes": ids}
    extra["outperformance_reference"] = against
    cases = "held-out cubes"
    return study_lib.report(
        "vegetation", workdir, config, by_metric, len(ids), cases, labels, notes, extra
    )


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`jaxlab study`: all cells (resuming), then the report; returns flat scalars."""
    study_lib.require_block(config, "vegetation")
    done = run_cells(config, workdir)
    if done is None:
        return {}
    result = report(config, workdir, *done)
    return study_lib.flat(result, "study")
