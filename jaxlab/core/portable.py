"""A bundle's portable predict: the task's inference network serialised with `jax.export`.

`jaxlab export` writes, beside the parameters, the network a task's `predict` runs (its
`predict.network(config)`: a pure `fn(params, inputs) -> outputs` and the input shapes of one
predict batch), lowered to StableHLO for cpu, cuda and tpu and serialised with
`jax.export.Exported.serialize()`:

    bundle/
      predict.stablehlo    the serialised `jax.export.Exported` (one module, three platforms)
      bundle.json          ... "stablehlo": {"file", "platforms", "params", "inputs", "outputs",
                           "jax_version", "calling_convention_version"}

The exported function takes two dicts and returns one:

    outputs = exported.call(params, inputs)
      params   {name: array}, exactly the tensors of `params.safetensors` ("encoder/kernel", ...);
               for a network that also needs another parameter file of the bundle (sales: the
               forecaster's), {"params": those tensors, key: {name: array} of that file}, as
               bundle.json["stablehlo"]["params"] ({key: file name}) lists them
      inputs   {name: array} with the shapes and dtypes listed in bundle.json["stablehlo"]["inputs"]
      outputs  {name: array} as listed in bundle.json["stablehlo"]["outputs"]

so plain JAX, safetensors and numpy run it without jaxlab (README: "Portable predict"). A task's
`predict` runs it (`use_artefact`, `load_callable`) when the bundle carries one: the task's code
still reads and writes its file formats, but the task's model is never built.

Shapes are static (the predict batch of the export); a caller pads the last batch, as the
Python path does. The platform is chosen when the artefact is called: the same file runs on a
CPU, a GPU or a TPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from safetensors import numpy as safetensors_np

from jaxlab.core import bundle_files

ARTEFACT_FILE = "predict.stablehlo"
PLATFORMS = ("cpu", "cuda", "tpu")
INFO_KEY = "stablehlo"
ENGINES = ("auto", "stablehlo", "python")


@dataclasses.dataclass(frozen=True)
class Network:
    """What a task's predict computes on the accelerator, in a form `jax.export` can lower.

    fn: (params tree, {name: array}) -> {name: array}; pure, deterministic (no dropout, any
      randomness arrives as an input).
    inputs: {name: jax.ShapeDtypeStruct}, one predict batch.
    extra_params: {key: (bundle file, abstract parameter tree)}: parameter sets predict needs
      beside the bundle's inference parameters, each a safetensors file of the bundle (sales:
      {"forecaster": ("forecaster_real.safetensors", ...)}). With any, `fn`'s params are
      {"params": the inference parameters, key: that set, ...} (`network_params`).
    """

    fn: Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]
    inputs: dict[str, jax.ShapeDtypeStruct]
    extra_params: dict[str, tuple[str, Any]] = dataclasses.field(default_factory=dict)


MAIN_PARAMS = "params"  # the inference parameters' key when a network has extra parameter sets


def network_params(network: Network, params: Any, extra: dict[str, Any] | None = None) -> Any:
    """The params tree `network.fn` takes: the inference parameters `params` alone, or with
    `network.extra_params` {"params": params, key: extra[key]} (default: the set's abstract
    tree, enough to lower)."""
    if not network.extra_params:
        return params
    extra = extra or {}
    sets = {key: extra.get(key, abstract) for key, (_, abstract) in network.extra_params.items()}
    return {MAIN_PARAMS: params, **sets}


def param_files(network: Network) -> str | dict[str, str]:
    """The bundle file(s) the artefact's params come from: "params.safetensors" or, with extra
    parameter sets, {"params": "params.safetensors", key: file}."""
    if not network.extra_params:
        return bundle_files.PARAMS_FILE
    files = {key: file for key, (file, _) in network.extra_params.items()}
    return {MAIN_PARAMS: bundle_files.PARAMS_FILE, **files}


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def leaf_names(tree: Any) -> list[str]:
    """The bundle's tensor names ("encoder/block_0/kernel") of `tree`'s leaves, in leaf order."""
    return [
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _flat(tree: Any) -> dict[str, Any]:
    return dict(zip(leaf_names(tree), jax.tree.leaves(tree), strict=True))


def _unflattener(abstract: Any) -> Callable[[dict[str, Any]], Any]:
    names, treedef = leaf_names(abstract), jax.tree.structure(abstract)
    return lambda flat: jax.tree.unflatten(treedef, [flat[n] for n in names])


def flat_params(network: Network, tree: Any) -> dict[str, Any]:
    """The artefact's first argument from the tree `network.fn` takes (`network_params`): the
    bundle's {name: array}, or one such dict per parameter set."""
    if not network.extra_params:
        return _flat(tree)
    return {key: _flat(value) for key, value in tree.items()}


