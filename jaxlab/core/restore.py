"""A train state from a workdir: restore-or-initialise for training, restore for evaluation.

Resuming restores the newest intact checkpoint (`checkpoint.restore_latest_intact`); evaluation
restores a chosen step read-only, or an exported bundle's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from jaxlab.core import bundle, checkpoint
from jaxlab.core import parts as parts_lib
from jaxlab.core import state as state_lib


def init_or_restore(
    manager: ocp.CheckpointManager,
    parts: Any,
    rng: jax.Array,
    data_iterator: Any = None,
    new_state: Callable[[jax.Array], Any] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """(state, loop_state): the newest intact checkpoint's, or a fresh state and None.

    Damaged newer steps are logged and moved aside (`checkpoint.restore_latest_intact`). A fresh
    state is born sharded: `parts.init_state(parts, rng)`, or `new_state(rng)` when given, which
    changes only how a *new* run starts (e.g. with pretrained weights). `new_state` is called as
    is, not traced, so large weights it loads are placed on devices rather than compiled in as
    constants; it must return a state with `parts.shardings`. The data iterator's position is
    restored in place.
    """
    step, state = checkpoint.restore_latest_intact(manager, parts.abstract_state, data_iterator)
    if step is None:
        state = parts_lib.init_state(parts, rng) if new_state is None else new_state(rng)
        logging.info("New run: %d parameters", state_lib.param_count(state.params))
        return state, None
    return state, checkpoint.restore_loop_state(manager, step)


def restore_for_eval(
    config: ml_collections.ConfigDict, workdir: str, parts: Any, which: str | None = None
) -> tuple[Any, int]:
    """(state, step) of the checkpoint `which` (default `config.eval.checkpoint`) in workdir.

    Read-only and lock-free: safe while a training run writes the same workdir. The step's files
    are verified; a damaged one is an error naming the step, item and file (nothing is moved).

    With `which` left None and `config.eval.model` naming an exported bundle, the state holds the
    bundle's inference parameters instead (see `bundle.state_from_bundle`): `jaxlab evaluate
    --model=BUNDLE` evaluates a bundle with the task's own evaluate.
    """
    if which is None and config.eval.model:
        return bundle.state_from_bundle(config, config.eval.model, parts)
    return checkpoint.restore_selected(config, workdir, parts.abstract_state, which)
