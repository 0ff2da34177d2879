"""Bundles of random parameters with a task's StableHLO predict, for the portable-predict tests
(tests/core/test_portable.py, tests/sales/ and tests/weather/test_portable_predict.py)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from safetensors import numpy as safetensors_np

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import config as config_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import portable
from jaxlab.core import task as task_lib


def task_inputs(name, config, network, gen):
    """Plausible inputs for `network` (one predict batch) with the right dtypes and ranges."""
    if name == "neutrino":
        from jaxlab.neutrino import data_packing

        spec = data_packing.PackSpec.from_config(config)
        g = next(iter(network.inputs.values())).shape[0]
        with config.unlocked():
            config.train.global_batch_size = g
        batch = data_packing.model_inputs(data_packing.synthetic_batch(config, spec, 0))
        return {k: batch[k] for k in network.inputs}
    if name == "vegetation":
        from jaxlab.vegetation import steps

        batch = steps.random_batch(config, next(iter(network.inputs.values())).shape[0])
        return {k: batch[k] for k in network.inputs}
    inputs = {}
    for key, aval in network.inputs.items():
        if aval.dtype == np.uint32:  # weather's members' keys (key data)
            inputs[key] = gen.integers(0, 2**32, aval.shape, dtype=np.uint32)
        elif aval.dtype == np.int32:
            inputs[key] = gen.integers(0, config.diffusion.num_steps, aval.shape).astype(np.int32)
        else:
            inputs[key] = gen.normal(size=aval.shape).astype(aval.dtype)
    return inputs


def _random(abstract, gen):
    return jax.tree.map(lambda a: (0.2 * gen.standard_normal(a.shape)).astype(a.dtype), abstract)


def random_bundle(name, out, variant="tiny", batch=None, config=None):
    """(config, bundle path, network, params): a bundle of randomly initialised parameters of the
    task's `variant` config (or `config`) with its StableHLO predict; no training, no init
    compile. `batch`: `network`'s size argument(s), one or a tuple. `params` is the tree
    `network.fn` takes (`portable.network_params`); a network's extra parameter sets (sales'
    forecaster) are written as their bundle files."""
    config = config or config_lib.load_config(f"{name}:{variant}")
    steps = task_lib.import_task(config, "steps")
    predict_module = task_lib.import_task(config, "predict")
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    parts = steps.build(config, mesh)
    inference = getattr(steps, "inference_params", lambda s: s.params)
    gen = np.random.default_rng(1)
    params = _random(jax.eval_shape(inference, parts.abstract_state), gen)
    if name == "weather":  # a positive residual scale, as training computes it
        params["scale"]["std"] = np.abs(params["scale"]["std"]) + 0.5
    network = predict_module.network(config, *(batch if isinstance(batch, tuple) else (batch,)))
    os.makedirs(out, exist_ok=True)
    bundle_lib.write_params(out, params, {"task": config.task})
    extra = {}
    for key, (file, abstract) in network.extra_params.items():
        extra[key] = _random(abstract, gen)
        safetensors_np.save_file(bundle_lib.flatten_params(extra[key]), os.path.join(out, file))
    entry = portable.write(out, network, params, extra=extra)
    with open(os.path.join(out, bundle_lib.CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort())
    with open(os.path.join(out, bundle_lib.INFO_FILE), "w") as f:
        json.dump({"task": config.task, "checkpoint_step": 0, portable.INFO_KEY: entry}, f)
    return config, out, network, portable.network_params(network, params, extra)
