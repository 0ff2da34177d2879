"""Ensemble evaluation from a checkpoint: CRPS, spread/skill, ranks, Brier, baselines, products.

For each of `eval.num_cases` held-out start times, an ensemble of `eval.num_members` members rolls
out `eval.rollout_steps` steps of `data.leads[0]` hours. Scores are in standardised units (the
normaliser's transformed, standardised space) so the variables can be averaged:

- `crps` / `crps_fair`: ensemble CRPS averaged over variables and lead steps (the headline);
- `persistence_crps`: the deterministic persistence forecast (its CRPS is its MAE);
- `climatology_crps`: a per-gridpoint Gaussian N(mean, std) over the training period (closed-form
  CRPS): a probabilistic baseline;
- `spread_skill`: spread * sqrt((M+1)/M) / RMSE of the ensemble mean, 1 when calibrated;
- per variable and lead: `crps/<var>/lead<h>`, `rmse/...`, `spread/...`, `bias/...` (ensemble
  mean minus truth), `spread_skill/...`, `rank_histogram/...` and its flatness
  (`rank_chi2`, `rank_rel_entropy`, `rank_mean_offset`: metrics.rank_flatness);
  Brier score and reliability for exceedance events in physical units (REFC >= 35 dBZ, ...).
- DEF (jaxlab/weather/perturbed_ensemble.py; `eval.def_workdir` / `def_perturb_workdir`: the
  deterministic forecaster's and perturbation model's workdirs, mode `eval.def_mode`; and
  `eval.def_authors_workdir` / `def_authors_perturb_workdir`: the authors' pair, one system
  per walk count of `eval.def_authors_walks`): the deterministic forecasters alone, the DEF
  systems and direct sampling, same cases and members, scored under the standard protocol and
  the authors' (comparison.py): `compare/<system>/<score>/lead<k>` and
  `compare_authors/<system>/...`, per variable, with bootstrap intervals `..._ci95` and paired
  differences against direct sampling `compare_diff/...`, `compare_authors_diff/...`; the
  protocols are labelled in metrics.json (`protocols`); figure `def_comparison.png`, table
  `def_comparison.md`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import xarray as xr
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore, rng, steps_jit
from jaxlab.weather import comparison, data, ensemble, metrics, perturbed_ensemble, plots, steps


def denoising_loss(
    eval_step: Callable,
    params: Any,
    residual_std: Any,
    source: data.PairSource,
    mesh: jax.sharding.Mesh,
    ec: ml_collections.ConfigDict,
) -> dict[str, float]:
    """{"eval_loss"}: noise MSE of `params` (`Parts.eval_step`) on the first `ec.loss_examples`
    pairs of `source`; the loss train.py logs and the best checkpoint is chosen by."""
    subset = _FirstPairs(source, min(len(source), ec.loss_examples))
    totals, _ = steps_jit.eval_pass(
        eval_step, params, subset, mesh, ec.global_batch_size, residual_std, keep_outputs=False
    )
    return {"eval_loss": float(totals["loss"] / totals["count"])}


class _FirstPairs:
    """The first `n` records of a source (a random-access view)."""

    def __init__(self, source: data.PairSource, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.source[i]


def case_indices(source: data.PairSource, lead: int, steps: int, num_cases: int) -> list[int]:
    """Held-out start times with a previous hour and `steps` verifying times, evenly spaced."""
    times = source.times
    eval_idx = sorted({i for i, _, _ in source.pairs})
    index = {t: i for i, t in enumerate(times)}
    hour = np.timedelta64(1, "h")
    ok = [
        i
        for i in eval_idx
        if all(times[i] + k * lead * hour in index for k in range(1, steps + 1))
        and i - 1 >= 0
        and times[i - 1] == times[i] - hour
    ]
    if not ok:
        raise ValueError(f"No held-out start time with {steps} verifying times {lead} h apart.")
    picks = np.linspace(0, len(ok) - 1, min(num_cases, len(ok))).round().astype(int)
    return [ok[p] for p in picks]


def climatology(source: data.PairSource, num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gridpoint mean and std [H, W, C] of the standardised training states."""
    total, total_sq = 0.0, 0.0
    for i in range(num_train):
        x = source.state(i).astype(np.float64)
        total, total_sq = total + x, total_sq + x**2
    mean = total / num_train
    return mean.astype(np.float32), np.sqrt(np.maximum(total_sq / num_train - mean**2, 1e-6))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores `config.eval.checkpoint`; writes metrics.json, figures and products."""
    ec = config.eval
    mesh = mesh_lib.make_mesh(config.mesh)
    store = data.prepare(config, workdir)
    lead = int(config.data.leads[0])
    source = data.WithHour(data.PairSource(store, ec.split, (lead,), config.data.preload_max_mb))
    parts = steps.build(config, mesh)
    state, step = restore.restore_for_eval(config, workdir, parts)
    params = state.extra["ema"] if ec.use_ema else state.params
    scale = data.residual_scale(state.extra)

    m = ec.num_members
    step_fn = ensemble.make_forecast_step(parts.model, parts.extras.schedule, config, mesh, m)
    cases = case_indices(source, lead, ec.rollout_steps, ec.num_cases)
    clim_mean, clim_std = climatology(source, int(source.stats["num_train_times"]))
    thresholds = [(name, float(v)) for name, v in ec.thresholds]
    acc = _Accumulator(ec.rollout_steps, m)
    specs = def_specs(config)
    systems = [_def_system(config, mesh, spec, parts, params, scale, m) for spec in specs]
    compare = {p: {"direct": comparison.CaseScores(m)} for p in comparison.PROTOCOLS}
    product_case, product_score = None, -np.inf  # products: the most convective case
    for c, i in enumerate(cases):
        init = source.state(i)
        case_key = rng.stream(config.seed, "ensemble", c)
        hour = float(data.hour_of_day(source.times[i]))
        ens = ensemble.rollout(
            step_fn, params, jnp.asarray(init), lead, hour, case_key, m, ec.rollout_steps, scale
        )
        ens = np.asarray(jax.device_get(ens))
        truth = np.stack([source.state(i + k * lead) for k in range(1, ec.rollout_steps + 1)])
        acc.add(ens, truth, init, clim_mean, clim_std, source.normaliser, thresholds)
        if systems:
            scored = {"direct": ens}
            for system in systems:
                members, alone = perturbed_ensemble.rollout(
                    system["perturb_fn"],
                    system["det_fn"],
                    system["params"],
                    system["det"],
                    jnp.asarray(source.state(i - 1)),
                    jnp.asarray(init),
                    hour,
                    lead,
                    rng.stream(config.seed, "def_noise", c),
                    m,
                    ec.rollout_steps,
                    system["guidance"],
                    system["mode"],
                    scale,
                )
                members, alone = np.asarray(members), np.asarray(alone)
                if system["mode"] == "authors":  # standardised states: the init's moments
                    members = comparison.to_training_units(members, init)
                    alone = comparison.to_training_units(alone, init)
                scored[system["name"]] = members
                scored.setdefault(system["det_name"], alone)
            for name, e in scored.items():
                rescaled = np.stack(
                    [comparison.rescale_to_truth(e[k], truth[k]) for k in range(e.shape[0])]
                )
                for protocol, forecast in (("standard", e), ("authors", rescaled)):
                    compare[protocol].setdefault(name, comparison.CaseScores(e.shape[1]))
                    compare[protocol][name].add(forecast, truth, source.normaliser)
        convection = float(init[..., data.VARIABLES.index("refc")].max())
        if convection > product_score:
            product_case, product_score = (i, init, ens, truth), convection
        logging.info("evaluate: case %d/%d (time %s) done", c + 1, len(cases), source.times[i])
    results = acc.summary()
    names = list(compare["standard"]) if systems else []
    if systems:
        for protocol in comparison.PROTOCOLS:
            results.update(comparison.summary(compare[protocol], protocol, seed=config.seed))
        for system in systems:
            for key, value in system["settings"].items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    results[f"def_settings/{system['name']}/{key}"] = float(value)
    results["checkpoint_step"] = int(step)
    results["num_members"] = m
    results["num_cases"] = len(cases)

    out_dir = os.path.join(workdir, "eval", ec.split)
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        labelled = dict(results)
        if systems:  # what each comparison table means, and each DEF system's settings
            labelled["protocols"] = {
                comparison.PREFIX[p]: text for p, text in comparison.PROTOCOLS.items()
            }
            labelled["def_systems"] = {s["name"]: s["settings"] for s in systems}
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(labelled, f, indent=2, sort_keys=True)
        plots.rank_histogram(acc.ranks[0], os.path.join(out_dir, "rank_histogram.png"))
        plots.rank_histograms_by_lead(
            acc.ranks, lead, os.path.join(out_dir, "rank_histogram_by_variable.png")
        )
        plots.reliability(acc.reliability(), os.path.join(out_dir, "reliability.png"))
        plots.crps_by_lead(results, ec.rollout_steps, lead, os.path.join(out_dir, "crps.png"))
        if systems:
            comparison.write(out_dir, results, names, ec.rollout_steps, lead)
        if ec.products and product_case is not None:
            i, init, ens, truth = product_case
            write_products(
                out_dir, source, i, lead, init, ens, thresholds, ec.sample_members_plotted
            )
    logging.info(
        "weather eval: crps %.4f | persistence %.4f | climatology %.4f | spread/skill %.2f",
        results["crps"],
        results["persistence_crps"],
        results["climatology_crps"],
        results["spread_skill"],
    )
    return results


class _Accumulator:
    """Sums of per-variable, per-lead scores over cases (means at the end)."""

    def __init__(self, steps: int, members: int):
        c = len(data.VARIABLES)
        self.n = 0
        self.crps = np.zeros((steps, c))
        self.crps_fair = np.zeros((steps, c))
        self.persist = np.zeros((steps, c))
        self.clim = np.zeros((steps, c))
        self.sq_err = np.zeros((steps, c))
        self.var = np.zeros((steps, c))
        self.bias = np.zeros((steps, c))
        self.ranks = np.zeros((steps, c, members + 1), np.int64)
        self.members = members
        self.events: dict[str, list] = {}

    def add(self, ens, truth, init, clim_mean, clim_std, normaliser, thresholds):
        """ens [K, M, H, W, C], truth [K, H, W, C], init [H, W, C] (standardised)."""
        self.n += 1
        for k in range(ens.shape[0]):
            e, y = ens[k], truth[k]
            self.crps[k] += np.asarray(metrics.grid_mean_crps(e, y))
            # One member: the fair CRPS is its MAE too.
            self.crps_fair[k] += np.asarray(metrics.grid_mean_crps(e, y, fair=self.members > 1))
            self.persist[k] += np.abs(init - truth[k]).mean(axis=(0, 1))
            self.clim[k] += np.asarray(metrics.grid_mean_crps_gaussian(clim_mean, clim_std, y))
            self.sq_err[k] += ((ens[k].mean(0) - truth[k]) ** 2).mean(axis=(0, 1))
            self.var[k] += ens[k].var(0, ddof=min(1, self.members - 1)).mean(axis=(0, 1))
            self.bias[k] += (ens[k].mean(0) - truth[k]).mean(axis=(0, 1))
            for v in range(len(data.VARIABLES)):
                self.ranks[k, v] += metrics.rank_histogram(ens[k][..., v], truth[k][..., v])
        phys_ens, phys_truth = normaliser.decode(ens[0]), normaliser.decode(truth[0])
        for name, thr in thresholds:
            v = data.VARIABLES.index(name)
            prob = np.asarray(metrics.exceedance_probability(phys_ens[..., v], thr))
            self.events.setdefault(metrics.event_key(name, thr), []).append(
                (prob, phys_truth[..., v] >= thr)
            )

    def reliability(self):
        out = {}
        for key, pairs in self.events.items():
            prob = np.concatenate([p.ravel() for p, _ in pairs])
            event = np.concatenate([o.ravel() for _, o in pairs])
            out[key] = metrics.reliability(prob, event)
        return out

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        r: dict[str, float] = {}
        crps, fair = self.crps / n, self.crps_fair / n
        persist, clim = self.persist / n, self.clim / n
        rmse, spread = np.sqrt(self.sq_err / n), np.sqrt(self.var / n)
        m = self.members
        r["crps"] = float(crps.mean())
        r["crps_fair"] = float(fair.mean())
        r["persistence_crps"] = float(persist.mean())
        r["climatology_crps"] = float(clim.mean())
        r["rmse"] = float(rmse.mean())
        r["spread"] = float(spread.mean())
        r["spread_skill"] = float(np.mean(spread * np.sqrt((m + 1) / m)) / rmse.mean())
        for k in range(crps.shape[0]):
            r[f"crps/lead{k + 1}"] = float(crps[k].mean())
            r[f"spread_skill/lead{k + 1}"] = spread_skill(self.sq_err[k] / n, self.var[k] / n, m)
            r[f"persistence_crps/lead{k + 1}"] = float(persist[k].mean())
            for v, name in enumerate(data.VARIABLES):
                r[f"crps/{name}/lead{k + 1}"] = float(crps[k, v])
                r[f"crps_fair/{name}/lead{k + 1}"] = float(fair[k, v])
                r[f"persistence_crps/{name}/lead{k + 1}"] = float(persist[k, v])
                r[f"climatology_crps/{name}/lead{k + 1}"] = float(clim[k, v])
                r[f"rmse/{name}/lead{k + 1}"] = float(rmse[k, v])
                r[f"spread/{name}/lead{k + 1}"] = float(spread[k, v])
                r[f"bias/{name}/lead{k + 1}"] = float(self.bias[k, v] / n)
                r[f"spread_skill/{name}/lead{k + 1}"] = float(
                    spread[k, v] * np.sqrt((m + 1) / m) / max(rmse[k, v], 1e-12)
                )
                flat = metrics.rank_flatness(self.ranks[k, v])
                for key, value in flat.items():
                    r[f"rank_{key}/{name}/lead{k + 1}"] = value
                r[f"rank_histogram/{name}/lead{k + 1}"] = self.ranks[k, v].tolist()
        for key, pairs in self.events.items():
            prob = np.concatenate([p.ravel() for p, _ in pairs])
            event = np.concatenate([o.ravel() for _, o in pairs])
            r[f"brier/{key}"] = metrics.brier_score(prob, event)
            r[f"brier_climatology/{key}"] = metrics.brier_score(
                np.full_like(prob, event.mean()), event
            )
        for v, name in enumerate(data.VARIABLES):
            r[f"rank_histogram/{name}"] = self.ranks[0, v].tolist()
        return r


def spread_skill(sq_err: np.ndarray, var: np.ndarray, members: int) -> float:
    """Mean over variables of spread * sqrt((M+1)/M) over the mean ensemble-mean RMSE.

    sq_err, var [C]: mean squared error of the ensemble mean and mean ensemble variance per
    variable (already averaged over cases); the same aggregation for direct sampling and DEF.
    """
    spread, rmse = np.sqrt(var), np.sqrt(sq_err)
    return float(np.mean(spread * np.sqrt((members + 1) / members)) / rmse.mean())


def def_specs(config: ml_collections.ConfigDict) -> list[dict]:
    """The DEF systems to evaluate: {"name", "det_name", "mode", "det_workdir",
    "perturb_workdir", "guidance", "walks"} for `eval.def_workdir` (system "def", mode
    `eval.def_mode`) and, with `eval.def_authors_workdir`, one authors' system per walk count."""
    ec, specs = config.eval, []
    if ec.get("def_workdir", ""):  # older recorded configs lack it
        specs.append(
            {
                "name": "def",
                "det_name": "deterministic",
                "mode": perturbed_ensemble.mode_of(config),
                "det_workdir": ec.def_workdir,
                "perturb_workdir": ec.get("def_perturb_workdir", ""),
                "guidance": float(ec.def_guidance),
                "walks": int(ec.def_walks),
            }
        )
    if ec.get("def_authors_workdir", ""):
        for walks in ec.def_authors_walks:
            specs.append(
                {
                    "name": f"def_authors_j{int(walks)}",
                    "det_name": "deterministic_authors",
                    "mode": "authors",
                    "det_workdir": ec.def_authors_workdir,
                    "perturb_workdir": ec.def_authors_perturb_workdir,
                    "guidance": float(ec.def_authors_guidance),
                    "walks": int(walks),
                }
            )
    return specs


