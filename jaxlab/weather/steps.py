"""The forecaster's parts and pure steps: what train.py, evaluate.py and the benchmark share.

The diffused quantity is the standardised *change* over one lead time, scaled to unit variance
per variable, r = (x_{t+lead} - x_t) / residual_std (GenCast-style residual target; set
`diffusion.residual = False` to diffuse x_{t+lead} itself). `residual_std` [C] is computed from
the training pairs when a run starts and kept in the checkpoint (`TrainState.extra`), so
evaluation uses the exact training scale; `residual_mean` [C] (the scaled change's mean) is kept
beside it as the samplers' prior mean. The EMA of the parameters, also in `extra`, is updated
inside the step, so it is checkpointed and resumed with everything else.

The three objectives are three loss functions, chosen in `build` (`loss_function`):
`diffusion_loss` (the conditional DDPM), `mse_loss` (DEF's deterministic forecaster) and
`perturbation_loss` (DEF's perturbation model, with the authors' analyses / forecasts / null
mix); each maps (params, batch, key, extra, train) to a per-example loss [B], so the train and
eval steps do not branch on the objective. The residual scale is applied through
`data.encode_change` / `data.decode_change` (training, evaluation and sampling alike); with
`data.spatial_standardise` every state is standardised over the grid first.

Records carry the initial state's hour of day (`data.WithHour`), the network's `model.use_hour`
input.

`build(config, mesh)` returns `Parts`; `benchmark_setup` / `benchmark_sampling` are the hooks of
scripts/benchmark.py (a train step, and ensemble sampling at the full grid).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import restore, rng
from jaxlab.core import state as state_lib
from jaxlab.core.bundle_files import read_config as read_recorded_config
from jaxlab.weather import data, data_resident, diffusion, ensemble
from jaxlab.weather import model as model_lib


@dataclasses.dataclass(frozen=True)
class Extras:
    schedule: diffusion.Schedule  # the noise schedule the network is trained (and sampled) on
    grid_shape: tuple[int, int, int]  # training input [H, W, C]: the crop, or the full grid


def grid_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """[H, W, C] of a training example: `data.crop` when set, else the full `data.shape`."""
    height, width = tuple(config.data.crop) or tuple(config.data.shape)
    return (int(height), int(width), len(data.VARIABLES))


def init_state(
    rng_key, *, model, tx, grid_shape, residual_std, residual_mean, forecaster=None
) -> state_lib.TrainState:
    """Fresh state; `extra` holds the EMA params (starting at the params), residual_std [C]
    and residual_mean [C], and for the authors' perturbation training mix the deterministic
    forecaster {"params", "std", "mean"} it trains on (checkpointed with the run)."""
    params = model_lib.init_params(model, rng_key, grid_shape)
    extra = {
        "ema": params,
        "residual_std": jnp.asarray(residual_std, jnp.float32),
        "residual_mean": jnp.asarray(residual_mean, jnp.float32),
    }
    if forecaster is not None:
        extra["forecaster"] = forecaster
    return state_lib.create_train_state(params, tx, extra=extra)


def model_states(batch: dict[str, jax.Array], spatial: bool) -> dict[str, jax.Array]:
    """The batch with cond / target [B, H, W, C] standardised per sample and channel over the
    grid when `spatial` (`data.spatial_standardise`: DEF as its authors run it), else as is."""
    if not spatial:
        return batch
    return dict(
        batch,
        cond=data.spatial_standardise(batch["cond"]),
        target=data.spatial_standardise(batch["target"]),
    )


def deterministic_inputs(x0: jax.Array):
    """(x_t, t, target) of the deterministic forecaster: the same network, fed zeros in place of
    the noisy sample at diffusion step 0, regresses the scaled change x0 [B, H, W, C]."""
    return jnp.zeros_like(x0), jnp.zeros((x0.shape[0],), jnp.int32), x0


def perturbation_inputs(
    state: jax.Array,
    key: jax.Array,
    cond_drop: float,
    forecast: jax.Array | None = None,
    forecast_fraction: float = 0.0,
):
    """(x0, cond, kept, forecast_used) of DEF's perturbation model, [B, H, W, C] / [B] bool.

    Each example is the analysis `state` (sample and condition at once), or with probability
    `forecast_fraction` among the kept ones the forecaster's output `forecast` of that state
    (sample and condition), and its condition is zeros (the null condition of classifier-free
    guidance) for a fraction `cond_drop` of the examples. The authors' mix is cond_drop 0.1,
    forecast_fraction 0.5: 45% analyses, 45% forecasts, 10% null (whose sample is the
    analysis). forecast_fraction 0 draws exactly the former analyses-only mix.
    """
    b = state.shape[0]
    kept = jax.random.bernoulli(key, 1.0 - cond_drop, (b,))
    if forecast_fraction > 0:
        used = jax.random.bernoulli(jax.random.fold_in(key, 1), forecast_fraction, (b,)) & kept
        x0 = jnp.where(used[:, None, None, None], forecast, state)
    else:
        used, x0 = jnp.zeros((b,), bool), state
    return x0, jnp.where(kept[:, None, None, None], x0, 0.0), kept, used


def _noised(schedule, x0, key, prediction):
    """(x_t, t, target) [B, ...]: one key for the batch (training), or keys [B] (evaluation: each
    example its own draw, so a record's loss does not depend on the batch it is in)."""
    if key.ndim == 0:
        return diffusion.loss_targets(schedule, x0, key, prediction)
    xt, t, target = jax.vmap(lambda x, k: diffusion.loss_targets(schedule, x[None], k, prediction))(
        x0, key
    )
    return xt[:, 0], t[:, 0], target[:, 0]


def _per_example_mse(pred, target):
    return jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))


