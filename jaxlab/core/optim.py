"""Optax optimizer and learning-rate schedule from an `ml_collections` config.

Every task builds its optimizer with `make_optimizer(config.optim, config.train.num_steps)`
and calls, inside its jitted train step,

    updates, opt_state = tx.update(grads, opt_state, params, value=loss)

whatever the config says. That single call shape is the contract of this module:

- `value=loss` is always passed because `optax.contrib.reduce_on_plateau` (schedule
  "warmup_plateau") needs the loss to decide when to cut the learning rate; every other
  combination ignores it (`optax.chain` wraps each part with `optax.with_extra_args_support`).
- `params` is always passed because decoupled weight decay reads them, and it is masked by
  `weight_decay_mask`: decaying biases and LayerNorm scales towards zero only hurts.

The chain, outermost first (k = `grad_accum_steps`):

    reduce_on_plateau(accumulation_size=plateau_accumulation_size * k)   # "warmup_plateau" only
    MultiSteps(k)                                                        # k > 1 only
      clip_by_global_norm(clip_norm)                                     # clip_norm > 0 only
      scale_by_adam | trace(momentum)                                    # the update direction
      add_decayed_weights(weight_decay, mask=weight_decay_mask)          # weight_decay > 0 only
      scale_by_learning_rate(schedule)

Steps. `num_steps`, `warmup_steps` and the `step` of `current_learning_rate` all count *train
steps*, i.e. calls to `tx.update` (`TrainState.step`). With gradient accumulation the inner
optimizer sees one update per k train steps; its schedule is evaluated at `k * update_count`, so
the learning-rate curve over train steps does not depend on k. Clipping sits inside `MultiSteps`
so that it clips the accumulated (mean) gradient, i.e. k micro-steps equal one big step. The
plateau transform sits outside, so it averages the loss of every micro-step, and
`plateau_accumulation_size` and `plateau_patience` keep their meaning in optimizer updates.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

_NAMES = ("adamw", "adam", "sgd")
_SCHEDULES = ("constant", "warmup_cosine", "warmup_plateau")


def default_optim_config() -> ml_collections.ConfigDict:
    """The `config.optim` block with every field at its default; tasks override a few."""
    c = ml_collections.ConfigDict()
    # Optimizer: "adamw" | "adam" | "sgd".
    c.name = "adamw"
    # Peak learning rate (after warmup; before cosine decay and plateau cuts).
    c.lr = 1e-3
    # Adam / AdamW moment decay rates and denominator epsilon.
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    # SGD momentum (0 = plain SGD) and whether it is Nesterov momentum.
    c.momentum = 0.9
    c.nesterov = False
    # Decoupled weight decay: params -= lr * weight_decay * params, kernels and embeddings only
    # (see `weight_decay_mask`). Applies to all three optimizers; "adam" with weight_decay > 0 is
    # therefore the same as "adamw". 0 disables.
    c.weight_decay = 1e-4
    # Learning-rate schedule: "constant" | "warmup_cosine" | "warmup_plateau".
    #   constant:       lr at every step (warmup_steps is not used).
    #   warmup_cosine:  linear 0 -> lr over warmup_steps, then cosine to lr * end_lr_factor at
    #                   num_steps.
    #   warmup_plateau: linear 0 -> lr over warmup_steps, then lr, cut by plateau_factor whenever
    #                   the train loss has not improved (optax.contrib.reduce_on_plateau).
    c.schedule = "warmup_cosine"
    # Linear warmup length, in train steps.
    c.warmup_steps = 0
    # warmup_cosine ends at lr * end_lr_factor.
    c.end_lr_factor = 0.0
    # warmup_plateau: multiply the learning rate by plateau_factor after plateau_patience
    # evaluations without a relative improvement of plateau_rtol, then wait plateau_cooldown
    # evaluations. One evaluation averages the loss over plateau_accumulation_size optimizer
    # updates.
    c.plateau_factor = 0.5
    c.plateau_patience = 10
    c.plateau_cooldown = 0
    c.plateau_rtol = 1e-4
    c.plateau_accumulation_size = 100
    # Clip the global gradient norm to this value before the optimizer; 0 or None disables.
    c.clip_norm = 1.0
    # Accumulate the mean gradient over this many train steps per optimizer update
    # (optax.MultiSteps); 1 disables.
    c.grad_accum_steps = 1
    return c


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that weight decay applies to: kernels and embeddings (ndim >= 2).

    Biases and normalisation scales/offsets (ndim <= 1) are excluded: they set offsets and
    gains, not model capacity, and decaying them towards zero only hurts.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"optim.{field} = {value!r} is not one of {choices}.")


def _grad_accum_steps(optim: ml_collections.ConfigDict) -> int:
    k = optim.grad_accum_steps
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"optim.grad_accum_steps = {k!r}; expected an integer >= 1.")
    return k


def make_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning rate as a function of the train step (plateau cuts not included).

    Args:
      optim: the `config.optim` block (see `default_optim_config`).
      num_steps: total train steps; "warmup_cosine" reaches `lr * end_lr_factor` there.

    Returns:
      An optax schedule `step -> lr` (scalar float32), jittable.
    """
    _check_choice("schedule", optim.schedule, _SCHEDULES)
    if optim.schedule == "constant":
        return optax.constant_schedule(optim.lr)
    if optim.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps = {optim.warmup_steps}; expected >= 0.")
    if optim.schedule == "warmup_cosine":
        if num_steps <= optim.warmup_steps:
            raise ValueError(
                f"optim.schedule = 'warmup_cosine' needs num_steps ({num_steps}) > "
                f"optim.warmup_steps ({optim.warmup_steps})."
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=optim.lr,
            warmup_steps=optim.warmup_steps,
            decay_steps=num_steps,  # Includes the warmup.
            end_value=optim.lr * optim.end_lr_factor,
        )
    # "warmup_plateau": the plateau cuts live in the optimizer state, see `make_optimizer`.
    if optim.warmup_steps == 0:
        return optax.constant_schedule(optim.lr)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
            optax.constant_schedule(optim.lr),
        ],
        boundaries=[optim.warmup_steps],
    )


