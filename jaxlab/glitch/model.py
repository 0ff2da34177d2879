"""GravityViT: a timm-identical ViT encoder, multi-view cross-attention fusion, and a CNN baseline.

`ViTEncoder` with `VIT_SIZES["B"]` and patch 16 is architecturally timm's `vit_base_patch16_224`
(pre-norm blocks, LayerNorm eps 1e-6, exact GELU, one fused qkv projection with bias, class token,
learned position embeddings including the class position, final norm, class-token pooling), so
its parameters map one to one onto timm's state dict (see `timm_import.py`):

    patch_embed.proj.weight [D, 3, P, P]   <-> encoder/patch_embed/kernel [P, P, 3, D]
    cls_token [1, 1, D], pos_embed [1, 1 + N, D]
    blocks.i.norm1 / attn.qkv [3D, D] / attn.proj / norm2 / mlp.fc1 / mlp.fc2
                                           <-> encoder/blocks_i/{norm1, attn/qkv, attn/proj, ...}
    norm.weight, norm.bias                 <-> encoder/norm/{scale, bias}

Every model maps images to {"logits": [B, C] float32, "view_weights": [B, V] float32}; the
multi-view ViT's view weights are its fusion attention (per-view importance), the other models
return uniform weights.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core import attention
from jaxlab.core import state as state_lib

# (width D, depth, heads) of the ViT sizes of Dosovitskiy et al. / timm; MLP ratio 4.
VIT_SIZES = {"Ti": (192, 12, 3), "S": (384, 12, 6), "B": (768, 12, 12)}
LAYERNORM_EPS = 1e-6  # timm's ViT (PyTorch's default 1e-5 would not match pretrained weights)

dense_init = nn.initializers.truncated_normal(stddev=0.02)  # timm's trunc_normal_(std=.02)
LayerNorm = functools.partial(nn.LayerNorm, epsilon=LAYERNORM_EPS)


def gelu_exact(x: jax.Array) -> jax.Array:
    """erf GELU, x * (1 + erf(x / sqrt(2))) / 2, as torch.nn.GELU() (timm's default) computes it;
    not the tanh approximation.

    `jax.nn.gelu(approximate=False)` writes the same function with erfc(-x / sqrt(2)), which XLA
    lowers to a costlier polynomial with an exp and a select: on CPU the erf form's forward
    fusion runs in roughly half the time, and the two agree to 1e-6 (float32).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.asarray(math.sqrt(0.5), x.dtype)))


def check_image_layout(shape: tuple[int, ...], expected: str = "[B, S, S, 3]") -> None:
    """Raises one clear ValueError unless `shape` is channels-last RGB of `expected`'s rank.

    timm (PyTorch) takes channels-first batches, [B, 3, S, S]; these models take NHWC,
    [B, S, S, 3] ([B, V, S, S, 3] with views). Without this check a channels-first batch fails
    much later, as "image size 3x224 is not a multiple of patch 16".
    """
    rank = expected.count(",") + 1
    if len(shape) == rank and shape[-1] == 3:
        return
    hint = ""
    if len(shape) == rank and shape[-3] == 3:
        perm = (*range(rank - 3), rank - 2, rank - 1, rank - 3)
        hint = (
            " It looks channels-first (NCHW, the PyTorch/timm layout); move the channels last: "
            f"images.transpose{perm}."
        )
    raise ValueError(
        f"images of shape {tuple(shape)}; expected NHWC {expected} (channels last, 3 channels)."
        + hint
    )


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per example with probability `rate`."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Attention(nn.Module):
    """timm's ViT attention: one fused qkv Dense (bias), heads, output `proj`.

    The qkv output is split as timm does, `reshape(B, N, 3, H, D/H)`, so the imported
    `attn.qkv.weight` [3D, D] is just transposed. The product itself is the core's
    `dot_product_attention` (no mask: every patch sees every patch).
    """

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = nn.Dense(3 * dim, dtype=self.dtype, kernel_init=dense_init, name="qkv")(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        out = attention.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        out = nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name="proj")(
            out.reshape(batch, tokens, dim)
        )
        return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)