def diffusion_loss(
    params, batch, key, extra, train, *, model, schedule, prediction, residual, use_hour, spatial
):
    """Per-example noise (or v) MSE [B] of the conditional diffusion model of the scaled change
    (or of the next state itself, `residual` False) given the current state."""
    del train
    batch = model_states(batch, spatial)
    scale = data.residual_scale(extra)
    x0 = data.encode_change(scale, batch["cond"], batch["target"], residual)
    xt, t, target = _noised(schedule, x0, key, prediction)
    pred = model_lib.apply(
        model, params, xt, batch["cond"], t, batch["lead"], batch.get("hour"), use_hour
    )
    return _per_example_mse(pred, target)


def mse_loss(params, batch, key, extra, train, *, model, residual, use_hour, spatial):
    """Per-example MSE [B] of the deterministic forecaster: the network at diffusion step 0 on
    zeros regresses the scaled change (or the next state, `residual` False); no noise."""
    del key, train
    batch = model_states(batch, spatial)
    scale = data.residual_scale(extra)
    x0 = data.encode_change(scale, batch["cond"], batch["target"], residual)
    xt, t, target = deterministic_inputs(x0)
    pred = model_lib.apply(
        model, params, xt, batch["cond"], t, batch["lead"], batch.get("hour"), use_hour
    )
    return _per_example_mse(pred, target)


def forecaster_output(forecaster, state, lead, hour, *, model):
    """The deterministic forecaster G [B, H, W, C] -> [B, H, W, C] from `forecaster` = {"params",
    "std", "mean", "residual", "use_hour"} (`extra["forecaster"]`, or a restored run's)."""
    zeros = jnp.zeros_like(state)
    t = jnp.zeros((state.shape[0],), jnp.int32)
    out = model_lib.apply(
        model, forecaster["params"], zeros, state, t, lead, hour, forecaster["use_hour"]
    )
    scale = {"std": forecaster["std"], "mean": forecaster["mean"]}
    return data.decode_change(scale, state, out, forecaster["residual"])


