"""Training of the sales task, in three stages that each resume from `workdir`:

1. WGAN-GP: the explicit loop over `gan_update` (n_critic critic steps + 1 generator step per
   iteration), logging the Wasserstein estimate, gradient penalty and both losses, evaluating
   sample statistics on validation windows, checkpointing state + data iterator together.
2. Generation from the GAN checkpoint: `gan.samples_per_window` sequences per training window ->
   `workdir/generated/train.parquet`.
3. Forecasters from the same seed on real, real + generated (ratio `augment.ratio`) and generated
   only windows (see forecast.py).
"""

from __future__ import annotations

import functools
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import checkpoint, loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter
from jaxlab.data import pipeline
from jaxlab.sales import data, forecast
from jaxlab.sales import gan as gan_lib
from jaxlab.sales import model as model_lib

GENERATED_FILE = os.path.join("generated", "train.parquet")


class Subset:
    """Records `indices` of `source`, re-indexed 0..len-1 (record "index" keeps the original)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def spread_subset(source, max_size: int):
    """At most `max_size` records evenly spread over `source` (all of them when max_size <= 0)."""
    if max_size <= 0 or len(source) <= max_size:
        return source
    return Subset(source, np.linspace(0, len(source) - 1, max_size).round().astype(np.int64))


def gan_parts(config: ml_collections.ConfigDict, mesh):
    """Modules, optimizers, init function and the abstract (sharded) GanState."""
    generator, critic = model_lib.make_gan(config)
    gen_tx, critic_tx = gan_lib.make_optimizers(config)
    init_fn = functools.partial(
        gan_lib.init_gan_state,
        config=config,
        generator=generator,
        critic=critic,
        gen_tx=gen_tx,
        critic_tx=critic_tx,
    )
    target, shardings = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    return generator, critic, gen_tx, critic_tx, init_fn, target, shardings


def gan_manager(config, workdir: str, read_only: bool = False):
    return checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.max_to_keep,
        best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode,
        keep_best=config.train.keep_best,
        async_save=config.train.async_checkpoint and not read_only,
        read_only=read_only,
    )


def sample_statistics(generated: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """How far generated [N, T] is from real [N, T] in mean, spread and weekly shape."""
    mean_gap = abs(generated.mean() - real.mean())
    std_gap = abs(generated.std() - real.std())
    return {
        "eval_sample_mae": float(np.mean(np.abs(generated - real))),
        "eval_mean_gap": float(mean_gap),
        "eval_std_gap": float(std_gap),
        "eval_moment_gap": float(mean_gap + std_gap),
    }


def generate(sampler, gen_params, source, mesh, batch_size: int, rng) -> np.ndarray:
    """One generated sequence per window of `source`: [N, T]."""
    return forecast.batched_map(lambda b: sampler(gen_params, b, rng), source, mesh, batch_size)


def gan_eval(config, sampler, gen_params, source, mesh) -> dict[str, float]:
    rng = jax.random.fold_in(jax.random.key(config.seed), 2)
    generated = generate(sampler, gen_params, source, mesh, config.eval.global_batch_size, rng)
    real = np.stack([source[i]["target"] for i in range(len(source))])
    return sample_statistics(generated, real)


def benchmark_setup(config: ml_collections.ConfigDict, mesh):
    """(jitted WGAN-GP update, initial state, one global batch of windows); writes no files."""
    generator, critic, gen_tx, critic_tx, init_fn, _, _ = gan_parts(config, mesh)
    state, shardings = state_lib.init_sharded(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    step_fn = gan_lib.make_gan_update(config, generator, critic, gen_tx, critic_tx, shardings, mesh)
    return step_fn, state, mesh_lib.global_batch(random_windows(config), mesh)


def random_windows(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A global batch of windows with the real shapes and plausible values (benchmarks, tests)."""
    dc, n = config.data, config.train.global_batch_size
    rng = np.random.default_rng(config.seed)
    days = np.arange(dc.history + dc.horizon)[None] + rng.integers(0, 7, size=(n, 1))
    temporal = data.temporal_features(days.astype("datetime64[D]").ravel()).reshape(n, -1, 8)
    review = rng.random((n, dc.history, data.NUM_FEATURES - data.NUM_TEMPORAL))
    return {
        "history_sales": rng.random((n, dc.history)).astype(np.float32),
        "history_features": np.concatenate([temporal[:, : dc.history], review], -1).astype(
            np.float32
        ),
        "target_features": temporal[:, dc.history :].astype(np.float32),
        "target": rng.random((n, dc.horizon)).astype(np.float32),
        "index": np.arange(n, dtype=np.int32),
    }


