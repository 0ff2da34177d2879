"""Multi-head attention with key padding masks and packed segment ids.

Why packing: the IceCube events have from a handful to thousands of pulses. Padding every event
to the longest one wastes most of the compute, so several events are *packed* into one row and
each token carries the segment id of its event (1, 2, 3, ...; 0 marks padding at the row's end).
Attention is then restricted to a block-diagonal mask: a token attends only to tokens of its own
event. This is the JAX counterpart of PyTorch FlexAttention document masking (and of the
`segment_ids` of Flax `examples/lm1b` / T5X). The Gravity Spy ViT uses the same module for
cross-attention between views, where the context may carry a key padding mask.

Shapes (B batch, Tq query length, Tk key length, H heads, D head dim, F features):

  query                  [B, Tq, H, D]
  key, value             [B, Tk, H, D]
  segment_ids            [B, T]   int32, 0 = padding (self-attention: Tq == Tk == T)
  padding_mask           [B, Tk]  bool, True = valid key
  mask                   [B, 1|H, Tq, Tk] bool, True = may attend
  output                 [B, Tq, H, D]

Query rows that may attend to nothing (padding tokens, or a context that is all padding) return
exactly 0 instead of the uniform average that a large-negative fill would give, and never NaN.

Kernels (`implementation`):
  None / 'xla'  jaxlab's XLA path: Q K^T and P V as einsums in the [B, H, Tq, Tk] layout with the
                1/sqrt(D) scale folded into Q (a [B, Tq, H, D] multiply instead of one over the
                [B, H, Tq, Tk] logits, in the forward and again in the backward pass), logits and
                softmax in float32, the softmax's backward from P alone (`softmax`). Same math as
                `jax.nn.dot_product_attention(implementation='xla')` (equal within float32
                rounding) and faster forward + backward at ViT-B/16 shapes on CPU
                (docs/performance.md).
  'chunked'     the same, one block of `CHUNK_SIZE` queries at a time under `jax.checkpoint`
                (flash-attention style memory: O(chunk * Tk) logits live instead of O(Tq * Tk),
                recomputed in the backward pass), for long packed sequences on CPU and for
                memory-bound accelerators without a fused kernel.
  'cudnn'       `jax.nn.dot_product_attention(implementation='cudnn')`: cuDNN's fused flash
                attention on NVIDIA GPUs (bf16/fp16 only), the GPU path for speed.
The kernel is an explicit choice, never picked from `jax.default_backend()` at trace time, so a
program lowered on one machine for another platform (`jax.export`) says which it uses. No config
selects 'cudnn' yet: its lowering needs cuDNN present, so the steps exported for CUDA and TPU from
a CPU machine (tests/core/test_lowering.py) use the XLA path.
There is no attention-weight dropout; the module applies dropout to the attention output before
the output projection instead.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = (None, "xla", "chunked", "cudnn")
CHUNK_SIZE = 256  # queries per block of the 'chunked' path


def _check_length(name: str, array: jax.Array, expected: int | None, what: str) -> None:
    if expected is not None and array.shape[1] != expected:
        raise ValueError(
            f"{name} has length {array.shape[1]} (shape {array.shape}), expected {what}={expected}."
        )


def attention_mask(
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_padding_mask: jax.Array | None = None,
    *,
    q_len: int | None = None,
    kv_len: int | None = None,
) -> jax.Array | None:
    """Boolean attention mask from segment ids and/or a key padding mask.

    Args:
      q_segment_ids: [B, Tq] int, segment id of each query token; 0 = padding.
      kv_segment_ids: [B, Tk] int, segment id of each key token; defaults to `q_segment_ids`
        (packed self-attention).
      kv_padding_mask: [B, Tk] bool, True = valid key.
      q_len: Tq. Needed when only `kv_padding_mask` is given; otherwise checked if given.
      kv_len: Tk. Checked against the given arrays if given.

    Returns:
      bool [B, 1, Tq, Tk], True where query i may attend to key j: segment ids are equal and
      non-zero (block-diagonal), and key j is valid. None when nothing is given.
    """
    if q_segment_ids is None and kv_segment_ids is not None:
        raise ValueError(
            "kv_segment_ids was given without q_segment_ids; for cross-attention key padding "
            "pass kv_padding_mask=kv_segment_ids != 0 instead."
        )
    if kv_segment_ids is None and q_segment_ids is not None:
        if kv_len is not None and kv_len != q_segment_ids.shape[1]:
            raise ValueError(
                f"segment ids {q_segment_ids.shape} are reused for the keys (packed "
                f"self-attention), but kv_len={kv_len} != {q_segment_ids.shape[1]}; "
                "pass kv_segment_ids or use kv_padding_mask for cross-attention."
            )
        kv_segment_ids = q_segment_ids

    mask = None
    if q_segment_ids is not None:
        chex.assert_rank([q_segment_ids, kv_segment_ids], 2)
        chex.assert_equal_shape_prefix([q_segment_ids, kv_segment_ids], 1)
        _check_length("q_segment_ids", q_segment_ids, q_len, "q_len")
        _check_length("kv_segment_ids", kv_segment_ids, kv_len, "kv_len")
        q_ids = q_segment_ids[:, :, None]  # [B, Tq, 1]
        kv_ids = kv_segment_ids[:, None, :]  # [B, 1, Tk]
        mask = (q_ids == kv_ids) & (q_ids != 0)  # [B, Tq, Tk]
        mask = mask[:, None]  # [B, 1, Tq, Tk]

    if kv_padding_mask is not None:
        chex.assert_rank(kv_padding_mask, 2)
        if kv_padding_mask.dtype != jnp.bool_:
            raise ValueError(
                f"kv_padding_mask must be bool (True = valid key), got {kv_padding_mask.dtype}."
            )
        _check_length("kv_padding_mask", kv_padding_mask, kv_len, "kv_len")
        key_mask = kv_padding_mask[:, None, None, :]  # [B, 1, 1, Tk]
        if mask is None:
            if q_len is None:
                raise ValueError("attention_mask needs q_len when only kv_padding_mask is given.")
            batch, tk = kv_padding_mask.shape
            mask = jnp.broadcast_to(key_mask, (batch, 1, q_len, tk))
        else:
            chex.assert_equal_shape([kv_padding_mask, kv_segment_ids])
            mask = mask & key_mask
    return mask


@jax.custom_vjp
def softmax(logits: jax.Array) -> jax.Array:
    """softmax over the last axis, exp(x - max) * (1 / sum), with a backward pass that keeps only
    the probabilities P: dx = P (g - sum(g P)). logits [..., Tk] float32 -> same shape.

    Why not `jax.nn.softmax`: its backward pass also holds the row sums, and XLA's CPU backend
    then writes their broadcast to [B, H, Tq, Tk] as a buffer of its own, one more pass forward
    and backward. With P as the only residual, and the row sums' reciprocal multiplied in (one
    division per row, not per element), the normalisation fuses into a single loop. Equal to
    jax.nn.softmax within 2 float32 ulps, values and gradients (tested against float64).
    """
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized * (1.0 / jnp.sum(unnormalized, axis=-1, keepdims=True))


def _softmax_fwd(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    probs = softmax(logits)
    return probs, probs


def _softmax_bwd(probs: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
    return (probs * (grad - jnp.sum(grad * probs, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def xla_attention(
    query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None
) -> jax.Array:
    """softmax(Q K^T / sqrt(D)) V without the fully-masked-row fix (`dot_product_attention` adds
    it). q [B, Tq, H, D], k/v [B, Tk, H, D], mask bool [B|1, H|1, Tq, Tk] or None.

    Logits and softmax are float32 whatever the input dtype (as in `jax.nn`); the probabilities
    are cast back to the value dtype for the P V product. The softmax is this module's `softmax`
    (P as the only residual of the backward pass).
    """
    scale = np.asarray(1.0 / math.sqrt(query.shape[-1]), query.dtype)
    logits = jnp.einsum(
        "bqhd,bkhd->bhqk", query * scale, key, preferred_element_type=jnp.float32
    )  # [B, H, Tq, Tk]
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.asarray(0.7 * jnp.finfo(jnp.float32).min))
    probs = softmax(logits).astype(value.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def chunked_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """`xla_attention` one block of `chunk_size` queries at a time, each block rematerialised
    in the backward pass: peak logits memory [B, H, chunk, Tk] instead of [B, H, Tq, Tk].

    Queries are padded to a multiple of the chunk (the padding rows are dropped at the end);
    shapes as `xla_attention`.
    """
    batch, q_len, heads, head_dim = query.shape
    if q_len <= chunk_size:
        return xla_attention(query, key, value, mask)
    num_chunks = -(-q_len // chunk_size)
    pad = num_chunks * chunk_size - q_len
    q = jnp.pad(query, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q = q.reshape(batch, num_chunks, chunk_size, heads, head_dim).swapaxes(0, 1)
    block = jax.checkpoint(lambda q_block, m_block: xla_attention(q_block, key, value, m_block))
    if mask is None:
        out = jax.lax.map(lambda q_block: block(q_block, None), q)
    else:
        m = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)))
        m = m.reshape(*m.shape[:2], num_chunks, chunk_size, m.shape[-1])
        m = jnp.moveaxis(m, 2, 0)  # [n, B|1, H|1, chunk, Tk]
        out = jax.lax.map(lambda qm: block(*qm), (q, m))
    out = out.swapaxes(0, 1).reshape(batch, num_chunks * chunk_size, heads, head_dim)
    return out[:, :q_len]


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    padding_mask: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """softmax(Q K^T / sqrt(D)) V under a combined boolean mask.

    Args:
      query: [B, Tq, H, D].
      key, value: [B, Tk, H, D], same dtype as `query`.
      mask: optional explicit bool [B, 1|H, Tq, Tk], True = may attend.
      segment_ids: optional int [B, Tq] for packed sequences; 0 = padding.
      kv_segment_ids: optional int [B, Tk]; defaults to `segment_ids`.
      padding_mask: optional bool [B, Tk], True = valid key.
      implementation: None or 'xla' (jaxlab's XLA path), 'chunked' or 'cudnn'; see the module
        docstring.

    Returns:
      [B, Tq, H, D]. All given masks are combined with AND; query rows with no key to attend to
      are exactly 0.
    """
    chex.assert_rank([query, key, value], 4)
    chex.assert_equal_shape([key, value])
    chex.assert_equal_shape_prefix([query, key], 1)
    chex.assert_equal_shape_suffix([query, key], 2)
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]

    derived = attention_mask(segment_ids, kv_segment_ids, padding_mask, q_len=q_len, kv_len=kv_len)
    if mask is not None:
        chex.assert_rank(mask, 4)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be bool (True = may attend), got {mask.dtype}.")
        if mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, heads):
            raise ValueError(
                f"mask has shape {mask.shape}, expected [{batch}, 1 or {heads}, {q_len}, {kv_len}]."
            )
        chex.assert_shape(mask, (None, None, q_len, kv_len))
        mask = mask if derived is None else mask & derived
    else:
        mask = derived

    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; expected one of {IMPLEMENTATIONS}.")
    if implementation == "cudnn":
        out = jax.nn.dot_product_attention(query, key, value, mask=mask, implementation="cudnn")
    elif implementation == "chunked":
        out = chunked_attention(query, key, value, mask)
    else:
        out = xla_attention(query, key, value, mask)
    if mask is not None:
        # A fully masked row gets a uniform softmax over the large-negative fill; make it 0.
        row_valid = jnp.any(mask, axis=-1)  # [B|1, 1|H, Tq]
        row_valid = jnp.swapaxes(row_valid, 1, 2)[..., None]  # [B|1, Tq, 1|H, 1]
        out = jnp.where(row_valid, out, jnp.zeros_like(out))
    chex.assert_shape(out, query.shape)
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with padding masks and packed segment ids.

    Attributes:
      num_heads: H.
      qkv_features: total width of q/k/v (H * D); defaults to the input feature size F.
      out_features: output width; defaults to F.
      dropout_rate: dropout on the attention output before the output projection.
      dtype: compute dtype; params stay float32.
      use_bias: biases in the q/k/v/out projections.
      implementation: None / 'xla', 'chunked' or 'cudnn' (see the module docstring).
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    implementation: str | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Attends from `x` to `context` (to `x` itself when `context` is None).

        Args:
          x: [B, Tq, F] queries.
          context: [B, Tk, Fc] keys/values for cross-attention; defaults to `x`.
          segment_ids: [B, T] int packed-sequence ids for self-attention (0 = padding).
          padding_mask: [B, Tk] bool, True = valid context (key) position.
          deterministic: if False, applies dropout with the 'dropout' rng.

        Returns:
          [B, Tq, out_features or F] in `dtype`.
        """
        chex.assert_rank(x, 3)
        context = x if context is None else context
        chex.assert_rank(context, 3)
        chex.assert_equal_shape_prefix([x, context], 1)
        features = x.shape[-1]
        qkv_features = self.qkv_features or features
        if qkv_features % self.num_heads != 0:
            raise ValueError(
                f"qkv_features={qkv_features} is not divisible by num_heads={self.num_heads}."
            )
        head_dim = qkv_features // self.num_heads

        def dense(name: str) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                features=(self.num_heads, head_dim),
                axis=-1,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=name,
            )

        query = dense("query")(x)  # [B, Tq, H, D]
        key = dense("key")(context)  # [B, Tk, H, D]
        value = dense("value")(context)  # [B, Tk, H, D]

        out = dot_product_attention(
            query,
            key,
            value,
            segment_ids=segment_ids,
            padding_mask=padding_mask,
            implementation=self.implementation,
        )  # [B, Tq, H, D]
        out = nn.Dropout(rate=self.dropout_rate)(out, deterministic=deterministic)
        out = nn.DenseGeneral(
            features=self.out_features or features,
            axis=(-2, -1),
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="out",
        )(out)
        chex.assert_shape(out, (*x.shape[:2], self.out_features or features))
        return out