def perturbation_loss(
    params,
    batch,
    key,
    extra,
    train,
    *,
    model,
    schedule,
    prediction,
    use_hour,
    spatial,
    cond_drop,
    forecast_fraction,
    forecaster_static,
):
    """Per-example noise MSE [B] of DEF's perturbation model: a diffusion model of the state given
    itself (`perturbation_inputs`: the analysis or, `forecast_fraction` of the kept examples,
    the forecaster's output of it; the condition dropped for `cond_drop`). The forecaster's
    params live in `extra["forecaster"]` (restored with the run); its output is used raw, as
    the authors' training step does. Evaluation (`train` False) keeps the analysis and its
    condition.
    """
    state = model_states(batch, spatial)["cond"]
    if train:
        noise_key, drop_key = jax.random.split(key)
        forecast = None
        if forecast_fraction > 0:
            forecaster = dict(extra["forecaster"], **forecaster_static)
            forecast = jax.lax.stop_gradient(
                forecaster_output(forecaster, state, batch["lead"], batch.get("hour"), model=model)
            )
        x0, cond, _, _ = perturbation_inputs(
            state, drop_key, cond_drop, forecast, forecast_fraction
        )
    else:
        noise_key, x0, cond = key, state, state
    xt, t, target = _noised(schedule, x0, noise_key, prediction)
    # The authors' perturbation model has no lead or hour input: lead is a constant 1 and the
    # hour enters only with `use_hour`.
    pred = model_lib.apply(
        model, params, xt, cond, t, jnp.ones_like(batch["lead"]), batch.get("hour"), use_hour
    )
    return _per_example_mse(pred, target)


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    loss_fn: Callable,
    tx: Any,
    ema_decay: float,
    seed: int,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer (micro-)step on `loss_fn` (one of `diffusion_loss`, `mse_loss`,
    `perturbation_loss`, chosen in `build`); the EMA follows every step.

    batch: cond, target [B, H, W, C] standardised states, lead [B] hours, hour [B] hour of day
    of cond (used when `model.use_hour`), index [B] record ids.
    Diffusion steps and noise come from the stream "diffusion_noise" folded with the step, so
    a resumed run draws exactly the noise of an uninterrupted one.
    """
    key = rng.stream(seed, "diffusion_noise", state.step)

    def mean_loss(params):
        return jnp.mean(loss_fn(params, batch, key, state.extra, True))

    loss, grads = jax.value_and_grad(mean_loss)(state.params)
    state = state_lib.apply_gradients(state, tx, grads, loss)
    ema = jax.tree.map(
        lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.extra["ema"], state.params
    )
    state = state.replace(extra=dict(state.extra, ema=ema))
    return state, state_lib.step_metrics(loss, grads, batch)


def eval_step(
    params: Any,
    batch: dict[str, jax.Array],
    valid: jax.Array,
    residual_std: jax.Array,
    *,
    loss_fn: Callable,
    seed: int,
    extra: Any = None,
):
    """`loss_fn`'s per-example loss [B] (condition kept) and its sums over valid examples
    {"loss", "count"}.

    Each example draws its diffusion step and noise from the stream "eval_noise" folded with its
    record index, so the loss of a record is the same in every evaluation and for any batch size.
    `residual_std` [C] is the run's scale (its mean does not enter a loss).
    """
    keys = jax.vmap(lambda index: rng.stream(seed, "eval_noise", index))(batch["index"])
    extra = dict(extra or {}, residual_std=residual_std)
    per_example = loss_fn(params, batch, keys, extra, False)
    weight = valid.astype(jnp.float32)
    sums = {"loss": jnp.sum(weight * per_example), "count": jnp.sum(weight)}
    return sums, per_example


def loss_function(config: ml_collections.ConfigDict, model: nn.Module, schedule) -> Callable:
    """The objective's loss function, `train.objective`: "diffusion" (the conditional DDPM),
    "mse" (DEF's deterministic forecaster) or "perturbation" (DEF's perturbation model), with
    the config's settings bound."""
    dc, objective = config.diffusion, config.train.get("objective", "diffusion")
    common = dict(
        model=model,
        use_hour=config.model.use_hour,
        spatial=bool(config.data.get("spatial_standardise", False)),
    )
    if objective == "diffusion":
        return functools.partial(
            diffusion_loss,
            schedule=schedule,
            prediction=dc.prediction,
            residual=dc.residual,
            **common,
        )
    if objective == "mse":
        return functools.partial(mse_loss, residual=dc.residual, **common)
    if objective == "perturbation":
        fraction = float(config.train.get("forecast_fraction", 0.0))
        static = {}
        if fraction > 0:
            static = {
                "residual": bool(config.train.forecaster_residual),
                "use_hour": bool(config.train.forecaster_use_hour),
            }
        return functools.partial(
            perturbation_loss,
            schedule=schedule,
            prediction=dc.prediction,
            cond_drop=config.train.get("cond_drop", 0.1),
            forecast_fraction=fraction,
            forecaster_static=static,
            **common,
        )
    raise ValueError(
        f"train.objective must be 'diffusion', 'mse' or 'perturbation', got {objective!r}."
    )


