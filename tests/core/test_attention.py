"""Tests for jaxlab.core.attention against independent numpy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import attention as attention_lib
from jaxlab.core.attention import MultiHeadAttention, attention_mask, dot_product_attention

HEADS, HEAD_DIM, FEATURES = 2, 4, 8
PACKED_LENGTHS = ((5, 3, 7), (4, 9))  # two rows of 16 tokens, the rest is padding (id 0)
ROW_LEN = 16

# Jitted once per shape: eager op-by-op dispatch is far slower than compiling these tiny graphs.
attend = jax.jit(dot_product_attention, static_argnames="implementation")


def np_attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d)) V in float64; rows with nothing to attend to give 0.

    q [B, Tq, H, D], k/v [B, Tk, H, D], mask bool broadcastable to [B, H, Tq, Tk].
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if mask is None:
        mask = np.ones(logits.shape, bool)
    mask = np.broadcast_to(np.asarray(mask), logits.shape)
    logits = np.where(mask, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(logits - row_max) * mask
    denom = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, denom, out=np.zeros_like(weights), where=denom > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def packed_segment_ids():
    """int32 [2, 16]: ids 1, 2, 3, ... per packed sequence, 0 for trailing padding."""
    rows = []
    for lengths in PACKED_LENGTHS:
        ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
        rows.append(np.pad(ids, (0, ROW_LEN - len(ids))))
    return jnp.asarray(np.stack(rows), jnp.int32)


def segments(row):
    """(start, end) of each packed sequence in a row."""
    bounds = np.cumsum((0, *PACKED_LENGTHS[row]))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def normal(rng, shape, scale=1.0):
    """float32 jax array of N(0, scale^2) samples (numpy rng: no per-shape compile)."""
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def random_qkv(seed, batch, q_len, kv_len):
    rng = np.random.default_rng(seed)
    q = normal(rng, (batch, q_len, HEADS, HEAD_DIM))
    k = normal(rng, (batch, kv_len, HEADS, HEAD_DIM))
    v = normal(rng, (batch, kv_len, HEADS, HEAD_DIM))
    return q, k, v


@pytest.fixture(scope="module")
def packed_model():
    """A MultiHeadAttention, its params, a packed input [2, 16, F] and its segment ids."""
    model = MultiHeadAttention(num_heads=HEADS)
    x = normal(np.random.default_rng(1), (2, ROW_LEN, FEATURES))
    params = jax.jit(model.init)(jax.random.key(0), x)
    return model, params, x, packed_segment_ids()


# --- attention_mask ----------------------------------------------------------------------------


def test_attention_mask_is_none_without_inputs():
    assert attention_mask() is None


def test_attention_mask_block_diagonal_from_segment_ids():
    ids = jnp.asarray([[1, 1, 2, 0]], jnp.int32)
    expected = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool
    )  # padding (id 0) attends nothing and is attended by nothing
    mask = attention_mask(ids)
    chex.assert_shape(mask, (1, 1, 4, 4))
    assert mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_attention_mask_combines_segments_and_padding():
    ids = jnp.asarray([[1, 1, 2, 2]], jnp.int32)
    valid = jnp.asarray([[True, False, True, True]])
    mask = attention_mask(ids, kv_padding_mask=valid)
    expected = (ids[0, :, None] == ids[0, None, :]) & valid[0][None, :]
    np.testing.assert_array_equal(mask[0, 0], expected)


def test_attention_mask_from_padding_only_needs_q_len():
    valid = jnp.asarray([[True, True, False], [False, False, False]])
    mask = attention_mask(kv_padding_mask=valid, q_len=2)
    chex.assert_shape(mask, (2, 1, 2, 3))
    np.testing.assert_array_equal(mask[:, 0], np.broadcast_to(valid[:, None, :], (2, 2, 3)))
    with pytest.raises(ValueError, match="q_len"):
        attention_mask(kv_padding_mask=valid)


def test_attention_mask_segment_ids_reused_for_keys_must_match_kv_len():
    ids = jnp.asarray([[1, 1, 2]], jnp.int32)
    with pytest.raises(ValueError, match="kv_len=5"):
        attention_mask(ids, kv_len=5)


# --- dot_product_attention ---------------------------------------------------------------------


def test_dot_product_attention_matches_numpy_reference():
    q, k, v = random_qkv(0, batch=2, q_len=3, kv_len=5)
    out = attend(q, k, v)
    chex.assert_shape(out, q.shape)
    np.testing.assert_allclose(out, np_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_dot_product_attention_with_padding_mask_matches_numpy_reference():
    q, k, v = random_qkv(0, batch=3, q_len=3, kv_len=5)
    # Row 2 has no valid key at all: its output must be exactly 0.
    valid = jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    out = attend(q, k, v, padding_mask=valid)
    expected = np_attention(q, k, v, mask=np.asarray(valid)[:, None, None, :])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out[2], 0.0)


def test_dot_product_attention_explicit_per_head_mask():
    q, k, v = random_qkv(2, batch=2, q_len=4, kv_len=4)
    mask = jnp.asarray(np.random.default_rng(3).random((2, HEADS, 4, 4)) < 0.6)
    valid = jnp.asarray([[1, 1, 0, 1], [1, 1, 1, 1]], bool)
    out = attend(q, k, v, mask=mask, padding_mask=valid)
    expected = np_attention(q, k, v, mask=np.asarray(mask) & np.asarray(valid)[:, None, None])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    assert np.all(np.isfinite(out))


def test_forced_xla_implementation_matches_default():
    q, k, v = random_qkv(4, batch=2, q_len=ROW_LEN, kv_len=ROW_LEN)
    ids = packed_segment_ids()
    default = attend(q, k, v, segment_ids=ids)
    forced = attend(q, k, v, segment_ids=ids, implementation="xla")
    np.testing.assert_allclose(default, forced, atol=1e-6)


def test_softmax_matches_float64_and_jax_nn_values_and_gradients():
    """The custom-vjp softmax (backward from P alone, reciprocal of the row sum multiplied in)
    against float64 numpy: values and the vector-Jacobian product P (g - sum(g P)); and against
    jax.nn.softmax's own gradient. Rows include the large-negative mask fill, a fully masked row
    and a large spread, where a wrong max subtraction or residual would show."""
    rng = np.random.default_rng(11)
    logits = 4.0 * rng.standard_normal((3, 5, 33))
    fill = 0.7 * np.finfo(np.float32).min
    logits[0, 1, 7:] = fill  # a masked tail
    logits[1, 2, :] = fill  # a fully masked row: uniform, as jax.nn gives
    logits[2, 3, 0] = 60.0  # one dominant logit
    grad = rng.standard_normal(logits.shape)
    x, g = jnp.asarray(logits, jnp.float32), jnp.asarray(grad, jnp.float32)

    exp = np.exp(logits - logits.max(-1, keepdims=True))
    p64 = exp / exp.sum(-1, keepdims=True)
    dx64 = p64 * (grad - np.sum(grad * p64, -1, keepdims=True))

    probs, vjp = jax.jit(lambda x: jax.vjp(attention_lib.softmax, x))(x)
    (dx,) = vjp(g)
    np.testing.assert_allclose(probs, p64, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(np.sum(probs, -1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(dx, dx64, rtol=2e-5, atol=2e-6)
    _, ref_vjp = jax.vjp(lambda x: jax.nn.softmax(x, axis=-1), x)
    np.testing.assert_allclose(dx, ref_vjp(g)[0], rtol=1e-5, atol=1e-6)


def test_xla_path_matches_jax_nn_forward_and_gradients():
    """jaxlab's einsum path (scale folded into Q, its own softmax) is jax.nn's XLA attention:
    values and all three input gradients, with a mask, within float32 rounding."""
    q, k, v = random_qkv(6, batch=2, q_len=ROW_LEN, kv_len=ROW_LEN)
    mask = attention_mask(packed_segment_ids())

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

    ours = lambda q, k, v: attention_lib.xla_attention(q, k, v, mask)  # noqa: E731
    ref = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
        q, k, v, mask=mask, implementation="xla"
    )
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-6, atol=1e-6)
    grads = jax.jit(jax.grad(loss(ours), argnums=(0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def test_chunked_attention_equals_full_and_keeps_less_memory():
    """Query blocks of 8 over 20 tokens (padded to 24): same outputs and gradients as the full
    path, with the segment mask (fully masked padding rows stay exactly 0); and XLA's memory
    plan for forward + backward holds less temporary memory (no [B, H, Tq, Tk] residuals)."""
    length, chunk = 20, 8
    q, k, v = random_qkv(7, batch=2, q_len=length, kv_len=length)
    ids = jnp.asarray(np.repeat([[1, 2, 0, 0, 3]], 2, 0).repeat(4, 1), jnp.int32)  # [2, 20]

    def attend_with(impl):
        def fn(q, k, v):
            mask = attention_mask(ids)
            if impl == "chunked":
                out = attention_lib.chunked_attention(q, k, v, mask, chunk_size=chunk)
            else:
                out = attention_lib.xla_attention(q, k, v, mask)
            return jnp.where(jnp.any(mask, -1).swapaxes(1, 2)[..., None], out, 0.0)

        return fn

    full, chunked = attend_with("xla"), attend_with("chunked")
    np.testing.assert_allclose(jax.jit(chunked)(q, k, v), jax.jit(full)(q, k, v), atol=1e-6)
    np.testing.assert_array_equal(jax.jit(chunked)(q, k, v)[:, 8:12], 0.0)  # padding rows

    def grad_fn(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))

    for got, want in zip(grad_fn(chunked)(q, k, v), grad_fn(full)(q, k, v), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    # Memory: a long sequence, where the [B, H, T, T] logits dominate.
    long_q = jnp.zeros((1, 1024, HEADS, HEAD_DIM))

    def temp_bytes(impl):
        fn = lambda q: jnp.sum(  # noqa: E731
            attention_lib.chunked_attention(q, q, q, None, chunk_size=128)
            if impl == "chunked"
            else attention_lib.xla_attention(q, q, q, None)
        )
        compiled = jax.jit(jax.grad(fn)).lower(long_q).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes("chunked") < 0.5 * temp_bytes("xla")


def test_unknown_implementation_is_refused():
    q, k, v = random_qkv(0, batch=1, q_len=2, kv_len=2)
    with pytest.raises(ValueError, match="implementation='flash'"):
        dot_product_attention(q, k, v, implementation="flash")


def test_packed_dot_product_attention_is_per_sequence_and_zero_on_padding():
    q, k, v = random_qkv(5, batch=2, q_len=ROW_LEN, kv_len=ROW_LEN)
    ids = packed_segment_ids()
    out = attend(q, k, v, segment_ids=ids)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(
        out, np_attention(q, k, v, mask=np.asarray(attention_mask(ids))), atol=1e-5, rtol=1e-5
    )
    for row in range(2):
        for start, end in segments(row):
            alone = attend(
                q[row : row + 1, start:end],
                k[row : row + 1, start:end],
                v[row : row + 1, start:end],
            )
            np.testing.assert_allclose(out[row : row + 1, start:end], alone, atol=1e-5)
        padding = np.asarray(ids[row]) == 0
        assert padding.any()
        np.testing.assert_array_equal(out[row, padding], 0.0)


# --- MultiHeadAttention ------------------------------------------------------------------------


def test_packed_sequences_match_running_each_alone(packed_model):
    model, params, x, ids = packed_model
    out = jax.jit(lambda p, x, ids: model.apply(p, x, segment_ids=ids))(params, x, ids)
    chex.assert_shape(out, x.shape)
    assert np.all(np.isfinite(out))
    apply_alone = jax.jit(model.apply)
    for row in range(2):
        for start, end in segments(row):
            alone = apply_alone(params, x[row : row + 1, start:end])
            np.testing.assert_allclose(out[row : row + 1, start:end], alone, atol=1e-5)


def test_cross_attention_ignores_masked_context():
    model = MultiHeadAttention(num_heads=HEADS, qkv_features=16, out_features=6)
    rng = np.random.default_rng(6)
    x = normal(rng, (2, 3, FEATURES))
    context = normal(rng, (2, 5, 12))
    valid = jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], bool)
    params = jax.jit(lambda: model.init(jax.random.key(0), x, context, padding_mask=valid))()
    apply = jax.jit(lambda c: model.apply(params, x, c, padding_mask=valid))

    out = apply(context)
    chex.assert_shape(out, (2, 3, 6))
    noise = normal(rng, context.shape, scale=10.0)
    changed_masked = jnp.where(valid[..., None], context, noise)
    np.testing.assert_allclose(apply(changed_masked), out, atol=1e-6)

    # The test is sensitive: changing a *valid* context position does change the output.
    changed_valid = context.at[:, 0].set(noise[:, 0])
    assert not np.allclose(apply(changed_valid), out, atol=1e-3)


def test_gradients_finite_through_packed_input_with_padding_rows(packed_model):
    model, params, x, ids = packed_model

    def loss(params, x):
        return jnp.sum(model.apply(params, x, segment_ids=ids) ** 2)

    grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for leaf in jax.tree.leaves(grad_params):
        assert np.all(np.isfinite(leaf))
    assert np.all(np.isfinite(grad_x))
    # Padding tokens (id 0) attend nothing and are attended by nothing: no gradient reaches them.
    padding = np.asarray(ids) == 0
    np.testing.assert_array_equal(grad_x[padding], 0.0)
    assert np.any(grad_x[~padding] != 0.0)


def test_bfloat16_compute_close_to_float32(packed_model):
    model, params, x, ids = packed_model
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    model_bf16 = MultiHeadAttention(num_heads=HEADS, dtype=jnp.bfloat16)
    params_bf16 = jax.eval_shape(model_bf16.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params_bf16))

    out32 = jax.jit(lambda p, x: model.apply(p, x, segment_ids=ids))(params, x)
    out16 = jax.jit(lambda p, x: model_bf16.apply(p, x, segment_ids=ids))(params, x)
    assert out16.dtype == jnp.bfloat16
    assert np.all(np.isfinite(out16.astype(jnp.float32)))
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=5e-2, rtol=5e-2)


def test_dropout_only_when_not_deterministic(packed_model):
    _, params, x, ids = packed_model
    model = MultiHeadAttention(num_heads=HEADS, dropout_rate=0.5)

    @jax.jit
    def apply(rng):
        det = model.apply(params, x, segment_ids=ids)
        dropped = model.apply(
            params, x, segment_ids=ids, deterministic=False, rngs={"dropout": rng}
        )
        return det, dropped

    det, dropped = apply(jax.random.key(7))
    det_again, dropped_again = apply(jax.random.key(8))
    np.testing.assert_array_equal(det, det_again)
    assert np.all(np.isfinite(dropped))
    assert not np.allclose(dropped, det)
    assert not np.allclose(dropped, dropped_again)


@pytest.mark.parametrize(("num_heads", "qkv_features"), [(3, 16), (3, None)])
def test_bad_head_count_raises_with_numbers(num_heads, qkv_features):
    model = MultiHeadAttention(num_heads=num_heads, qkv_features=qkv_features)
    x = jnp.zeros((1, 4, FEATURES))
    expected = qkv_features or FEATURES
    with pytest.raises(ValueError, match=f"qkv_features={expected}.*num_heads={num_heads}"):
        model.init(jax.random.key(0), x)