def flat_fn(network: Network, params_abstract: Any) -> Callable:
    """`network.fn(params, inputs)` as `g(flat, inputs)`, `flat` as `flat_params` gives it."""
    if network.extra_params:
        sets = {key: _unflattener(value) for key, value in params_abstract.items()}

        def to_tree(flat):
            return {key: unflatten(flat[key]) for key, unflatten in sets.items()}

    else:
        to_tree = _unflattener(params_abstract)

    def g(flat: dict[str, Any], inputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return network.fn(to_tree(flat), inputs)

    return g


def export_network(
    network: Network,
    params: Any,
    platforms: tuple[str, ...] = PLATFORMS,
    extra: dict[str, Any] | None = None,
) -> jax.export.Exported:
    """`network.fn` lowered for `platforms` with the flat-params calling convention.

    `params` (the inference parameters) and `extra` (the extra parameter sets, default their
    abstract trees) may be arrays or ShapeDtypeStructs: only shapes and dtypes are used.
    """
    abstract = _abstract(network_params(network, params, extra))
    jitted = jax.jit(flat_fn(network, abstract))
    return jax.export.export(jitted, platforms=platforms)(
        flat_params(network, abstract), dict(network.inputs)
    )


def _spec(tree: Any) -> dict[str, dict[str, Any]]:
    """{"name": {"shape": [...], "dtype": "float32"}} for a dict of avals (nested names with /)."""
    return {
        name: {"shape": [int(d) for d in aval.shape], "dtype": str(aval.dtype)}
        for name, aval in zip(leaf_names(tree), jax.tree.leaves(tree), strict=True)
    }


def signature(
    exported: jax.export.Exported, files: str | dict[str, str] = bundle_files.PARAMS_FILE
) -> dict[str, Any]:
    """The artefact's description for bundle.json: platforms, parameter file(s) (`param_files`),
    inputs and outputs by name."""
    params_tree, inputs_tree = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0]
    outputs_tree = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    return {
        "file": ARTEFACT_FILE,
        "platforms": list(exported.platforms),
        "params": files,
        "num_param_tensors": len(jax.tree.leaves(params_tree)),
        "inputs": _spec(inputs_tree),
        "outputs": _spec(outputs_tree),
        "jax_version": jax.__version__,
        "calling_convention_version": int(exported.calling_convention_version),
    }


def write(
    out: str, network: Network, params: Any, platforms=PLATFORMS, extra=None
) -> dict[str, Any]:
    """Exports `network` and writes `out/predict.stablehlo`; returns its bundle.json entry."""
    exported = export_network(network, params, platforms, extra)
    with open(os.path.join(out, ARTEFACT_FILE), "wb") as f:
        f.write(exported.serialize())
    return signature(exported, param_files(network))


def has_artefact(path: str) -> bool:
    """A bundle whose bundle.json describes a StableHLO predict and which holds its file (a stale
    file left by an earlier export into the same folder does not count)."""
    if not (bundle_files.is_bundle(path) and os.path.isfile(os.path.join(path, ARTEFACT_FILE))):
        return False
    return INFO_KEY in bundle_files.read_info(path)


def load(path: str) -> jax.export.Exported:
    """The bundle's deserialised artefact (one clear error when it is missing or unreadable)."""
    file = os.path.join(path, ARTEFACT_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{file}: the bundle carries no StableHLO predict; re-export it with "
            "`jaxlab export --stablehlo`."
        )
    with open(file, "rb") as f:
        data = bytearray(f.read())
    try:
        return jax.export.deserialize(data)
    except Exception as e:  # a truncated file or one from an incompatible jax
        raise ValueError(f"{file}: not a readable jax.export artefact ({e}).") from e


def check_inputs(exported: jax.export.Exported, inputs: dict[str, Any], source: str) -> None:
    """One ValueError naming the first input whose name, shape or dtype the artefact rejects."""
    expected = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0][1]
    if sorted(inputs) != sorted(expected):
        raise ValueError(
            f"{source}: the StableHLO predict takes inputs {sorted(expected)}, "
            f"got {sorted(inputs)}."
        )
    for name, aval in expected.items():
        value = inputs[name]
        if tuple(np.shape(value)) != tuple(aval.shape) or np.dtype(value.dtype) != aval.dtype:
            raise ValueError(
                f"{source}: input {name!r} is {value.dtype}{list(np.shape(value))}; the "
                f"StableHLO predict expects {aval.dtype}{list(aval.shape)} (pad the last batch)."
            )


