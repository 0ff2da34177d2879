"""What a task's `steps.build(config, mesh)` returns: one generic `Parts`, and the build tail.

Every task builds the same things: a model, an optimizer, `init_fn(rng) -> TrainState`, the
state's abstract shape with the mesh's shardings (the restore target), the number of steps and
the two steps jitted once. `assemble` is the common end of every `build`: it derives the abstract
state and shardings from `init_fn`, adds the learning rate to the train step's metrics and jits
both steps. What only one task has (neutrino's pack shapes, weather's noise schedule, glitch's
class count) goes in `extras`, a frozen dataclass the task declares, so it stays typed.

A `Schedule` says how long a run is: `step_schedule` (train.num_steps) or `epoch_schedule` (a run
counted in epochs: glitch, vegetation). `init_state` creates a fresh, sharded state.
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


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run is and what its learning rate follows: the optimizer's sizes."""

    num_steps: int  # optimizer steps of the whole run
    optim_config: ml_collections.ConfigDict | None  # None: no single learning rate (a GAN)
    steps_per_epoch: int | None = None  # set for a run counted in epochs (`epoch_schedule`)

    def optimizer(self) -> optax.GradientTransformation:
        """`optim.make_optimizer` for this run's length."""
        return optim.make_optimizer(self.optim_config, self.num_steps)


def step_schedule(
    config: ml_collections.ConfigDict,
    num_steps: int | None = None,
    optim_config: ml_collections.ConfigDict | None = None,
) -> Schedule:
    """A run counted in steps: `train.num_steps` steps of `config.optim` unless given."""
    return Schedule(
        num_steps=config.train.num_steps if num_steps is None else num_steps,
        optim_config=config.optim if optim_config is None else optim_config,
    )


def assemble(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    model: Any,
    optimizer: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], state_lib.TrainState],
    train_step: Callable,
    eval_step: Callable,
    schedule: Schedule,
    *,
    eval_extra_args: int = 0,
    extras: ExtrasT | None = None,
    init_rng: jax.Array | None = None,
) -> Parts[ExtrasT]:
    """The end of every `build`: abstract state, shardings, jitted steps, in one `Parts`.

    `train_step(state, batch)` and `eval_step(params, batch, valid, *extra)` are the task's pure
    steps with their static arguments bound (`eval_extra_args` extra arguments, replicated).
    When `schedule.optim_config` is set the train step's metrics carry "lr". `init_rng` only
    matters for shapes (default `jax.random.key(0)`).
    """
    rng = jax.random.key(0) if init_rng is None else init_rng
    abstract, shardings = state_lib.abstract_state(init_fn, rng, mesh, config.fsdp_min_size)
    if schedule.optim_config is not None:
        train_step = with_learning_rate(train_step, schedule.optim_config, schedule.num_steps)
    return Parts(
        model=model,
        optimizer=optimizer,
        init_fn=init_fn,
        abstract_state=abstract,
        shardings=shardings,
        num_steps=schedule.num_steps,
        train_step=steps_jit.jit_train_step(train_step, shardings, mesh),
        eval_step=steps_jit.jit_eval_step(eval_step, mesh, num_extra_args=eval_extra_args),
        steps_per_epoch=schedule.steps_per_epoch,
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


def epoch_schedule(config: ml_collections.ConfigDict, num_train_records: int) -> Schedule:
    """A run counted in epochs of `num_train_records` records (remainder dropped), in steps:
    `train.num_steps` when > 0, else `train.num_epochs` epochs.

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
    return Schedule(num_steps, optim_config, steps_per_epoch)