def make_optimizer(
    optim: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformationExtraArgs:
    """The optimizer described in the module docstring.

    Args:
      optim: the `config.optim` block (see `default_optim_config`).
      num_steps: total train steps (calls to `tx.update`), for the schedule.

    Returns:
      `tx` whose `tx.update(grads, opt_state, params, value=loss)` works for every config.
    """
    _check_choice("name", optim.name, _NAMES)
    k = _grad_accum_steps(optim)
    schedule = make_schedule(optim, num_steps)  # Checks optim.schedule.

    inner = []
    if optim.clip_norm:
        inner.append(optax.clip_by_global_norm(optim.clip_norm))
    if optim.name in ("adamw", "adam"):
        inner.append(optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps))
    elif optim.momentum:
        inner.append(optax.trace(decay=optim.momentum, nesterov=optim.nesterov))
    if optim.weight_decay:
        inner.append(optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask))
    # The inner optimizer counts updates, one per k train steps.
    inner.append(optax.scale_by_learning_rate(lambda count: schedule(count * k)))
    tx = optax.chain(*inner)

    if k > 1:
        multi = optax.MultiSteps(tx, every_k_schedule=k)
        # MultiSteps.update forwards extra args, but it is not typed as ExtraArgs, so `optax.chain`
        # would drop them; declare it.
        tx = optax.GradientTransformationExtraArgs(multi.init, multi.update)

    if optim.schedule == "warmup_plateau":
        plateau = optax.contrib.reduce_on_plateau(
            factor=optim.plateau_factor,
            patience=optim.plateau_patience,
            rtol=optim.plateau_rtol,
            cooldown=optim.plateau_cooldown,
            accumulation_size=optim.plateau_accumulation_size * k,
        )
        return optax.chain(tx, plateau)
    return optax.chain(tx)


def current_learning_rate(
    optim: ml_collections.ConfigDict, num_steps: int, opt_state: Any, step: jax.typing.ArrayLike
) -> jax.Array:
    """The learning rate the update at train step `step` applies, for logging; jittable.

    `schedule(step)` (taken at the start of the current accumulation window when
    `grad_accum_steps > 1`) times the reduce-on-plateau scale held in `opt_state` when the
    schedule is "warmup_plateau".

    Args:
      optim: the `config.optim` block the optimizer was built from.
      num_steps: the same total train steps given to `make_optimizer`.
      opt_state: the optimizer state (`tx.init(params)` or later).
      step: train step (scalar int), e.g. `TrainState.step`.

    Returns:
      Scalar float32.
    """
    k = _grad_accum_steps(optim)
    lr = make_schedule(optim, num_steps)((step // k) * k)
    if optim.schedule == "warmup_plateau":
        # Look it up by the state's type name: a "scale" key alone also matches LayerNorm scales
        # inside Adam's moment trees.
        plateau_state = optax.tree_utils.tree_get(opt_state, "ReduceLROnPlateauState")
        if plateau_state is None:
            raise ValueError(
                "opt_state has no ReduceLROnPlateauState although optim.schedule is "
                "'warmup_plateau'; was it built from another config?"
            )
        lr = lr * plateau_state.scale
    return jnp.asarray(lr, jnp.float32)