def _read_set(path: str, name: str, expected: dict[str, Any]) -> dict[str, jax.Array]:
    """The tensors of the bundle file `name`, checked against the artefact's avals."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: the bundle's StableHLO predict needs this file.")
    flat = safetensors_np.load_file(file)
    for key in sorted(set(flat) | set(expected)):
        aval = expected.get(key)
        value = flat.get(key)
        if (
            aval is None
            or value is None
            or (tuple(value.shape), np.dtype(value.dtype)) != (tuple(aval.shape), aval.dtype)
        ):
            raise ValueError(
                f"{file}: its tensors do not match {os.path.join(path, ARTEFACT_FILE)} (first "
                f"difference: {key!r})."
            )
    return {k: jax.device_put(v) for k, v in flat.items()}


def load_callable(path: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """inputs -> outputs running the bundle's artefact with its own parameter file(s)."""
    exported = load(path)
    files = bundle_files.read_info(path).get(INFO_KEY, {}).get("params", bundle_files.PARAMS_FILE)
    expected = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0][0]
    if isinstance(files, str):
        flat = _read_set(path, files, expected)
    elif sorted(files) != sorted(expected):
        raise ValueError(
            f"{os.path.join(path, bundle_files.INFO_FILE)}: stablehlo.params names parameter "
            f"sets {sorted(files)}; {os.path.join(path, ARTEFACT_FILE)} takes {sorted(expected)}."
        )
    else:
        flat = {key: _read_set(path, file, expected[key]) for key, file in files.items()}
    call = jax.jit(exported.call)

    def apply(inputs: dict[str, Any]) -> dict[str, Any]:
        check_inputs(exported, inputs, os.path.join(path, ARTEFACT_FILE))
        return call(flat, inputs)

    return apply


def input_batch(path: str) -> int:
    """The leading (batch) size of the artefact's inputs: the batch a caller pads to."""
    exported = load(path)
    inputs = jax.tree.unflatten(exported.in_tree, exported.in_avals)[0][1]
    return int(next(iter(inputs.values())).shape[0])


def use_artefact(model: str, engine: str) -> bool:
    """Whether a task's predict runs the bundle's StableHLO predict (the `engine` option).

    "auto": when `model` is a bundle that carries one; "stablehlo": always (one clear error when
    the bundle has none); "python": never (the task's jitted network).
    """
    if engine not in ENGINES:
        raise ValueError(f"predict option engine={engine!r}: expected one of {ENGINES}.")
    if engine == "stablehlo" and not has_artefact(model):
        raise FileNotFoundError(
            f"{os.path.join(model, ARTEFACT_FILE)}: predict option engine=stablehlo, but "
            "--model carries no StableHLO predict; re-export it with `jaxlab export --stablehlo`."
        )
    return engine != "python" and has_artefact(model)


def bundle_config(model: str, task: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(config.json, bundle.json) of a bundle, checked to hold a `task` model; no model code."""
    config = bundle_files.read_config(model)
    if config.get("task") != task:
        raise ValueError(f"{model} holds a {config.get('task')} model; this needs a {task} model.")
    return config, bundle_files.read_info(model)


def export_task_network(config: Any, params: Any, out: str) -> dict[str, Any]:
    """{"stablehlo": signature} after writing the artefact of `config.task`'s predict network
    into the bundle `out`; {} (logged) for a task whose predict.py has no `network(config)`."""
    name = f"{config.task}.predict"
    if importlib.util.find_spec(name) is None:
        logging.info("%s: no predict.py, so no StableHLO predict in the bundle.", config.task)
        return {}
    network = getattr(importlib.import_module(name), "network", None)
    if network is None:
        logging.info("%s has no network(config), so no StableHLO predict in the bundle.", name)
        return {}
    net = network(config)
    for key, (file, abstract) in net.extra_params.items():
        if not os.path.isfile(os.path.join(out, file)):
            logging.warning(
                "%s: the bundle has no %s (%s parameters), so no StableHLO predict.",
                name,
                file,
                key,
            )
            return {}
        _read_set(out, file, _flat(_abstract(abstract)))  # one clear error if it does not fit
    start = time.perf_counter()
    try:
        entry = write(out, net, params)
    except Exception as e:  # an optional artefact: say what failed and how to export without it
        raise RuntimeError(
            f"{name}.network: lowering the predict network for {', '.join(PLATFORMS)} failed "
            f"({type(e).__name__}: {e}); `jaxlab export --nostablehlo` writes the bundle "
            "without the StableHLO predict."
        ) from e
    logging.info(
        "StableHLO predict for %s written in %.1f s",
        ", ".join(PLATFORMS),
        time.perf_counter() - start,
    )
    return {INFO_KEY: entry}
