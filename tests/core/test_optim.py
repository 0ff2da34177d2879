"""Tests for jaxlab.core.optim: schedules, weight decay, clipping, accumulation, plateau."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import optim


def _config(**overrides):
    config = optim.default_optim_config()
    config.update(overrides)
    return config


def _params():
    """Dense kernel + bias and a LayerNorm-like scale, as Flax names them."""
    return {
        "dense": {"kernel": jnp.arange(6.0).reshape(3, 2) - 2.5, "bias": jnp.array([0.5, -1.0])},
        "norm": {"scale": jnp.array([1.0, 2.0])},
    }


def _grads(seed, scale=1.0):
    leaves, treedef = jax.tree.flatten(_params())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noise)


def _global_norm(tree):
    return math.sqrt(sum(float(jnp.sum(x**2)) for x in jax.tree.leaves(tree)))


def test_default_config_has_every_field():
    expected = {
        "name", "lr", "b1", "b2", "eps", "momentum", "nesterov", "weight_decay", "schedule",
        "warmup_steps", "end_lr_factor", "plateau_factor", "plateau_patience", "plateau_cooldown",
        "plateau_rtol", "plateau_accumulation_size", "clip_norm", "grad_accum_steps",
    }  # fmt: skip
    assert set(optim.default_optim_config().keys()) == expected


def test_warmup_cosine_matches_closed_form():
    lr, warmup, total, end_factor = 0.1, 10, 110, 0.05
    config = _config(schedule="warmup_cosine", lr=lr, warmup_steps=warmup, end_lr_factor=end_factor)
    schedule = optim.make_schedule(config, total)
    end = lr * end_factor

    def reference(step):
        if step < warmup:
            return lr * step / warmup
        progress = (step - warmup) / (total - warmup)
        return end + 0.5 * (lr - end) * (1.0 + math.cos(math.pi * progress))

    for step in (0, 5, warmup, (warmup + total) // 2, total - 1, total):
        np.testing.assert_allclose(schedule(step), reference(step), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(schedule(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(schedule(warmup), lr, rtol=1e-6)
    np.testing.assert_allclose(schedule((warmup + total) // 2), (lr + end) / 2, rtol=1e-5)
    np.testing.assert_allclose(schedule(total), end, rtol=1e-5)


def test_warmup_plateau_and_constant_schedules():
    plateau = optim.make_schedule(_config(schedule="warmup_plateau", lr=0.2, warmup_steps=4), 100)
    np.testing.assert_allclose([plateau(s) for s in (0, 2, 4, 99)], [0.0, 0.1, 0.2, 0.2], rtol=1e-6)
    constant = optim.make_schedule(_config(schedule="constant", lr=0.3, warmup_steps=4), 100)
    np.testing.assert_allclose([constant(s) for s in (0, 50)], [0.3, 0.3], rtol=1e-6)


def test_weight_decay_mask():
    mask = optim.weight_decay_mask(_params())
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_weight_decay_shrinks_kernels_only(name):
    lr, wd = 0.1, 0.01
    config = _config(name=name, lr=lr, weight_decay=wd, schedule="constant", clip_norm=0.0)
    tx = optim.make_optimizer(config, 10)
    params = _params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params, value=1.0)
    chex.assert_trees_all_close(updates["dense"]["kernel"], -lr * wd * params["dense"]["kernel"])
    chex.assert_trees_all_equal(updates["dense"]["bias"], jnp.zeros(2))
    chex.assert_trees_all_equal(updates["norm"]["scale"], jnp.zeros(2))


def test_clipping_rescales_a_huge_gradient_to_clip_norm():
    lr, clip = 0.1, 1.0
    base = dict(name="sgd", momentum=0.0, lr=lr, weight_decay=0.0, schedule="constant")
    clipped_tx = optim.make_optimizer(_config(clip_norm=clip, **base), 10)
    plain_tx = optim.make_optimizer(_config(clip_norm=0.0, **base), 10)
    params = _params()
    grads = _grads(0, scale=1e3)
    norm = _global_norm(grads)
    assert norm > 100 * clip
    rescaled = jax.tree.map(lambda g: g * clip / norm, grads)

    updates, _ = clipped_tx.update(grads, clipped_tx.init(params), params, value=0.0)
    expected, _ = plain_tx.update(rescaled, plain_tx.init(params), params, value=0.0)
    chex.assert_trees_all_close(updates, expected, rtol=1e-5)
    np.testing.assert_allclose(_global_norm(updates), lr * clip, rtol=1e-5)

    # A gradient already below clip_norm passes through unchanged.
    small = jax.tree.map(lambda g: 0.5 * g, rescaled)
    updates, _ = clipped_tx.update(small, clipped_tx.init(params), params, value=0.0)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -lr * g, small), rtol=1e-5)


def test_grad_accumulation_equals_one_step_on_the_mean_gradient():
    k, cycles = 3, 2
    common = dict(name="adamw", lr=0.1, weight_decay=0.01, schedule="warmup_cosine", clip_norm=1.0)
    # Same curve in train steps: the accumulated run has k times the steps of the reference.
    accum_tx = optim.make_optimizer(_config(grad_accum_steps=k, warmup_steps=k, **common), 4 * k)
    ref_tx = optim.make_optimizer(_config(grad_accum_steps=1, warmup_steps=1, **common), 4)
    accum_update, ref_update = jax.jit(accum_tx.update), jax.jit(ref_tx.update)

    params = ref_params = _params()
    accum_state, ref_state = accum_tx.init(params), ref_tx.init(params)
    for cycle in range(cycles):
        micro_grads = [_grads(10 * cycle + i, scale=2.0) for i in range(k)]
        for i, g in enumerate(micro_grads):
            updates, accum_state = accum_update(g, accum_state, params, value=1.0)
            new_params = jax.tree.map(jnp.add, params, updates)
            if i < k - 1:
                chex.assert_trees_all_equal(new_params, params)
            params = new_params
        mean = jax.tree.map(lambda *g: sum(g) / k, *micro_grads)
        # Clipping must act on the mean, not on each micro-gradient: make sure it is active.
        assert _global_norm(mean) > 1.0
        updates, ref_state = ref_update(mean, ref_state, ref_params, value=1.0)
        ref_params = jax.tree.map(jnp.add, ref_params, updates)
        chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_reduce_on_plateau(grad_accum_steps):
    lr, factor, patience, accumulation = 0.1, 0.5, 3, 2
    config = _config(
        name="sgd", momentum=0.0, lr=lr, weight_decay=0.0, clip_norm=0.0,
        schedule="warmup_plateau", warmup_steps=0, plateau_factor=factor,
        plateau_patience=patience, plateau_cooldown=0, plateau_accumulation_size=accumulation,
        grad_accum_steps=grad_accum_steps,
    )  # fmt: skip
    tx = optim.make_optimizer(config, 1000)
    update = jax.jit(tx.update)
    current_lr = jax.jit(lambda state, step: optim.current_learning_rate(config, 1000, state, step))
    params = _params()
    grads = _grads(0)
    # The first evaluation sets the best loss; `patience` more without improvement cut the lr.
    steps_to_cut = (patience + 1) * accumulation * grad_accum_steps

    state = tx.init(params)
    for step in range(steps_to_cut):
        np.testing.assert_allclose(current_lr(state, step), lr, rtol=1e-6)
        updates, state = update(grads, state, params, value=1.0)
    np.testing.assert_allclose(current_lr(state, steps_to_cut), lr * factor, rtol=1e-6)
    # The cut applies to the update that triggered it, not only to the reported lr.
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -lr * factor * g, grads), rtol=1e-6)

    state = tx.init(params)
    for step in range(3 * steps_to_cut):
        _, state = update(grads, state, params, value=10.0 - 0.1 * step)
    np.testing.assert_allclose(current_lr(state, 3 * steps_to_cut), lr, rtol=1e-6)


def test_current_learning_rate_follows_schedule_without_plateau():
    config = _config(schedule="warmup_cosine", lr=0.1, warmup_steps=4, grad_accum_steps=2)
    tx = optim.make_optimizer(config, 20)
    state = tx.init(_params())
    schedule = optim.make_schedule(config, 20)
    for step in (0, 1, 2, 3, 7, 20):
        # With accumulation, the lr of the window that `step` belongs to.
        np.testing.assert_allclose(
            optim.current_learning_rate(config, 20, state, step), schedule(step // 2 * 2), rtol=1e-6
        )


COMBINATIONS = list(
    itertools.product(["adamw", "adam", "sgd"], ["constant", "warmup_cosine", "warmup_plateau"],
                      [0.0, 1.0], [1, 2])
)  # fmt: skip


@pytest.mark.parametrize("name,schedule,clip_norm,grad_accum_steps", COMBINATIONS)
def test_every_combination_updates_under_jit(name, schedule, clip_norm, grad_accum_steps):
    config = _config(
        name=name, schedule=schedule, clip_norm=clip_norm, grad_accum_steps=grad_accum_steps,
        warmup_steps=2, plateau_accumulation_size=1, plateau_patience=1,
    )  # fmt: skip
    tx = optim.make_optimizer(config, 10)
    params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.ones(2)}

    @jax.jit
    def step(params, state, loss, i):
        updates, state = tx.update(grads, state, params, value=loss)
        lr = optim.current_learning_rate(config, 10, state, i)
        return jax.tree.map(jnp.add, params, updates), state, lr

    state = tx.init(params)
    for i in range(2 * grad_accum_steps):
        params, state, lr = step(params, state, jnp.float32(1.0), i)
    chex.assert_tree_all_finite((params, lr))
    assert float(params["w"][0, 0]) < 1.0  # At least one real update happened.


@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(name="adamx"), "optim.name"),
        (dict(schedule="cosine"), "optim.schedule"),
        (dict(grad_accum_steps=0), "optim.grad_accum_steps"),
        (dict(schedule="warmup_cosine", warmup_steps=10), "optim.warmup_steps"),
    ],
)
def test_bad_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        optim.make_optimizer(_config(**overrides), 10)


def test_bad_name_lists_choices():
    with pytest.raises(ValueError, match=r"'adamx'.*'adamw', 'adam', 'sgd'"):
        optim.make_optimizer(_config(name="adamx"), 10)
