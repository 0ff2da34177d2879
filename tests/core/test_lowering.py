"""Every task's train step, eval step and predict network lower for CUDA and TPU on this CPU-only
machine (`jax.export`, from `jax.ShapeDtypeStruct`s: nothing is compiled or run).

Per-platform paths are chosen inside the lowered program (`lax.platform_dependent`), so the
module for ("cuda", "tpu") must not carry the CPU-only blocked im2col weight gradient of
`core.layers` (the private function `@blocked_im2col_weight_grad`) and the CPU module must.

Attention: no config selects `implementation="cudnn"` (cuDNN's fused attention needs cuDNN
present to lower); every transformer here (glitch's ViT, neutrino's encoders) is exported with
jaxlab's XLA attention, and the CUDA modules are checked to hold no cuDNN custom call.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import config as config_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import portable
from jaxlab.core import task as task_lib

ACCELERATORS = ("cuda", "tpu")
BLOCKED = "blocked_im2col_weight_grad"  # core.layers' CPU-only weight gradient
CUDNN = "cudnn"  # in any cuDNN custom call target (__cudnn$fmha..., __cudnn$conv...)


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(tuple(int(d) for d in shape), dtype)


def _abstract(tree):
    return jax.tree.map(lambda x: _sds(np.shape(x), x.dtype), tree)


def _batches(name, config, parts):
    """(train batch, eval batch, eval valid, extra eval args) as ShapeDtypeStructs."""
    tb, eb = config.train.global_batch_size, config.eval.global_batch_size
    if name == "example":
        f = config.data.num_features

        def batch(b):
            return {"x": _sds((b, f)), "y": _sds((b,)), "index": _sds((b,), jnp.int32)}

        return batch(tb), batch(eb), _sds((eb,), jnp.bool_), ()
    if name == "vegetation":
        from jaxlab.vegetation import model

        def batch(b):
            shapes = jax.eval_shape(lambda: model.dummy_batch(config, b))
            return {**shapes, "index": _sds((b,), jnp.int32)}

        return batch(tb), batch(eb), _sds((eb,), jnp.bool_), ()
    if name == "weather":

        def batch(b):
            grid = _sds((b, *parts.extras.grid_shape))
            return {"cond": grid, "target": grid, "lead": _sds((b,)), "hour": _sds((b,))} | {
                "index": _sds((b,), jnp.int32)
            }

        residual_std = _sds((parts.extras.grid_shape[-1],))
        return batch(tb), batch(eb), _sds((eb,), jnp.bool_), (residual_std,)
    if name == "glitch":
        from jaxlab.glitch import model

        def batch(b):
            image = _sds((b, *model.input_shape(config)))
            return {"image": image, "label": _sds((b,), jnp.int32), "index": _sds((b,), jnp.int32)}

        return batch(tb), batch(eb), _sds((eb,), jnp.bool_), ()
    if name == "sales":
        from jaxlab.sales import steps

        windows = _abstract(steps.random_windows(config))  # train.global_batch_size rows

        def batch(b):
            return {k: _sds((b, *v.shape[1:]), v.dtype) for k, v in windows.items()}

        key = jax.eval_shape(lambda: jax.random.key(0))
        return batch(tb), batch(eb), _sds((eb,), jnp.bool_), (key,)
    if name == "neutrino":
        from jaxlab.neutrino import model

        def batch(g):
            return jax.eval_shape(lambda: model.dummy_batch(parts.extras.spec, g))

        valid = _sds((eb, parts.extras.spec.events), jnp.bool_)
        return batch(tb), batch(eb), valid, ()
    raise AssertionError(name)


def _export(fn, args, platforms):
    return jax.export.export(fn, platforms=platforms)(*args)


def _lower_all(name, variant):
    config = config_lib.load_config(f"{name}:{variant}")
    steps = task_lib.import_task(config, "steps")
    predict = task_lib.import_task(config, "predict")
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    parts = steps.build(config, mesh)
    train_batch, eval_batch, valid, extra = _batches(name, config, parts)
    network = predict.network(config)
    inference = getattr(steps, "inference_params", lambda state: state.params)
    predict_params = jax.eval_shape(inference, parts.abstract_state)
    calls = {
        "train": (parts.train_step, (parts.abstract_state, train_batch)),
        # Weather evaluates its EMA parameters, which have the params' shapes.
        "eval": (parts.eval_step, (parts.abstract_state.params, eval_batch, valid, *extra)),
        # Sales' network also takes the forecaster's parameters (abstract: network_params).
        "predict": (
            jax.jit(network.fn),
            (portable.network_params(network, predict_params), network.inputs),
        ),
    }
    modules = {}
    for what, (fn, args) in calls.items():
        modules[what] = _export(fn, args, ACCELERATORS).mlir_module()
    modules["train_cpu"] = _export(parts.train_step, calls["train"][1], ("cpu",)).mlir_module()
    return config, modules


# Seconds to lower train + eval + predict for ("cuda", "tpu") and train for ("cpu",) on this
# project's 2-core CPU (most of it tracing, which barely depends on the shapes), each alone in a
# fresh process with its imports: example demo 5, sales 15, neutrino 17, weather 18, vegetation
# 20, glitch 26 (paper configs); all six in one process 50. make test-fast runs the example and
# weather, the task whose lowering differs per platform; make test runs all six.
CASES = [
    ("example", "demo"),  # the example task has no paper config; demo is its largest
    ("weather", "paper"),
    *[
        pytest.param(name, "paper", marks=pytest.mark.slow, id=f"{name}-paper")
        for name in ("vegetation", "glitch", "sales", "neutrino")
    ],
]


@pytest.mark.parametrize("name,variant", CASES)
def test_steps_and_predict_lower_for_cuda_and_tpu(name, variant):
    start = time.perf_counter()
    config, modules = _lower_all(name, variant)
    print(f"{name}:{variant} lowered in {time.perf_counter() - start:.1f} s")
    for what in ("train", "eval", "predict"):
        text = modules[what]
        assert "func.func public @main" in text, what
        assert BLOCKED not in text, f"{name} {what}: the CPU-only weight gradient in CUDA/TPU"
        assert CUDNN not in text.lower(), f"{name} {what}: a cuDNN custom call (XLA attention)"
    # The seed U-Net is the only network with core.layers' convolution.
    uses_blocked_conv = name == "weather" and config.model.name == "seed_minimal_unet"
    assert (BLOCKED in modules["train_cpu"]) == uses_blocked_conv
    if uses_blocked_conv:
        # The accelerators' weight gradient is XLA's own convolution.
        assert modules["train"].count("stablehlo.convolution") > modules["train_cpu"].count(
            "stablehlo.convolution"
        )