def _def_system(config, mesh, spec, parts, params, scale, m) -> dict:
    """A DEF system ready to roll out: its forecaster and perturbation model restored with their
    own recorded configs (checked against the evaluated run, `perturbed_ensemble.check_run`),
    the jitted steps, the guidance and the settings it ran with."""
    mode = spec["mode"]
    det = perturbed_ensemble.restore(config, mesh, spec["det_workdir"], mode, "forecaster")
    logging.info("DEF %s: forecaster step %d from %s", spec["name"], det.step, spec["det_workdir"])
    settings = {"mode": mode, "guidance": spec["guidance"], "walks": spec["walks"]}
    if mode == "change":
        pert_params, pert = params, None
        settings["level"] = int(config.eval.def_level)
    else:
        if not spec["perturb_workdir"]:
            raise ValueError(
                f"eval.def_mode {mode!r} needs the perturbation model's workdir "
                "(eval.def_perturb_workdir / eval.def_authors_perturb_workdir), or set "
                "eval.def_mode='change'."
            )
        pert = perturbed_ensemble.restore(
            config, mesh, spec["perturb_workdir"], mode, "perturbation"
        )
        logging.info(
            "DEF %s: perturbation model step %d from %s",
            spec["name"],
            pert.step,
            spec["perturb_workdir"],
        )
        pert_params = pert.params
        settings.update(perturbed_ensemble.sampler_settings(pert.config, pert.schedule))
    perturb_fn = perturbed_ensemble.make_perturb_fn(
        mode, config, mesh, m, pert, spec["walks"], parts.model, parts.extras.schedule
    )
    return dict(
        spec,
        det=det,
        det_fn=perturbed_ensemble.deterministic_fn(det),
        perturb_fn=perturb_fn,
        params=pert_params,
        settings=settings,
    )