class Mlp(nn.Module):
    hidden: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        dim = x.shape[-1]
        x = gelu_exact(
            nn.Dense(self.hidden, dtype=self.dtype, kernel_init=dense_init, name="fc1")(x)
        )
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name="fc2")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    num_heads: int
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        dim = x.shape[-1]
        y = LayerNorm(dtype=self.dtype, name="norm1")(x)
        y = Attention(self.num_heads, self.dropout_rate, self.dtype, name="attn")(y, deterministic)
        x = x + DropPath(self.drop_path_rate)(y, deterministic)
        y = LayerNorm(dtype=self.dtype, name="norm2")(x)
        y = Mlp(int(dim * self.mlp_ratio), self.dropout_rate, self.dtype, name="mlp")(
            y, deterministic
        )
        return x + DropPath(self.drop_path_rate)(y, deterministic)


class ViTEncoder(nn.Module):
    """images [B, S, S, 3] -> class-token embedding [B, D] after the final norm."""

    patch_size: int
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
        check_image_layout(images.shape, "[B, S, S, 3]")
        batch, height, width, _ = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of patch {self.patch_size}."
            )
        x = nn.Conv(
            self.dim,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            name="patch_embed",
        )(images.astype(self.dtype))
        x = x.reshape(batch, -1, self.dim)  # row-major patches, as timm's flatten(2)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.dim)).astype(x.dtype), x], 1)
        pos = self.param("pos_embed", dense_init, (1, x.shape[1], self.dim))
        x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype), deterministic=deterministic)
        for i in range(self.depth):
            rate = self.drop_path_rate * i / max(self.depth - 1, 1)  # timm's linear rule
            x = Block(
                self.num_heads,
                self.mlp_ratio,
                self.dropout_rate,
                rate,
                self.dtype,
                name=f"blocks_{i}",
            )(x, deterministic)
        x = LayerNorm(dtype=self.dtype, name="norm")(x)
        out = x[:, 0]
        chex.assert_shape(out, (batch, self.dim))
        return out


class CrossAttentionFusion(nn.Module):
    """A learned query attends over V view embeddings; returns the fused [B, D] and the
    attention weights [B, V] (mean over heads), the per-view importance.

    The weights are computed explicitly (softmax(q k^T / sqrt(d))) because they are an output;
    with V = 4 keys that costs nothing.
    """

    num_heads: int
    view_embedding: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank(tokens, 3)
        batch, views, dim = tokens.shape
        head_dim = dim // self.num_heads
        if self.view_embedding:  # which duration a token came from
            tokens = tokens + self.param("view_embed", dense_init, (views, dim)).astype(
                tokens.dtype
            )
        kv = LayerNorm(dtype=self.dtype, name="norm_kv")(tokens)
        query = self.param("query", dense_init, (1, dim))

        def project(name, x):
            return nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name=name)(x)

        q = project("q", query.astype(self.dtype)).reshape(self.num_heads, head_dim)
        k = project("k", kv).reshape(batch, views, self.num_heads, head_dim)
        v = project("v", kv).reshape(batch, views, self.num_heads, head_dim)
        logits = jnp.einsum("hd,bvhd->bhv", q, k).astype(jnp.float32) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits, axis=-1)  # [B, H, V]
        fused = jnp.einsum("bhv,bvhd->bhd", weights.astype(v.dtype), v).reshape(batch, dim)
        fused = project("out", fused)
        view_weights = jnp.mean(weights, axis=1)
        chex.assert_shape(view_weights, (batch, views))
        return fused, view_weights


class MLPHead(nn.Module):
    num_classes: int
    hidden: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        x = LayerNorm(dtype=self.dtype, name="norm")(x)
        if self.hidden:
            x = gelu_exact(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x))
            x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="out")(x).astype(jnp.float32)


class MultiViewViT(nn.Module):
    """images [B, V, S, S, 3] -> logits [B, C]; one shared encoder over the views folded into the
    batch ([B * V, S, S, 3]), cross-attention fusion, MLP head."""

    encoder: ViTEncoder
    num_classes: int
    fusion_heads: int
    head_hidden: int
    head_dropout: float = 0.0
    view_embedding: bool = True

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_image_layout(images.shape, "[B, V, S, S, 3]")
        batch, views = images.shape[:2]
        folded = images.reshape(batch * views, *images.shape[2:])
        tokens = self.encoder(folded, deterministic=not train).reshape(batch, views, -1)
        fused, view_weights = CrossAttentionFusion(
            self.fusion_heads, self.view_embedding, self.encoder.dtype, name="fusion"
        )(tokens)
        logits = MLPHead(
            self.num_classes, self.head_hidden, self.head_dropout, self.encoder.dtype, name="head"
        )(fused, deterministic=not train)
        chex.assert_shape(logits, (batch, self.num_classes))
        return {"logits": logits, "view_weights": view_weights}


