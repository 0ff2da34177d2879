"""ViT-B/16 architecture (timm's vit_base_patch16_224), timm import, fusion, view folding."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy.special import erf

from jaxlab.configs import glitch as glitch_config
from jaxlab.glitch import model as model_lib
from jaxlab.glitch import timm_import

# timm vit_base_patch16_224: 86,567,656 parameters with its 1000-class head (768 * 1000 + 1000).
VIT_B16_ENCODER_PARAMS = 86_567_656 - 769_000


def _abstract_params(module, shape):
    return jax.eval_shape(
        functools.partial(module.init), jax.random.key(0), jnp.zeros(shape, jnp.float32)
    )["params"]


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vit_b16_encoder_matches_timm_param_count_and_shapes():
    config = glitch_config.get_config("paper")
    encoder = model_lib.make_encoder(config)
    params = _abstract_params(encoder, (1, 224, 224, 3))
    assert _count(params) == VIT_B16_ENCODER_PARAMS  # 85,798,656
    timm_shapes = {
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 197, 768),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.11.attn.qkv.bias": (2304,),
        "blocks.11.mlp.fc1.weight": (3072, 768),
        "blocks.11.mlp.fc2.weight": (768, 3072),
        "norm.weight": (768,),
    }
    mapping = timm_import.key_map(12)
    assert len(mapping) == 4 + 12 * 12 + 2  # every tensor of timm's encoder, one to one
    for key, shape in timm_shapes.items():
        path, kind = mapping[key]
        leaf = params
        for name in path:
            leaf = leaf[name]
        want = {"linear": shape[::-1], "conv": (16, 16, 3, 768)}.get(kind, shape)
        assert tuple(leaf.shape) == want, key


def test_vit_b16_multiview_shapes_without_materialising():
    config = glitch_config.get_config("paper")
    model = model_lib.make_model(config, 22)
    shape = (2, *model_lib.input_shape(config))
    assert shape == (2, 4, 224, 224, 3)
    params = _abstract_params(model, shape)
    out = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, jnp.zeros(shape))
    assert out["logits"].shape == (2, 22) and out["view_weights"].shape == (2, 4)
    assert _count(params["encoder"]) == VIT_B16_ENCODER_PARAMS
    single = glitch_config.get_config("vit_b16_single")
    model = model_lib.make_model(single, 22)
    params = _abstract_params(model, (1, 224, 224, 3))
    assert _count(params) == VIT_B16_ENCODER_PARAMS + 768 * 22 + 22


def _tiny_encoder(**kw):
    args = dict(patch_size=4, dim=16, depth=2, num_heads=2)
    args.update(kw)
    return model_lib.ViTEncoder(**args)


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def timm_reference_forward(sd, images_nchw, depth, heads):
    """timm VisionTransformer.forward_features + token pooling, in numpy, from a state dict."""
    w = sd["patch_embed.proj.weight"]
    dim, channels, p, _ = w.shape
    b, _, h, wd = images_nchw.shape
    patches = images_nchw.reshape(b, channels, h // p, p, wd // p, p)
    patches = patches.transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, channels * p * p)
    x = patches @ w.reshape(dim, -1).T + sd["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, dim)), x], 1) + sd["pos_embed"]
    hd = dim // heads
    for i in range(depth):
        k = f"blocks.{i}."
        y = _layer_norm(x, sd[k + "norm1.weight"], sd[k + "norm1.bias"])
        qkv = y @ sd[k + "attn.qkv.weight"].T + sd[k + "attn.qkv.bias"]
        qkv = qkv.reshape(b, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)
        q, kk, v = qkv
        logits = q @ kk.transpose(0, 1, 3, 2) * hd**-0.5
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(b, -1, dim)
        x = x + out @ sd[k + "attn.proj.weight"].T + sd[k + "attn.proj.bias"]
        y = _layer_norm(x, sd[k + "norm2.weight"], sd[k + "norm2.bias"])
        y = y @ sd[k + "mlp.fc1.weight"].T + sd[k + "mlp.fc1.bias"]
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = x + y @ sd[k + "mlp.fc2.weight"].T + sd[k + "mlp.fc2.bias"]
    return _layer_norm(x, sd["norm.weight"], sd["norm.bias"])[:, 0]


def _random_timm_state_dict(rng, depth, dim, patch, grid, channels=3):
    sd = {
        "patch_embed.proj.weight": rng.normal(size=(dim, channels, patch, patch)) * 0.2,
        "patch_embed.proj.bias": rng.normal(size=(dim,)) * 0.1,
        "cls_token": rng.normal(size=(1, 1, dim)),
        "pos_embed": rng.normal(size=(1, 1 + grid * grid, dim)),
        "norm.weight": 1 + 0.1 * rng.normal(size=(dim,)),
        "norm.bias": 0.1 * rng.normal(size=(dim,)),
        "head.weight": rng.normal(size=(1000, dim)),  # skipped on import
        "head.bias": rng.normal(size=(1000,)),
    }
    for i in range(depth):
        k = f"blocks.{i}."
        for name, shape in (
            ("norm1", (dim,)),
            ("norm2", (dim,)),
        ):
            sd[k + name + ".weight"] = 1 + 0.1 * rng.normal(size=shape)
            sd[k + name + ".bias"] = 0.1 * rng.normal(size=shape)
        for name, out_f, in_f in (
            ("attn.qkv", 3 * dim, dim),
            ("attn.proj", dim, dim),
            ("mlp.fc1", 4 * dim, dim),
            ("mlp.fc2", dim, 4 * dim),
        ):
            sd[k + name + ".weight"] = rng.normal(size=(out_f, in_f)) / np.sqrt(in_f)
            sd[k + name + ".bias"] = 0.1 * rng.normal(size=(out_f,))
    return {k: v.astype(np.float32) for k, v in sd.items()}


def test_timm_safetensors_import_matches_timm_forward_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    sd = _random_timm_state_dict(rng, depth=2, dim=16, patch=4, grid=4)
    path = str(tmp_path / "vit_tiny.safetensors")
    save_file(sd, path)

    encoder = _tiny_encoder()
    template = _abstract_params(encoder, (1, 16, 16, 3))
    params = timm_import.load_encoder(path, template)
    chex.assert_trees_all_equal_shapes(params, template)

    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    ours = encoder.apply({"params": params}, images)
    theirs = timm_reference_forward(sd, images.transpose(0, 3, 1, 2), depth=2, heads=2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

    back = timm_import.flax_to_timm(params)
    assert set(back) == set(sd) - {"head.weight", "head.bias"}
    for key, value in back.items():
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    timm_import.save_encoder(str(tmp_path / "again.safetensors"), params)
    chex.assert_trees_all_equal(
        timm_import.load_encoder(str(tmp_path / "again.safetensors"), template), params
    )


def test_timm_import_errors_name_keys_and_shapes(tmp_path):
    rng = np.random.default_rng(1)
    sd = _random_timm_state_dict(rng, depth=2, dim=16, patch=4, grid=4)
    template = _abstract_params(_tiny_encoder(), (1, 16, 16, 3))
    broken = dict(sd)
    del broken["blocks.1.mlp.fc2.bias"]
    broken["blocks.0.attn.qkv.weight"] = broken["blocks.0.attn.qkv.weight"][:, :8]
    broken["blocks.2.norm1.weight"] = np.ones(16, np.float32)
    with pytest.raises(ValueError) as info:
        timm_import.timm_to_flax(broken, template)
    message = str(info.value)
    assert "missing keys ['blocks.1.mlp.fc2.bias']" in message
    assert "unexpected keys ['blocks.2.norm1.weight']" in message
    assert "blocks.0.attn.qkv.weight: shape (8, 48)" in message


def test_pos_embed_interpolation_keeps_class_token_and_resizes_grid(tmp_path):
    rng = np.random.default_rng(2)
    sd = _random_timm_state_dict(rng, depth=1, dim=8, patch=4, grid=4)
    # a linear ramp over the grid stays a linear ramp under bilinear resizing
    ramp = np.add.outer(np.arange(4.0), 2 * np.arange(4.0))[..., None] * np.ones(8)
    sd["pos_embed"][0, 1:] = ramp.reshape(16, 8)
    template = _abstract_params(_tiny_encoder(dim=8, depth=1), (1, 32, 32, 3))  # 8x8 grid
    assert template["pos_embed"].shape == (1, 65, 8)
    for method in ("bilinear", "bicubic"):
        params = timm_import.timm_to_flax(sd, template, pos_embed_method=method)
        pos = params["pos_embed"]
        np.testing.assert_array_equal(pos[0, 0], sd["pos_embed"][0, 0])  # class token kept
        grid = pos[0, 1:].reshape(8, 8, 8)[..., 0]
        if method == "bilinear":  # interior of the resized ramp: slope halves per new pixel
            np.testing.assert_allclose(np.diff(grid[2:6, 3]), 0.5, atol=1e-5)
            np.testing.assert_allclose(np.diff(grid[3, 2:6]), 1.0, atol=1e-5)
    same = timm_import.interpolate_pos_embed(sd["pos_embed"], 16)
    np.testing.assert_array_equal(same, sd["pos_embed"])


def test_multiview_folding_equals_encoder_per_view():
    config = glitch_config.get_config("tiny")
    model = model_lib.make_model(config, 22)
    images = jax.random.normal(jax.random.key(0), (3, *model_lib.input_shape(config)))
    params = jax.jit(model.init)(jax.random.key(1), images)["params"]
    out = jax.jit(model.apply)({"params": params}, images)
    encoder = model_lib.make_encoder(config)
    encode = jax.jit(encoder.apply)
    per_view = jnp.stack(
        [encode({"params": params["encoder"]}, images[:, v]) for v in range(4)], axis=1
    )  # [B, V, D]
    fusion = model_lib.CrossAttentionFusion(config.model.fusion_heads, True)
    fused, weights = fusion.apply({"params": params["fusion"]}, per_view)
    head = model_lib.MLPHead(22, config.model.head_hidden)
    logits = head.apply({"params": params["head"]}, fused, deterministic=True)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["view_weights"], weights, rtol=1e-6)
    # each example is independent of the others in the (folded) batch
    alone = jax.jit(model.apply)({"params": params}, images[1:2])
    np.testing.assert_allclose(alone["logits"], out["logits"][1:2], rtol=1e-5, atol=1e-5)


def test_fusion_weights_are_the_attention_softmax():
    fusion = model_lib.CrossAttentionFusion(num_heads=2, view_embedding=False)
    tokens = jax.random.normal(jax.random.key(0), (5, 4, 8))
    params = jax.jit(fusion.init)(jax.random.key(1), tokens)["params"]
    fused, weights = fusion.apply({"params": params}, tokens)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    # manual: per head softmax(q . k / sqrt(d)), averaged over heads
    kv = model_lib.LayerNorm().apply({"params": params["norm_kv"]}, tokens)
    q = (params["query"] @ params["q"]["kernel"] + params["q"]["bias"]).reshape(2, 4)
    k = (kv @ params["k"]["kernel"] + params["k"]["bias"]).reshape(5, 4, 2, 4)
    logits = jnp.einsum("hd,bvhd->bhv", q, k) / 2.0
    np.testing.assert_allclose(weights, jax.nn.softmax(logits, -1).mean(1), rtol=1e-5)
    # permuting the views permutes the weights and leaves the fused vector unchanged
    perm = jnp.array([2, 0, 3, 1])
    fused_p, weights_p = fusion.apply({"params": params}, tokens[:, perm])
    np.testing.assert_allclose(weights_p, weights[:, perm], rtol=1e-5)
    np.testing.assert_allclose(fused_p, fused, rtol=1e-4, atol=1e-5)


def test_cnn_baseline_merged_view_and_bf16():
    config = glitch_config.get_config("tiny")
    config.model.name = "cnn"
    config.model.dtype = "bfloat16"
    model = model_lib.make_model(config, 22)
    images = jnp.arange(2 * 4 * 16 * 16 * 3, dtype=jnp.float32).reshape(2, 4, 16, 16, 3)
    merged = model_lib.merge_views(images)
    np.testing.assert_array_equal(merged[:, :16, 16:], images[:, 1])  # view 1 top right
    np.testing.assert_array_equal(merged[:, 16:, :16], images[:, 2])  # view 2 bottom left
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    out = model.apply({"params": params}, images)
    assert out["logits"].dtype == jnp.float32 and out["logits"].shape == (2, 22)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_vit_bf16_close_to_fp32():
    encoder32 = _tiny_encoder()
    encoder16 = _tiny_encoder(dtype=jnp.bfloat16)
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params = jax.jit(encoder32.init)(jax.random.key(1), images)["params"]
    a = jax.jit(encoder32.apply)({"params": params}, images)
    b = jax.jit(encoder16.apply)({"params": params}, images).astype(jnp.float32)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.1)


def test_model_refuses_channels_first_batch_naming_the_layout():
    # A timm / PyTorch batch is NCHW; ours is NHWC. The patch-size check alone would say
    # "image size 3x224 is not a multiple of patch 16", which does not name the problem.
    single = glitch_config.get_config("vit_b16_single")
    for model, shape, layout in (
        (model_lib.make_encoder(single), (2, 3, 224, 224), "[B, S, S, 3]"),
        (model_lib.make_model(single, 22), (2, 3, 224, 224), "[B, S, S, 3]"),
        (
            model_lib.make_model(glitch_config.get_config("paper"), 22),
            (2, 4, 3, 224, 224),
            "[B, V, S, S, 3]",
        ),
    ):
        with pytest.raises(ValueError) as info:
            _abstract_params(model, shape)
        message = str(info.value)
        assert f"expected NHWC {layout}" in message and "channels-first" in message, message
        assert "multiple of patch" not in message
    # The suggested transpose is the right one: it makes the same batch acceptable.
    nchw = np.zeros((2, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"images\.transpose\(0, 2, 3, 1\)"):
        model_lib.check_image_layout(nchw.shape)
    model_lib.check_image_layout(nchw.transpose(0, 2, 3, 1).shape)


def test_timm_import_refuses_channels_first_template_naming_the_layout():
    encoder = model_lib.make_encoder(glitch_config.get_config("paper"))
    with pytest.raises(ValueError) as info:
        timm_import.encoder_template(encoder, (1, 3, 224, 224))
    message = str(info.value)
    assert "expected NHWC [B, S, S, 3]" in message and "channels-first" in message, message
    assert "multiple of patch" not in message
    # The NHWC batch gives the target that a timm ViT-B/16 state dict imports into.
    template = timm_import.encoder_template(encoder, (1, 224, 224, 3))
    assert _count(template) == VIT_B16_ENCODER_PARAMS
    assert template["pos_embed"].shape == (1, 197, 768)


def test_gelu_exact_is_erf_gelu_and_its_gradient():
    """The erf form (cheaper on XLA CPU than jax.nn.gelu's erfc) is still exact GELU: values
    against scipy's erf in float64, the gradient against Phi(x) + x phi(x), and jax.nn.gelu."""
    x = np.linspace(-8.0, 8.0, 4001).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + erf(x64 / np.sqrt(2)))
    got = jax.jit(model_lib.gelu_exact)(x)
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(got, jax.nn.gelu(x, approximate=False), atol=2e-6)
    grad = jax.jit(jax.vmap(jax.grad(model_lib.gelu_exact)))(x)
    cdf, pdf = 0.5 * (1 + erf(x64 / np.sqrt(2))), np.exp(-(x64**2) / 2) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(grad, cdf + x64 * pdf, atol=2e-6, rtol=1e-5)