def write_products(out_dir, source, i, lead, init, ens, thresholds, num_plotted):
    """NetCDF of the ensemble (physical units) and the five PNG folders, for one start time."""
    norm = source.normaliser
    members = norm.decode(ens)  # [K, M, H, W, C]
    current = norm.decode(init)
    mean, spread = members.mean(1), members.std(1, ddof=1)

    valid = source.times[i] + np.arange(1, ens.shape[0] + 1) * lead * np.timedelta64(1, "h")
    coords = {
        "lead_time": ("lead_time", np.arange(1, ens.shape[0] + 1) * lead, {"units": "h"}),
        "member": np.arange(ens.shape[1]),
        "valid_time": ("lead_time", valid),
        "init_time": source.times[i],
        "latitude": (("y", "x"), source.ds["latitude"].values, {"units": "degrees_north"}),
        "longitude": (("y", "x"), source.ds["longitude"].values, {"units": "degrees_east"}),
    }
    variables = {}
    for v, name in enumerate(data.VARIABLES):
        units = {"units": data.UNITS[name]}
        variables[name] = (
            ("lead_time", "member", "y", "x"),
            members[..., v].astype(np.float32),
            units,
        )
        variables[f"{name}_mean"] = (
            ("lead_time", "y", "x"),
            mean[..., v].astype(np.float32),
            units,
        )
        variables[f"{name}_spread"] = (
            ("lead_time", "y", "x"),
            spread[..., v].astype(np.float32),
            units,
        )
    probs = {}
    for name, thr in thresholds:
        v = data.VARIABLES.index(name)
        p = (members[..., v] >= thr).mean(1).astype(np.float32)
        key = f"prob_{name}_ge_{thr:g}"
        probs[key] = (name, thr, p)
        variables[key] = (
            ("lead_time", "y", "x"),
            p,
            {"units": "1", "long_name": f"P({name} >= {thr:g} {data.UNITS[name]})"},
        )
    ds = xr.Dataset(variables, coords=coords, attrs={"model": "jaxlab.weather conditional DDPM"})
    ds.to_netcdf(os.path.join(out_dir, "ensemble.nc"), engine="h5netcdf")
    plots.products(out_dir, current, mean[0], spread[0], probs, members[0], num_plotted,
                   source.ds["latitude"].values, source.ds["longitude"].values)  # fmt: skip
