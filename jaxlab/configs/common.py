"""Defaults every task config starts from (mesh, cadences, checkpointing, seed, optimizer), and
the few blocks the task configs set alike: checked overrides and the step / epoch cadences.

A variant is its base config plus a few overrides (as in the Flax examples' configs); the
helpers below write each repeated block once and change nothing else.
"""

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


def input_workers(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds `data.workers`: the train iterator's worker processes (jaxlab/data/pipeline.py).

    0 reads in the training process (grain threads only); N > 0 starts N processes; "auto" takes
    every CPU but one (`pipeline.resolve_workers`). The batches are the same for any value, so a
    run may resume with another. Any type is accepted so that `--config.data.workers=auto` and
    `=4` both parse. Returns `data`.
    """
    data.workers = ml_collections.FieldReference(0, field_type=object)
    return data


def override(block: ml_collections.ConfigDict, **values: object) -> ml_collections.ConfigDict:
    """Sets fields that `block` already has; returns `block`.

    A key the block does not have is an error naming it: a misspelt override would otherwise
    add a new field that no code reads. Values go through the ConfigDict's own assignment, so
    its type checks and int -> float conversion apply as for `block.key = value`.
    """
    unknown = [key for key in values if key not in block]
    if unknown:
        raise KeyError(
            f"config override: no field {unknown} here; the fields are {list(block.keys())}"
        )
    for key, value in values.items():
        block[key] = value
    return block


def step_cadence(
    train: ml_collections.ConfigDict, *, num_steps: int, log_every: int, eval_every: int
) -> None:
    """Training counted in steps: log every `log_every`, evaluate every `eval_every` steps and
    checkpoint at each evaluation (so the best checkpoint is the best evaluation's)."""
    override(
        train,
        num_steps=num_steps,
        log_every=log_every,
        eval_every=eval_every,
        ckpt_every=eval_every,
    )


def epoch_cadence(train: ml_collections.ConfigDict, *, num_epochs: int, warmup_epochs: int) -> None:
    """Training counted in epochs: num_steps = num_epochs * (train size // global_batch_size),
    the learning-rate warmup in epochs, and validation, early stopping and a checkpoint once an
    epoch (the step cadences eval_every / ckpt_every are off)."""
    train.num_steps = 0  # 0: derived from num_epochs; a positive value overrides it
    train.num_epochs = num_epochs
    train.warmup_epochs = warmup_epochs
    override(train, eval_every_epochs=1, eval_every=0, ckpt_every=0)


def adamw(optim_config: ml_collections.ConfigDict, *, lr: float, **values: object) -> None:
    """The optimizer block as every task but sales sets it: AdamW (decoupled weight decay on
    kernels only, core/optim.py) at peak learning rate `lr`, with the other fields in `values`."""
    override(optim_config, name="adamw", lr=lr, **values)


def bfloat16_compute(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the model computing in bfloat16; parameters and optimizer state stay
    float32 (model.dtype is the compute dtype only). Returns `config`."""
    config.model.dtype = "bfloat16"
    return config
