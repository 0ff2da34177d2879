"""Named random streams, pure early stopping, and the loop state saved inside the orbax step."""

import zlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import checkpoint, early_stopping, rng


def test_stream_is_fold_in_of_the_names_crc32_then_the_indices():
    key = rng.stream(3, "dropout", 7)
    expected = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(3), zlib.crc32(b"dropout") & 0x7FFFFFFF), 7
    )
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(expected))


def test_streams_differ_by_name_and_index_and_repeat_exactly():
    draw = lambda *a: np.asarray(jax.random.normal(rng.stream(*a), (8,)))  # noqa: E731
    np.testing.assert_array_equal(draw(0, "noise", 5), draw(0, "noise", 5))
    assert not np.allclose(draw(0, "noise", 5), draw(0, "dropout", 5))
    assert not np.allclose(draw(0, "noise", 5), draw(0, "noise", 6))
    assert not np.allclose(draw(0, "noise", 5), draw(1, "noise", 5))
    with pytest.raises(ValueError, match="non-empty name"):
        rng.stream(0, "")


def test_stream_index_may_be_traced():
    keys = jax.jit(lambda s: jax.random.key_data(rng.stream(0, "dropout", s)))(jnp.int32(4))
    np.testing.assert_array_equal(keys, jax.random.key_data(rng.stream(0, "dropout", 4)))


def _run(values, patience, mode):
    state = early_stopping.init()
    for at, value in enumerate(values, start=1):
        state = early_stopping.update(state, value, at, patience=patience, mode=mode)
    return state


def test_early_stopping_against_a_hand_traced_sequence():
    # min mode, patience 2: best 0.5 at 2; 0.5 (tie) at 3 and 0.7 at 4 are two bad evals -> stop
    # at 4; the later 0.1 changes nothing.
    state = _run([1.0, 0.5, 0.5, 0.7, 0.1], patience=2, mode="min")
    assert state == {"best": 0.5, "best_at": 2, "bad_evals": 2, "stopped_at": 4}
    assert early_stopping.should_stop(state)
    # max mode: a NaN is never an improvement; patience 0 never stops.
    state = _run([0.2, float("nan"), 0.3, 0.1], patience=0, mode="max")
    assert state["best"] == 0.3 and state["best_at"] == 3 and not early_stopping.should_stop(state)


def test_early_stopping_update_is_pure():
    state = early_stopping.init()
    new = early_stopping.update(state, 1.0, 1, patience=1)
    assert state == early_stopping.init() and new["best"] == 1.0
    with pytest.raises(ValueError, match="'min' or 'max'"):
        early_stopping.update(state, 1.0, 1, patience=1, mode="lowest")


def test_loop_state_is_saved_in_the_step_and_absent_for_older_steps(tmp_path):
    source = grain.MapDataset.range(10)
    iterator = iter(source.to_iter_dataset())
    state = {"w": jnp.arange(3.0)}
    manager = checkpoint.make_manager(str(tmp_path), async_save=True)
    checkpoint.save(manager, 1, state, iterator)  # as an older run wrote it: no loop item
    loop_state = {"best": 0.5, "epoch_confusion": [[1, 0], [0, 2]], "stopped_at": None}
    checkpoint.save(manager, 2, state, iterator, loop_state=loop_state)
    loop_state["best"] = 9.0  # the save took a copy
    checkpoint.wait(manager)
    reader = checkpoint.make_manager(str(tmp_path), read_only=True)
    assert checkpoint.restore_loop_state(reader, 1) is None
    assert checkpoint.restore_loop_state(reader, 2) == {
        "best": 0.5,
        "epoch_confusion": [[1, 0], [0, 2]],
        "stopped_at": None,
    }
