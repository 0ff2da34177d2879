"""Early stopping as a pure function of a JSON-able dict, so it is saved inside the checkpoint.

The dict is part of the loop state that `checkpoint.save(..., loop_state=...)` commits atomically
with the train state and the data iterator; a resumed run therefore stops at exactly the same
evaluation as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any


def init() -> dict[str, Any]:
    """No evaluation seen yet."""
    return {"best": None, "best_at": None, "bad_evals": 0, "stopped_at": None}


def update(
    state: dict[str, Any],
    value: float,
    at: int,
    *,
    patience: int,
    mode: str = "min",
    min_delta: float = 0.0,
) -> dict[str, Any]:
    """The state after an evaluation scoring `value` at `at` (a step or an epoch).

    A value better than the best by more than `min_delta` (lower for mode "min", higher for
    "max"; with `min_delta` 0, strictly better) resets the count; anything else counts as a bad
    evaluation and keeps the best, and the run stops when `patience` bad evaluations in a
    row are reached (`patience` <= 0 never stops). A non-finite value is never an improvement.
    Once stopped, the state no longer changes. Returns a new dict; the input is not modified.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"early stopping mode must be 'min' or 'max', got {mode!r}.")
    new = dict(state)
    if state["stopped_at"] is not None:
        return new
    best = state["best"]
    improved = math.isfinite(value) and (
        best is None or (value < best - min_delta if mode == "min" else value > best + min_delta)
    )
    if improved:
        new.update(best=float(value), best_at=int(at), bad_evals=0)
    else:
        new["bad_evals"] = int(state["bad_evals"]) + 1
        if patience > 0 and new["bad_evals"] >= patience:
            new["stopped_at"] = int(at)
    return new


def should_stop(state: dict[str, Any]) -> bool:
    return state["stopped_at"] is not None