class SingleViewViT(nn.Module):
    """images [B, S, S, 3] -> logits [B, C]: the encoder's class token and a linear head."""

    encoder: ViTEncoder
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        features = self.encoder(images, deterministic=not train)
        logits = nn.Dense(self.num_classes, dtype=self.encoder.dtype, name="head")(features)
        ones = jnp.ones((images.shape[0], 1), jnp.float32)
        return {"logits": logits.astype(jnp.float32), "view_weights": ones}


def merge_views(images: jax.Array) -> jax.Array:
    """[B, 4, S, S, C] -> [B, 2S, 2S, C], the views tiled 2 x 2 (Bahaadini et al.'s merged view)."""
    batch, views, size, _, channels = images.shape
    if views != 4:
        raise ValueError(f"merged-view CNN needs 4 views, got {views}.")
    grid = images.reshape(batch, 2, 2, size, size, channels).transpose(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, 2 * size, 2 * size, channels)


class CNNBaseline(nn.Module):
    """Conv(5x5)-ReLU-MaxPool stacks, dense, dropout, softmax layer (Bahaadini et al. 2018).

    Single view [B, S, S, 3] or merged multi-view [B, 4, S, S, 3] (tiled 2 x 2).
    """

    num_classes: int
    features: tuple[int, ...] = (32, 64)
    kernel_size: int = 5
    dense: int = 256
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_image_layout(images.shape, "[B, V, S, S, 3]" if images.ndim == 5 else "[B, S, S, 3]")
        batch = images.shape[0]
        views = images.shape[1] if images.ndim == 5 else 1
        x = merge_views(images) if images.ndim == 5 else images
        x = x.astype(self.dtype)
        for width in self.features:
            x = nn.Conv(width, (self.kernel_size,) * 2, padding="SAME", dtype=self.dtype)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.dense, dtype=self.dtype)(x.reshape(batch, -1)))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        logits = nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
        return {"logits": logits, "view_weights": jnp.full((batch, views), 1.0 / views)}


def make_encoder(config: ml_collections.ConfigDict) -> ViTEncoder:
    mc = config.model
    dim, depth, heads = VIT_SIZES[mc.vit_size] if mc.vit_size else (mc.dim, mc.depth, mc.num_heads)
    return ViTEncoder(
        patch_size=mc.patch_size,
        dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mc.mlp_ratio,
        dropout_rate=mc.dropout,
        drop_path_rate=mc.drop_path,
        dtype=jnp.dtype(mc.dtype),
    )


def make_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """`config.model.name`: "vit_multiview", "vit" (single view) or "cnn"."""
    mc = config.model
    if mc.name == "vit_multiview":
        if not config.data.multi_view:
            raise ValueError("model.name='vit_multiview' needs data.multi_view=True.")
        return MultiViewViT(
            encoder=make_encoder(config),
            num_classes=num_classes,
            fusion_heads=mc.fusion_heads,
            head_hidden=mc.head_hidden,
            head_dropout=mc.head_dropout,
            view_embedding=mc.view_embedding,
        )
    if mc.name == "vit":
        if config.data.multi_view:
            raise ValueError("model.name='vit' is single-view; set data.multi_view=False.")
        return SingleViewViT(encoder=make_encoder(config), num_classes=num_classes)
    if mc.name == "cnn":
        return CNNBaseline(
            num_classes=num_classes,
            features=tuple(mc.cnn_features),
            kernel_size=mc.cnn_kernel,
            dense=mc.cnn_dense,
            dropout_rate=mc.cnn_dropout,
            dtype=jnp.dtype(mc.dtype),
        )
    raise ValueError(f"model.name = {mc.name!r}; expected 'vit_multiview', 'vit' or 'cnn'.")


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Shape of one record's image: (V, S, S, 3) or (S, S, 3)."""
    size = config.data.image_size
    if config.data.multi_view:
        return (len(config.data.durations), size, size, 3)
    return (size, size, 3)


def init_params(rng: jax.Array, *, model: nn.Module, image_shape: tuple[int, ...]) -> Any:
    return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def init_state(
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: Any,
    image_shape: tuple[int, ...],
    encoder_params: Any = None,
) -> state_lib.TrainState:
    """A fresh TrainState; `encoder_params` (e.g. imported from timm) replace the encoder's."""
    params = init_params(rng, model=model, image_shape=image_shape)
    if encoder_params is not None:
        params = {**params, "encoder": encoder_params}
    return state_lib.create_train_state(params, tx)