def load_forecaster(config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
    """{"params", "std", "mean"}: the EMA params and residual scale of the deterministic
    forecaster the perturbation model's training mix uses (`train.forecaster_workdir`, a run
    of objective "mse" with the same network and state units; checked against its recorded
    config)."""
    workdir = config.train.get("forecaster_workdir", "")
    if not workdir:
        raise ValueError(
            "train.forecast_fraction > 0 needs train.forecaster_workdir: the workdir of the "
            "deterministic forecaster (variant def_authors_deterministic) whose outputs the "
            "perturbation model trains on."
        )
    recorded = read_recorded_config(workdir)
    expected = {
        "train.objective": "mse",
        "data.spatial_standardise": config.data.get("spatial_standardise", False),
        "diffusion.residual": config.train.forecaster_residual,
        "model.use_hour": config.train.forecaster_use_hour,
    }
    for key in (
        "model.name",
        "model.base_dim",
        "model.channel_mults",
        "model.emb_mult",
        "data.shape",
    ):
        expected[key] = config_value(config, key)
    bad = config_mismatches(recorded, expected)
    if bad:
        raise ValueError(
            f"train.forecaster_workdir {workdir}: its recorded config differs in {'; '.join(bad)}"
        )
    fparts = build(recorded, mesh)
    state, _ = restore.restore_for_eval(recorded, workdir, fparts, which="latest")
    scale = data.residual_scale(state.extra)
    return {"params": state.extra["ema"], "std": scale["std"], "mean": scale["mean"]}


# Keys a run recorded before they existed read as these (the behaviour of that time).
_DEFAULTS = {
    "data.spatial_standardise": False,
    "train.forecast_fraction": 0.0,
    "diffusion.corrector": False,
    "train.objective": "diffusion",
}


def config_value(config, key: str):
    """config[a][b] for key "a.b", JSON-normalised (tuples -> lists); missing: `_DEFAULTS`."""
    node = config
    for part in key.split("."):
        if part not in node:
            return _DEFAULTS.get(key)
        node = node[part]
    return json.loads(json.dumps(node.to_dict() if hasattr(node, "to_dict") else node, default=str))


def config_mismatches(recorded, expected: dict[str, Any]) -> list[str]:
    """["key: recorded R, expected E", ...] for each dotted key whose recorded value differs."""
    bad = []
    for key, want in expected.items():
        got = config_value(recorded, key)
        want = json.loads(json.dumps(want, default=str))
        if got != want:
            bad.append(f"{key}: recorded {got!r}, expected {want!r}")
    return bad


def train_function(config: ml_collections.ConfigDict, loss_fn: Callable, tx: Any) -> Callable:
    """`train_step` with the config's settings bound: (state, batch) -> (state, metrics)."""
    return functools.partial(
        train_step, loss_fn=loss_fn, tx=tx, ema_decay=config.train.ema_decay, seed=config.seed
    )


def resident_train_step(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    parts: parts_lib.Parts[Extras],
    store: data_resident.ResidentStore,
) -> Callable:
    """`parts.train_step` for device-resident data: (state, rows) -> (state, metrics), where
    rows [B, 6] int32 (`data_resident.COLUMNS`, split over the batch axes) say which pairs and
    crops; one jit gathers them from `store` (`data_resident.gather`) and takes the step, so
    the host sends B x 24 bytes a step. The state is donated, the store is not (every step
    reads it). Same metrics, "lr" included, as the streamed step.
    """
    jitted = resident_step_program(
        config, mesh, parts, store.crop, store.sharded, store.states.sharding
    )

    def train_step_on_rows(state, batch):
        return jitted(state, store.states, store.hours, batch["rows"])

    return train_step_on_rows


def resident_step_program(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    parts: parts_lib.Parts[Extras],
    crop: tuple[int, int],
    sharded: bool,
    states_sharding: jax.sharding.Sharding,
) -> Callable:
    """The jit of `resident_train_step`: (state, states, hours, rows) -> (state, metrics). It
    depends on the store only through its layout (crop, sharded, the states' sharding), not its
    arrays, so runs in one process over stores of one layout can share one compiled program."""
    loss_fn = loss_function(config, parts.model, parts.extras.schedule)
    step_fn = parts_lib.with_learning_rate(
        train_function(config, loss_fn, parts.optimizer), config.optim, parts.num_steps
    )

    def step(state, states, hours, rows):
        batch = data_resident.gather(states, hours, rows, crop=crop, mesh=mesh, sharded=sharded)
        return step_fn(state, batch)

    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(parts.shardings, states_sharding, replicated, mesh_lib.data_sharding(mesh)),
        out_shardings=(parts.shardings, replicated),
        donate_argnums=0,
    )


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    residual_std: np.ndarray | None = None,
    residual_mean: np.ndarray | None = None,
    load_forecaster_params: bool = True,
) -> parts_lib.Parts[Extras]:
    """Model, optimizer, schedule, sharded abstract state and jitted steps for `config` on `mesh`.

    `residual_std` / `residual_mean` [C] go into a *new* state (train.py passes the training
    pairs' values); the defaults, ones and zeros, are enough for a restore target or the
    benchmark. The loss is `loss_function`'s for `train.objective`. With
    `train.forecast_fraction` > 0 the deterministic forecaster of `train.forecaster_workdir` is
    restored into the new state's `extra` (`load_forecaster_params` False: a placeholder of its
    structure, for a restore target).
    """
    grid = grid_shape(config)
    model = model_lib.make_model(config)
    run_schedule = parts_lib.step_schedule(config)
    tx = run_schedule.optimizer()
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    if residual_std is None:
        residual_std = np.ones(grid[-1], np.float32)
    if residual_mean is None:
        residual_mean = np.zeros(grid[-1], np.float32)
    forecaster = None
    if float(config.train.get("forecast_fraction", 0.0)) > 0:
        # A restore target needs only the structure (the checkpoint holds the values).
        forecaster = (
            load_forecaster(config, mesh)
            if load_forecaster_params
            else {
                "params": model_lib.init_params(model, jax.random.key(0), grid),
                "std": np.ones(grid[-1], np.float32),
                "mean": np.zeros(grid[-1], np.float32),
            }
        )
    init_fn = functools.partial(
        init_state,
        model=model,
        tx=tx,
        grid_shape=grid,
        residual_std=residual_std,
        residual_mean=residual_mean,
        forecaster=forecaster,
    )
    loss_fn = loss_function(config, model, schedule)
    return parts_lib.assemble(
        config,
        mesh,
        model,
        tx,
        init_fn,
        train_function(config, loss_fn, tx),
        functools.partial(eval_step, loss_fn=loss_fn, seed=config.seed),
        run_schedule,
        eval_extra_args=1,
        extras=Extras(schedule=schedule, grid_shape=grid),
        init_rng=rng.stream(config.seed, "init"),
    )


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, state, batch, extras) at the config's training shape; no files written.

    The step is one micro-batch of `train.global_batch_size`; with `optim.grad_accum_steps` = k
    the optimizer updates every k steps (optax.MultiSteps), so an optimizer step costs k step
    times (`extras["optimizer_updates_per_step"]`).
    """
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    b, grid = config.train.global_batch_size, parts.extras.grid_shape
    gen = np.random.default_rng(config.seed)
    batch = {
        "cond": gen.normal(size=(b, *grid)).astype(np.float32),
        "target": gen.normal(size=(b, *grid)).astype(np.float32),
        "lead": np.ones((b,), np.float32),
        "hour": np.zeros((b,), np.float32),
        "index": np.arange(b, dtype=np.int32),
    }
    k = config.optim.grad_accum_steps
    extras = {
        "grad_accum_steps": k,
        "optimizer_updates_per_step": 1.0 / k,
        "grid_points_per_step": b * grid[0] * grid[1],
    }
    return parts.train_step, state, mesh_lib.global_batch(batch, mesh), extras


def benchmark_sampling(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Sampling speed at the config's full grid, for scripts/benchmark.py (its sampling hook).

    One forecast step draws `config.eval.bench_members` members (sharded over devices when they
    divide evenly) with `config.diffusion.sample_steps` solver steps each, i.e. that many network
    evaluations per member at the full `data.shape` grid. Compiled ahead of time (timed
    separately), then run `config.eval.bench_repeats` times; random params, no files.
    """
    ec = config.eval
    parts = build(config, mesh)
    params = parts_lib.init_state(parts, rng.stream(config.seed, "init")).params
    grid = (*config.data.shape, len(data.VARIABLES))
    scale = {"std": jnp.ones(grid[-1], jnp.float32), "mean": jnp.zeros(grid[-1], jnp.float32)}
    members = ec.bench_members or ec.num_members
    step_fn = ensemble.make_forecast_step(parts.model, parts.extras.schedule, config, mesh, members)
    cond = jnp.zeros((members, *grid), jnp.float32)
    lead = jnp.ones((members,), jnp.float32)
    hour = jnp.zeros((members,), jnp.float32)
    keys = ensemble.member_keys(rng.stream(config.seed, "ensemble", 0), members, 0)
    start = time.perf_counter()
    compiled = step_fn.lower(params, cond, lead, hour, keys, scale).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    logging.info(
        "benchmark_sampling: %d member(s) x %d %s steps on %s, %d run(s) (compiled in %.1f s)",
        members,
        config.diffusion.sample_steps,
        config.diffusion.sampler,
        grid,
        ec.bench_repeats,
        compile_s,
    )
    start = time.perf_counter()
    for _ in range(ec.bench_repeats):
        jax.block_until_ready(compiled(params, cond, lead, hour, keys, scale))
    seconds = (time.perf_counter() - start) / ec.bench_repeats
    return {
        "sampling_grid": list(config.data.shape),
        "sampling_sampler": config.diffusion.sampler,
        "sampling_members": members,
        "sampling_solver_steps": config.diffusion.sample_steps,
        "sampling_repeats": ec.bench_repeats,
        "sampling_compile_s": compile_s,
        "sampling_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "sampling_s_per_member": seconds / members,
        "sampling_members_per_sec": members / seconds,
    }


def inference_params(state: state_lib.TrainState) -> dict[str, Any]:
    """What a forecast needs from a train state, and what an exported bundle holds: the EMA
    parameters and the scale of the diffused change ({"std", "mean"} [C])."""
    return {"ema": state.extra["ema"], "scale": data.residual_scale(state.extra)}


def with_inference_params(state: state_lib.TrainState, params: dict[str, Any]):
    """The inverse of `inference_params`, for evaluating a bundle (`config.eval.model`): the EMA
    parameters and the residual scale go back where evaluation reads them."""
    extra = dict(
        state.extra,
        ema=params["ema"],
        residual_std=params["scale"]["std"],
        residual_mean=params["scale"]["mean"],
    )
    return state.replace(params=params["ema"], extra=extra)


def bundle_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """The store's normalisation statistics the model was trained with, for an exported bundle."""
    path = data.stats_path(data.store_path(config, workdir))
    return {data.STATS_FILE: path} if os.path.exists(path) else {}
