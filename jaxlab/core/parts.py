"""What a task's `steps.build(config, mesh)` returns: one generic `Parts`, and the build tail.

Every task builds the same things: a model, an optimizer, `init_fn(rng) -> TrainState`, the
state's abstract shape with the mesh's shardings (the restore target), the number of steps and
the two steps jitted once. `assemble` is the common end of every `build`: it derives the abstract
state and shardings from `init_fn`, adds the learning rate to the train step's metrics and jits
both steps. What only one task has (neutrino's pack shapes, weather's noise schedule, glitch's
class count) goes in `extras`, a frozen dataclass the task declares, so it stays typed.

`epoch_schedule` sizes a run counted in epochs (glitch, vegetation); `init_state` creates a
fresh, sharded state from the parts.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax
import ml_collections
import optax

from jaxlab.core import optim, steps_jit
from jaxlab.core import state as state_lib

ExtrasT = TypeVar("ExtrasT")


@dataclasses.dataclass(frozen=True)
class Parts(Generic[ExtrasT]):
    """The pieces of a task that train.py, evaluate.py, predict.py and the benchmark share."""

    model: Any  # the flax module (for sales' GAN: the generator)
    optimizer: optax.GradientTransformation
    init_fn: Callable[[jax.Array], state_lib.TrainState]
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct with shardings: the restore target
    shardings: Any  # TrainState of NamedSharding
    num_steps: int
    train_step: Callable  # jitted (state, batch) -> (state, metrics), state donated
    eval_step: Callable  # jitted (params, batch, valid, *extra) -> (sums, outputs)
    steps_per_epoch: int | None = None  # set by tasks that count epochs (`epoch_schedule`)
    extras: ExtrasT | None = None  # the task's own members, a frozen dataclass


def with_learning_rate(
    step_fn: Callable, optim_config: ml_collections.ConfigDict, num_steps: int
) -> Callable:
    """`step_fn` whose metrics also hold "lr": the learning rate this step's update applied.

    As in the Flax examples the step reports its own learning rate, so every task logs it the
    same way; it is read from the state *before* the update (the plateau scale included).
    """

    def step(state, batch):
        lr = optim.current_learning_rate(optim_config, num_steps, state.opt_state, state.step)
        state_out, metrics = step_fn(state, batch)
        return state_out, {**metrics, "lr": lr}

    return step


def assemble(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    model: Any,
    optimizer: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], state_lib.TrainState],
    num_steps: int,
    train_step: Callable,
    eval_step: Callable,
    optim_config: ml_collections.ConfigDict | None,
    eval_extra_args: int = 0,
    steps_per_epoch: int | None = None,
    extras: ExtrasT | None = None,
    init_rng: jax.Array | None = None,
) -> Parts[ExtrasT]:
    """The end of every `build`: abstract state, shardings, jitted steps, in one `Parts`.

    `train_step(state, batch)` and `eval_step(params, batch, valid, *extra)` are the task's pure
    steps with their static arguments bound. `optim_config` is the optimizer's config (None when
    the state has no single learning rate, e.g. a GAN's two optimizers): the train step's metrics
    then carry "lr". `init_rng` only matters for shapes (default `jax.random.key(0)`).
    """
    rng = jax.random.key(0) if init_rng is None else init_rng
    abstract, shardings = state_lib.abstract_state(init_fn, rng, mesh, config.fsdp_min_size)
    if optim_config is not None:
        train_step = with_learning_rate(train_step, optim_config, num_steps)
    return Parts(
        model=model,
        optimizer=optimizer,
        init_fn=init_fn,
        abstract_state=abstract,
        shardings=shardings,
        num_steps=num_steps,
        train_step=steps_jit.jit_train_step(train_step, shardings, mesh),
        eval_step=steps_jit.jit_eval_step(eval_step, mesh, num_extra_args=eval_extra_args),
        steps_per_epoch=steps_per_epoch,
        extras=extras,
    )


def init_state(
    parts: Parts, rng: jax.Array, init_fn: Callable[[jax.Array], Any] | None = None
) -> state_lib.TrainState:
    """A fresh state born sharded: `jax.jit(init_fn, out_shardings=parts.shardings)(rng)`.

    `init_fn` defaults to `parts.init_fn`; another one (pretrained weights) must return a state
    of the same structure.
    """
    init = parts.init_fn if init_fn is None else init_fn
    return jax.jit(init, out_shardings=parts.shardings)(rng)


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
    steps_per_epoch: int  # optimizer steps per pass over the training records (remainder dropped)
    num_steps: int  # `train.num_steps` when > 0, else `train.num_epochs` epochs
    optim_config: ml_collections.ConfigDict  # config.optim with the epoch sizes in steps


def epoch_schedule(config: ml_collections.ConfigDict, num_train_records: int) -> EpochSchedule:
    """A run counted in epochs of `num_train_records` records, in steps.

    Warmup is `train.warmup_epochs` epochs (at most all steps but one); a "warmup_plateau"
    schedule with `optim.plateau_accumulation_size` 0 averages the loss over one epoch.
    """
    tc = config.train
    steps_per_epoch = num_train_records // tc.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"{num_train_records} training records make no batch of {tc.global_batch_size}; "
            "lower config.train.global_batch_size."
        )
    num_steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * steps_per_epoch
    optim_config = copy.deepcopy(config.optim)
    optim_config.warmup_steps = max(min(tc.warmup_epochs * steps_per_epoch, num_steps - 1), 0)
    if not optim_config.plateau_accumulation_size:
        optim_config.plateau_accumulation_size = steps_per_epoch
    return EpochSchedule(steps_per_epoch, num_steps, optim_config)