def train_gan(config, workdir, sources, mesh, preemption) -> bool:
    """The WGAN-GP loop; returns False when preempted (checkpointed)."""
    tc, gc = config.train, config.gan
    if tc.global_batch_size != gc.batch_size * gc.n_critic:
        raise ValueError(
            f"train.global_batch_size ({tc.global_batch_size}) must be gan.batch_size "
            f"({gc.batch_size}) * gan.n_critic ({gc.n_critic}): one update reads that many windows."
        )
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())
    train_iter = pipeline.train_iterator(
        sources["train"], global_batch_size=tc.global_batch_size, seed=config.seed
    )
    generator, critic, gen_tx, critic_tx, init_fn, target, shardings = gan_parts(config, mesh)
    manager = gan_manager(config, workdir)
    rng = jax.random.key(config.seed)
    state = checkpoint.restore_or_init(
        manager, target, lambda: jax.jit(init_fn, out_shardings=shardings)(rng), train_iter
    )
    logging.info(
        "Generator %d, critic %d parameters",
        state_lib.param_count(state.gen_params),
        state_lib.param_count(state.critic_params),
    )
    update = gan_lib.make_gan_update(config, generator, critic, gen_tx, critic_tx, shardings, mesh)
    sampler = gan_lib.make_sampler(generator, gc.noise_dim, mesh)
    eval_source = spread_subset(sources["val"], config.eval.max_windows)

    start_step = int(state.step)
    progress = loop.Progress(tc.num_steps, tc.global_batch_size, start_step)
    profile = loop.ProfileWindow(tc.profile_start, tc.profile_stop, os.path.join(workdir, "tb"))
    throttle = loop.StepThrottle(tc.max_in_flight)
    preempted = False
    for step in range(start_step + 1, tc.num_steps + 1):
        profile.step(step, state)
        batch = mesh_lib.global_batch(next(train_iter), mesh)
        state, metrics = update(state, batch)
        throttle(metrics)
        preempted = preemption.requested(step)
        last = step == tc.num_steps
        save = loop.every(step, tc.ckpt_every) or last or preempted
        if loop.every(step, tc.log_every) or save:
            metrics = jax.device_get(metrics)
            loop.check_finite(step, metrics)
            writer.write_scalars(step, {**metrics, **progress.report(step, metrics)})
        eval_metrics = None
        if loop.every(step, tc.eval_every) or last:
            eval_metrics = gan_eval(config, sampler, state.gen_params, eval_source, mesh)
            writer.write_scalars(step, eval_metrics)
        if save:
            checkpoint.save(manager, step, state, train_iter, metrics=eval_metrics)
        if preempted:
            logging.warning("Preempted: checkpointed step %d, exiting.", step)
            break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return not preempted


def restore_gan(config, workdir: str, mesh, which: str):
    """(generator, sampler, GanState, step) from the GAN checkpoint `which` of workdir."""
    generator, _, _, _, _, target, _ = gan_parts(config, mesh)
    manager = gan_manager(config, workdir, read_only=True)
    step = checkpoint.select_step(manager, which, config.eval.best_metric, config.eval.best_mode)
    state = checkpoint.restore(manager, target, step=step)
    manager.close()
    return generator, gan_lib.make_sampler(generator, config.gan.noise_dim, mesh), state, step


def write_generated(config, workdir: str, train_source, mesh) -> str:
    """`gan.samples_per_window` sequences per training window from the GAN checkpoint."""
    path = os.path.join(workdir, GENERATED_FILE)
    if os.path.exists(path):
        return path
    _, sampler, state, step = restore_gan(config, workdir, mesh, config.gan.generate_checkpoint)
    root = jax.random.fold_in(jax.random.key(config.seed), 3)
    samples = np.stack(
        [
            generate(
                sampler,
                state.gen_params,
                train_source,
                mesh,
                config.eval.global_batch_size,
                jax.random.fold_in(root, s),
            )
            for s in range(config.gan.samples_per_window)
        ],
        axis=1,
    )
    if jax.process_index() == 0:
        data.write_generated(path, train_source, samples)
    logging.info("Generated %s sequences from GAN step %d -> %s", samples.shape, step, path)
    return path


def forecaster_sources(config, sources, generated_path: str) -> dict:
    """The training sets of the three forecasters."""
    window, target = data.read_generated(generated_path, config.data.horizon)
    common = {"seed": config.seed, "ratio": config.augment.ratio}
    return {
        "real": sources["train"],
        "augmented": data.AugmentedSource(sources["train"], window, target, **common),
        "synthetic": data.AugmentedSource(
            sources["train"], window, target, include_real=False, **common
        ),
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """GAN, generation and forecasters (each resumed from workdir); returns summary metrics."""
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)
    sources = data.load_windows(config, data.prepare(config, workdir))
    summary: dict[str, float] = {}
    with loop.Preemption() as preemption:
        logging.info("=== sales: WGAN-GP")
        if not train_gan(config, workdir, sources, mesh, preemption):
            return summary
        generated_path = write_generated(config, workdir, sources["train"], mesh)
        train_sets = forecaster_sources(config, sources, generated_path)
        parts = forecast.make_parts(config, mesh)
        for name in forecast.NAMES:
            logging.info("=== sales: forecaster on %s windows (%d)", name, len(train_sets[name]))
            subdir = forecast.forecast_dir(workdir, name)
            if not forecast.train_forecaster(
                config, subdir, train_sets[name], sources["val"], mesh, preemption, parts
            ):
                return summary
            params, _ = forecast.restore_params(config, subdir, parts.target)
            val = forecast.val_metrics(
                parts.predict_fn,
                params,
                sources["val"],
                mesh,
                config.eval.global_batch_size,
            )
            summary[f"{name}_val_mae"] = val["val_mae"]
    logging.info("Validation MAE of the forecasters: %s", summary)
    return summary
