"""timm ViT state dicts (`.safetensors`, timm key names) <-> the Flax `ViTEncoder` params.

    timm key                                  shape          Flax path (under params["encoder"])
    patch_embed.proj.weight                   [D, 3, P, P]   patch_embed/kernel [P, P, 3, D]
    patch_embed.proj.bias                     [D]            patch_embed/bias
    cls_token                                 [1, 1, D]      cls_token
    pos_embed                                 [1, 1 + N, D]  pos_embed (resized if N differs)
    blocks.i.norm{1,2}.{weight,bias}          [D]            blocks_i/norm{1,2}/{scale,bias}
    blocks.i.attn.qkv.{weight,bias}           [3D, D], [3D]  blocks_i/attn/qkv/{kernel,bias}
    blocks.i.attn.proj.{weight,bias}          [D, D], [D]    blocks_i/attn/proj/...
    blocks.i.mlp.fc{1,2}.{weight,bias}                       blocks_i/mlp/fc{1,2}/...
    norm.{weight,bias}                        [D]            norm/{scale,bias}

Linear weights are [out, in] in PyTorch and [in, out] in Flax (transposed); the conv weight is
OIHW vs HWIO. The classifier `head.*` is not imported (22 classes, not ImageNet's 1000).

Position embeddings: the class token's entry is kept and the N patch entries, a sqrt(N) x
sqrt(N) grid, are resized to the new grid (bicubic by default, as timm's
`resample_abs_pos_embed`; `jax.image.resize`'s cubic kernel is Keys a=-0.5 where PyTorch's is
a=-0.75, so values differ slightly from timm's own resize, never the unresized ones).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxlab.glitch import model as model_lib

SKIPPED_PREFIXES = ("head.", "fc_norm.")  # classifier, and the norm of global-average pooling


def _block_keys(i: int) -> dict[str, tuple[tuple[str, ...], str]]:
    """timm key -> (flax path, conversion) for block i."""
    b = f"blocks_{i}"
    keys = {}
    for norm in ("norm1", "norm2"):
        keys[f"blocks.{i}.{norm}.weight"] = ((b, norm, "scale"), "copy")
        keys[f"blocks.{i}.{norm}.bias"] = ((b, norm, "bias"), "copy")
    for module, path in (
        ("attn.qkv", ("attn", "qkv")),
        ("attn.proj", ("attn", "proj")),
        ("mlp.fc1", ("mlp", "fc1")),
        ("mlp.fc2", ("mlp", "fc2")),
    ):
        keys[f"blocks.{i}.{module}.weight"] = ((b, *path, "kernel"), "linear")
        keys[f"blocks.{i}.{module}.bias"] = ((b, *path, "bias"), "copy")
    return keys


def key_map(depth: int) -> dict[str, tuple[tuple[str, ...], str]]:
    """Every timm key of a depth-`depth` ViT -> (Flax path, conversion)."""
    keys = {
        "patch_embed.proj.weight": (("patch_embed", "kernel"), "conv"),
        "patch_embed.proj.bias": (("patch_embed", "bias"), "copy"),
        "cls_token": (("cls_token",), "copy"),
        "pos_embed": (("pos_embed",), "pos_embed"),
        "norm.weight": (("norm", "scale"), "copy"),
        "norm.bias": (("norm", "bias"), "copy"),
    }
    for i in range(depth):
        keys.update(_block_keys(i))
    return keys


def encoder_depth(params: Any) -> int:
    return sum(1 for name in params if name.startswith("blocks_"))


def interpolate_pos_embed(
    pos_embed: np.ndarray, num_patches: int, method: str = "bicubic"
) -> np.ndarray:
    """[1, 1 + N, D] -> [1, 1 + num_patches, D]: class entry kept, the patch grid resized.

    Args:
      pos_embed: timm layout, class token first, then a square grid of N row-major patches.
      num_patches: the new grid's patch count (a square number).
      method: "bicubic" or "bilinear" (`jax.image.resize`).
    """
    _, tokens, dim = pos_embed.shape
    old, new = math.isqrt(tokens - 1), math.isqrt(num_patches)
    if old * old != tokens - 1 or new * new != num_patches:
        raise ValueError(
            f"pos_embed with {tokens - 1} patches -> {num_patches}: both must be square grids."
        )
    if old == new:
        return pos_embed
    if method not in ("bicubic", "bilinear"):
        raise ValueError(f"pos_embed interpolation {method!r}; expected 'bicubic' or 'bilinear'.")
    grid = jnp.asarray(pos_embed[0, 1:], jnp.float32).reshape(old, old, dim)
    jax_method = {"bicubic": "cubic", "bilinear": "linear"}[method]
    resized = jax.image.resize(grid, (new, new, dim), method=jax_method)
    patches = np.asarray(resized).reshape(1, new * new, dim)
    return np.concatenate([pos_embed[:, :1], patches.astype(pos_embed.dtype)], axis=1)


def _convert(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return value.T
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return value


def timm_to_flax(
    state_dict: dict[str, np.ndarray], template: Any, pos_embed_method: str = "bicubic"
) -> dict[str, Any]:
    """A timm ViT state dict -> encoder params shaped like `template` (params["encoder"]).

    Raises ValueError naming every missing key, unexpected key and shape mismatch at once.
    """
    depth = encoder_depth(template)
    mapping = key_map(depth)
    errors = []
    missing = sorted(set(mapping) - set(state_dict))
    if missing:
        errors.append(f"missing keys {missing}")
    unexpected = sorted(
        k for k in set(state_dict) - set(mapping) if not k.startswith(SKIPPED_PREFIXES)
    )
    if unexpected:
        errors.append(f"unexpected keys {unexpected} (a deeper model than depth {depth}?)")
    params: dict[str, Any] = {}
    for key, (path, kind) in mapping.items():
        if key not in state_dict:
            continue
        want = template
        for name in path:
            want = want[name]
        value = np.asarray(state_dict[key], np.float32)
        if kind == "pos_embed":
            value = interpolate_pos_embed(value, want.shape[1] - 1, pos_embed_method)
        value = _convert(kind, value)
        if value.shape != tuple(want.shape):
            errors.append(f"{key}: shape {value.shape} after conversion, expected {want.shape}")
            continue
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    if errors:
        raise ValueError("timm ViT import: " + "; ".join(errors) + ".")
    return params


def flax_to_timm(encoder_params: Any) -> dict[str, np.ndarray]:
    """Encoder params -> a timm-layout state dict (the inverse of `timm_to_flax`, no resize)."""
    state_dict = {}
    for key, (path, kind) in key_map(encoder_depth(encoder_params)).items():
        value = encoder_params
        for name in path:
            value = value[name]
        value = np.asarray(value, np.float32)
        if kind == "linear":
            value = value.T
        elif kind == "conv":
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        state_dict[key] = np.ascontiguousarray(value)
    return state_dict


def encoder_template(encoder: model_lib.ViTEncoder, images_shape: tuple[int, ...]) -> Any:
    """The encoder's abstract params for a batch of `images_shape`: the target of an import.

    `images_shape` is NHWC, [B, S, S, 3]; a timm-style channels-first [B, 3, S, S] is refused
    with one error naming the expected layout (nothing is computed).
    """
    model_lib.check_image_layout(tuple(images_shape), "[B, S, S, 3]")
    images = jax.ShapeDtypeStruct(tuple(images_shape), jnp.float32)
    return jax.eval_shape(encoder.init, jax.random.key(0), images)["params"]  # shapes only


def load_encoder(path: str, template: Any, pos_embed_method: str = "bicubic") -> dict[str, Any]:
    """Reads a timm `.safetensors` ViT checkpoint into encoder params shaped like `template`."""
    try:
        state_dict = load_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no such file (a timm ViT .safetensors).") from e
    try:
        return timm_to_flax(state_dict, template, pos_embed_method)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def save_encoder(path: str, encoder_params: Any) -> None:
    """Writes encoder params as a timm-layout `.safetensors` file."""
    save_file(flax_to_timm(encoder_params), path)
