"""Defaults every task config starts from: mesh, cadences, checkpointing, seed, optimizer."""

from __future__ import annotations

import ml_collections

from jaxlab.core import optim


def get_common() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = ""  # the task module, e.g. "jaxlab.glitch"; the binaries import it
    config.seed = 0

    # Mesh axes as (name, size); one size may be -1 (all remaining devices). Add ("fsdp", n) to
    # shard parameters of at least fsdp_min_size values over n devices.
    config.mesh = [("data", -1)]
    config.fsdp_min_size = 2**18

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 1000
    config.train.global_batch_size = 32
    config.train.log_every = 50
    config.train.eval_every = 500  # steps; or, for tasks that count epochs:
    config.train.eval_every_epochs = 0  # epochs between evaluations (0: use eval_every)
    config.train.ckpt_every = 500
    config.train.max_to_keep = 3  # latest checkpoints kept, besides the best
    config.train.keep_best = 1  # best checkpoints kept by config.eval.best_metric
    config.train.async_checkpoint = True
    # Resume even when the config differs from workdir/config.json in keys that change the trained
    # model (batch size, data, model, optimizer, seed); the differences are logged.
    config.train.allow_config_change = False
    config.train.max_in_flight = 2  # dispatched-but-unfinished steps allowed (loop.StepThrottle)
    config.train.profile_start = 0  # jax.profiler trace of steps [start, stop); off when equal
    config.train.profile_stop = 0

    config.eval = ml_collections.ConfigDict()
    config.eval.split = "eval"
    config.eval.global_batch_size = 64
    config.eval.checkpoint = "best"  # "best", "latest" or a step number
    config.eval.model = ""  # an exported bundle to evaluate instead of the workdir's checkpoints
    config.eval.best_metric = ""  # set by each task, e.g. "eval_loss"
    config.eval.best_mode = "min"
    # Early stopping on eval.best_metric (core/trainer.py): stop after this many evaluations in a
    # row that do not beat the best by more than min_delta (0: never stop).
    config.eval.early_stopping_patience = 0
    config.eval.early_stopping_min_delta = 0.0

    config.optim = optim.default_optim_config()
    return config
