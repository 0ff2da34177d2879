"""One prepared GPU check: `scripts/gpu_check.sh` (or `python scripts/gpu_check.py`).

A script, not part of the package: it imports torch and timm (for the side-by-side entries), which
jaxlab itself never does.

On one H100/H200 it finishes in under 8 minutes (`--budget_s`, default 420 s: a section that
would start past the budget is recorded as skipped) and writes one JSON to `$OUT/gpu_check.json`
(`--out`), rewritten after every section so a killed run still leaves what it measured, and
prints a table. Sections, each one number set that the project's GPU claims rest on:

  matmul          peak TFLOP/s of a square matmul: fp32 (precision 'highest'), tf32, bf16
  vit_single_*    ViT-B/16 single view (glitch:vit_b16_single), fp32 and bf16, at the largest
                  batch that fits (`largest_batch`: XLA's compile-only memory plan at a probe
                  batch, extrapolated linearly, checked by compiling at the answer): step time,
                  images/s, MFU against the measured matmul peak and the vendor's dense peak
  timm_*          the same model in timm on the same GPU and batch (fp32; bf16 autocast = AMP),
                  AdamW, label smoothing, gradient clipping -> jaxlab / timm throughput ratio;
                  torch and timm are imported lazily and the entry says why when absent
  vit_multiview   ViT-B/16 over 4 x 224 views (glitch:vit_b16_multiview_bf16) at its largest batch
  attention       jaxlab's XLA path vs jax.nn XLA vs cuDNN: max |diff| in bf16 against a float32
                  reference, forward and forward + backward time, at ViT and long-sequence shapes
  weather_*       weather:paper (`seed_minimal_unet`, 1059 x 1799, batch 1) with and without
                  `model.remat` (recorded "not available" when the config has no such key):
                  step time and peak device memory; `steps.benchmark_sampling` for a 20-member,
                  20-step DPM-Solver++ ensemble
  vegetation_*    vegetation:paper / paper_bf16 at their largest batch
  neutrino        neutrino:paper: events/s, pulse-token efficiency
  portable_predict  each task's bundle StableHLO predict (`jaxlab.core.portable`: exported for
                  cpu, cuda and tpu, serialised and deserialised, as `jaxlab export` writes it)
                  beside the Python network it came from, on one predict batch (paper configs,
                  random parameters): time per call of each, their ratio, max |difference|

Each section runs in its own process on a GPU (`--isolate`, the default there), so peak memory
(`device.memory_stats()["peak_bytes_in_use"]`) belongs to that section alone and an out-of-memory
error or a hang (per-section timeout) costs one section, not the run.

`--smoke` runs every section end to end on CPU with tiny configs and sizes, in-process, writing
the same JSON keys (tests/core/test_gpu_check.py), so the script is known to work before GPU
time is spent on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.cli import bench
from jaxlab.core import compile_cache, portable
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.config import load_config
from jaxlab.core.task import import_task

# Dense (no sparsity) vendor peaks per GPU, TFLOP/s: H100 / H200 SXM data sheets.
VENDOR_PEAK_TFLOPS = {
    "H100": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
    "H200": {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4},
}
MEMORY_FRACTION = 0.85  # of the device's bytes_limit a planned step may use
SMOKE_MEMORY_BYTES = 256 * 2**20  # stand-in device memory on CPU (no memory_stats there)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything that differs between a GPU run and `--smoke`."""

    smoke: bool
    matmul: int
    probe_batch: int
    max_batch: int
    batch_multiple: int
    warmup: int
    steps: int
    attention_shapes: tuple[tuple[int, int, int, int], ...]  # (B, T, H, D)


GPU_SIZES = Sizes(False, 8192, 32, 1024, 8, 3, 10, ((32, 197, 12, 64), (4, 4096, 8, 64)))
# Smoke: max_batch = probe_batch, so each searched section compiles once (the search itself is
# tested on its own in tests/core/test_gpu_check.py).
SMOKE_SIZES = Sizes(True, 128, 2, 2, 2, 1, 2, ((2, 17, 2, 8), (1, 64, 2, 8)))


# --- configs -------------------------------------------------------------------------------------


def vit_config(sizes: Sizes, multiview: bool, dtype: str):
    """glitch ViT-B/16 (single view or 4 views); in smoke mode the tiny ViT."""
    if sizes.smoke:
        config = load_config("glitch:tiny")
        if not multiview:
            config.data.multi_view = False
            config.model.name = "vit"
    else:
        config = load_config("glitch:paper" if multiview else "glitch:vit_b16_single")
    config.model.dtype = dtype
    return config


def task_config(sizes: Sizes, spec: str):
    """`spec` on a GPU; the task's tiny variant in smoke mode (same code paths, small shapes)."""
    if not sizes.smoke:
        return load_config(spec)
    task, variant = spec.split(":")
    config = load_config(f"{task}:tiny")
    if variant.endswith("bf16"):
        config.model.dtype = "bfloat16"
    if task == "weather":
        # The seed's network (the paper's), one width level: 4 ConvBlocks instead of 6, the
        # same layers at a third less compile in each of the four weather sections.
        config.model.name = "seed_minimal_unet"
        config.model.channel_mults = (1,)
        config.diffusion.sample_steps = 2
        config.eval.bench_members = 2
        config.eval.bench_repeats = 1
    if task == "vegetation":
        # Compiling the unrolled ConvLSTM dominates a smoke run (3 layers x 10 frames, twice):
        # one layer over 3 frames takes the same code path at a fraction of the compile.
        config.model.hidden, config.model.norm_groups = (4,), 2
        config.data.num_context = 3
    return config


# --- measurement helpers -------------------------------------------------------------------------


def device_memory_limit(sizes: Sizes) -> int:
    """Bytes a step may plan to use: MEMORY_FRACTION of the device's limit (a stand-in on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if stats and stats.get("bytes_limit"):
        return int(MEMORY_FRACTION * stats["bytes_limit"])
    return SMOKE_MEMORY_BYTES


def planned_bytes(compiled: Any) -> int:
    """Argument + output + temporaries - aliased (donated) bytes of XLA's memory plan."""
    mem = bench.compiled_memory(compiled)
    return sum(mem[f"{n}_bytes"] or 0 for n in ("argument", "output", "temp")) - (
        mem["alias_bytes"] or 0
    )


def setup_and_compile(config, mesh):
    """`steps.benchmark_setup` at the config's batch, then lower + compile (timed)."""
    step_fn, state, batch, extras = import_task(config, "steps").benchmark_setup(config, mesh)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    return step_fn, state, batch, extras, compiled, time.perf_counter() - start


def largest_batch(
    config, mesh, sizes: Sizes, max_compiles: int = 4
) -> tuple[int, dict[str, Any], dict[int, tuple]]:
    """The largest batch (a multiple of `batch_multiple`, at most `max_batch`) whose compiled
    train step plans to fit in `device_memory_limit`, within `max_compiles` compilations.

    XLA's memory plan is compile-only (as `jaxlab bench --compile_only`). Compiles at
    `probe_batch` and twice that give a line, bytes = fixed + per_example * batch; its answer is
    compiled next, and from then on the answer comes from the line through the largest batch that
    fits and the smallest that does not (plans are only roughly linear: buffer reuse makes small
    batches flat). Returns the batch, the plan numbers and every compiled setup by batch, so the
    caller reuses the answer's executable.
    """
    limit = device_memory_limit(sizes)
    setups: dict[int, tuple] = {}
    plans: dict[int, int] = {}

    def compile_at(batch: int) -> None:
        config.train.global_batch_size = batch
        setups[batch] = setup_and_compile(config, mesh)
        plans[batch] = planned_bytes(setups[batch][-2])

    compile_at(sizes.probe_batch)
    if 2 * sizes.probe_batch <= sizes.max_batch:  # smoke: one probe, the batch is the probe's
        compile_at(2 * sizes.probe_batch)
    while 1 < len(plans) < max_compiles:
        fits = sorted(b for b in plans if plans[b] <= limit)
        over = sorted(b for b in plans if plans[b] > limit)
        low, high = (fits[-1], over[0]) if fits and over else sorted(plans)[-2:]
        if high == low:
            break
        per_example = max((plans[high] - plans[low]) / (high - low), 1.0)
        batch = low + int((limit - plans[low]) // per_example)
        batch = max(sizes.batch_multiple, min(sizes.max_batch, batch))
        batch -= batch % sizes.batch_multiple
        if batch in plans:
            break
        compile_at(batch)
    fits = [b for b in plans if plans[b] <= limit]
    batch = max(fits) if fits else min(plans)
    plan = {
        "memory_limit_bytes": limit,
        "probe_batch": sizes.probe_batch,
        "planned_bytes_by_batch": {str(b): plans[b] for b in sorted(plans)},
        "compile_s": sum(setup[-1] for setup in setups.values()),
        "predicted_batch": batch,
    }
    return batch, plan, {batch: setups[batch]}


def peak_device_bytes() -> int | None:
    return bench.device_peak_bytes()


def time_compiled(compiled, state, batch, warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` synced steps after `warmup` ones (state donated, rethreaded)."""
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return times


def vendor_peak(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peaks in VENDOR_PEAK_TFLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def step_entry(config, mesh, sizes: Sizes, matmul: dict | None, *, fit: bool) -> dict[str, Any]:
    """Step time, throughput, MFU and memory of one task config (at its largest batch if `fit`)."""
    entry: dict[str, Any] = {}
    probe = None
    if fit:
        batch_size, entry["batch_plan"], probes = largest_batch(config, mesh, sizes)
        probe = probes.get(batch_size)
        del probes
        config.train.global_batch_size = batch_size
    while True:
        setup, probe = probe or setup_and_compile(config, mesh), None
        step_fn, state, batch, extras, compiled, compile_s = setup
        planned = planned_bytes(compiled)
        too_big = planned > device_memory_limit(sizes)
        if not (fit and too_big and config.train.global_batch_size > sizes.batch_multiple):
            break
        smaller = int(config.train.global_batch_size * 0.85)
        config.train.global_batch_size = max(
            sizes.batch_multiple, smaller - smaller % sizes.batch_multiple
        )
        del step_fn, state, batch, compiled
    times = time_compiled(compiled, state, batch, sizes.warmup, sizes.steps)
    step_s = statistics.median(times)
    flops_dev = bench.flops_from_cost_analysis(compiled.cost_analysis())
    flops = flops_dev * mesh.size if flops_dev is not None else None
    dtype = bench.model_dtype(config)
    batch_size = config.train.global_batch_size
    entry.update(
        {
            "config_task": config.task,
            "model_dtype": dtype,
            "global_batch_size": batch_size,
            "compile_s": compile_s,
            "step_time_ms": 1e3 * step_s,
            "step_time_min_ms": 1e3 * min(times),
            "examples_per_sec": batch_size / step_s,
            "flops_per_step": flops,
            "planned_bytes": planned,
            "device_peak_bytes": peak_device_bytes(),
            "host_peak_rss_bytes": bench.host_peak_rss_bytes(),
            **bench.task_extras(extras, step_s),
        }
    )
    measured = (matmul or {}).get(dtype, {}).get("tflops_per_device")
    entry["mfu_vs_measured_peak"] = (
        bench.mfu(flops, 1 / step_s, measured, mesh.size) if measured else None
    )
    peak = vendor_peak(dtype)
    entry["mfu_vs_vendor_peak"] = bench.mfu(flops, 1 / step_s, peak, mesh.size) if peak else None
    return entry


# --- sections ------------------------------------------------------------------------------------


def section_matmul(sizes: Sizes, results: dict) -> dict[str, Any]:
    """fp32 at precision 'highest', tf32 ('tensorfloat32' precision on float32), bf16."""
    devices = jax.local_devices()[:1]
    out: dict[str, Any] = {"size": sizes.matmul}
    with jax.default_matmul_precision("highest"):
        out["float32"] = bench.matmul_tflops(sizes.matmul, "float32", devices)
    with jax.default_matmul_precision("tensorfloat32"):
        out["tf32"] = bench.matmul_tflops(sizes.matmul, "float32", devices)
    out["bfloat16"] = bench.matmul_tflops(sizes.matmul, "bfloat16", devices)
    for dtype in ("float32", "tf32", "bfloat16"):
        peak = vendor_peak(dtype)
        out[dtype]["fraction_of_vendor_peak"] = (
            out[dtype]["tflops_per_device"] / peak if peak else None
        )
    return out


def _mesh(config):
    """A mesh over one device with the config's axis names: the check is for one GPU."""
    config.mesh = [(name, 1) for name, _ in config.mesh]
    return mesh_lib.make_mesh(config.mesh, devices=jax.local_devices()[:1])


def vit_section(multiview: bool, dtype: str) -> Callable[[Sizes, dict], dict]:
    def run(sizes: Sizes, results: dict) -> dict[str, Any]:
        config = vit_config(sizes, multiview, dtype)
        return step_entry(config, _mesh(config), sizes, results.get("matmul"), fit=True)

    return run


def timm_section(dtype: str) -> Callable[[Sizes, dict], dict]:
    """timm's ViT-B/16 at the batch jaxlab's single-view ViT used, AMP for bf16."""

    def run(sizes: Sizes, results: dict) -> dict[str, Any]:
        ours = results.get(f"vit_single_{_short(dtype)}", {})
        batch = ours.get("global_batch_size") or sizes.probe_batch
        entry = timm_train_step_time(sizes, batch, dtype)
        if "examples_per_sec" in entry and ours.get("examples_per_sec"):
            entry["jaxlab_over_timm"] = ours["examples_per_sec"] / entry["examples_per_sec"]
        return entry

    return run


def import_torch_timm():
    """(torch, timm), imported only here: they are never dependencies of the package.

    A torchvision wheel built for another torch variant (e.g. CUDA torchvision beside a +cpu
    torch) fails at import registering fake kernels for its missing C++ ops; timm needs only
    its Python layers, so that registration is skipped and the import retried.
    """
    import torch  # noqa: PLC0415

    try:
        import timm  # noqa: PLC0415
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
            del sys.modules[name]
        stub = types.ModuleType("torchvision._meta_registrations")
        sys.modules["torchvision._meta_registrations"] = stub
        import timm  # noqa: PLC0415
    return torch, timm


def timm_train_step_time(sizes: Sizes, batch: int, dtype: str) -> dict[str, Any]:
    """One timm ViT train step (AdamW, label smoothing 0.1, clip 1.0), synced, median of steps."""
    try:
        torch, timm = import_torch_timm()
    except Exception as e:  # optional, benchmark-only dependencies
        return {"skipped": f"torch/timm not importable: {type(e).__name__}: {e}"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not sizes.smoke:
        return {"skipped": "torch sees no CUDA device"}
    torch.backends.cuda.matmul.allow_tf32 = jax.config.jax_default_matmul_precision != "highest"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    if sizes.smoke:
        model = timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=22
        )
        size = 32
    else:
        model = timm.create_model("vit_base_patch16_224", num_classes=22, pretrained=False)
        size = 224
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 22, (batch,), device=device)
    amp = dtype == "bfloat16"

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(sizes.warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(sizes.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "device": device,
        "amp_bf16": amp,
        "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "global_batch_size": batch,
        "step_time_ms": 1e3 * step_s,
        "step_time_min_ms": 1e3 * min(times),
        "examples_per_sec": batch / step_s,
        "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
    }


def section_attention(sizes: Sizes, results: dict) -> dict[str, Any]:
    """jaxlab's XLA path, jax.nn's XLA path and cuDNN in bf16 against a float32 reference."""
    from jaxlab.core import attention  # noqa: PLC0415

    kernels = {
        "jaxlab_xla": lambda q, k, v: attention.dot_product_attention(q, k, v),
        "jax_nn_xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
    }
    out: dict[str, Any] = {}
    reps = sizes.steps
    for shape in sizes.attention_shapes:
        key = "x".join(map(str, shape))
        q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.float32) for i in range(3))
        reference = jax.jit(kernels["jaxlab_xla"])(q, k, v)
        qb, kb, vb = (a.astype(jnp.bfloat16) for a in (q, k, v))
        entry: dict[str, Any] = {}
        for name, fn in kernels.items():
            try:
                fwd = jax.jit(fn)
                grad = jax.jit(
                    jax.grad(
                        lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2)
                    )
                )
                got = fwd(qb, kb, vb).astype(jnp.float32)
                entry[name] = {
                    "max_abs_diff_bf16_vs_fp32": float(jnp.max(jnp.abs(got - reference))),
                    "forward_ms": 1e3 * _median_time(fwd, qb, kb, vb, repeats=reps),
                    "forward_backward_ms": 1e3
                    * _median_time(grad, qb, kb, vb, repeats=sizes.steps),
                }
            except Exception as e:  # cuDNN off GPU, or an unsupported shape
                entry[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if "error" not in entry["cudnn"]:
            cudnn = jax.jit(kernels["cudnn"])(qb, kb, vb).astype(jnp.float32)
            xla = jax.jit(kernels["jaxlab_xla"])(qb, kb, vb).astype(jnp.float32)
            entry["max_abs_diff_cudnn_vs_xla_bf16"] = float(jnp.max(jnp.abs(cudnn - xla)))
        out[key] = entry
    return out


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def weather_section(remat: bool) -> Callable[[Sizes, dict], dict]:
    def run(sizes: Sizes, results: dict) -> dict[str, Any]:
        config = task_config(sizes, "weather:paper")
        if "remat" not in config.model:
            if remat:
                return {"skipped": "not available: the weather config has no model.remat option"}
        else:
            config.model.remat = remat
        config.train.global_batch_size = 1
        entry = step_entry(config, _mesh(config), sizes, results.get("matmul"), fit=False)
        entry["remat"] = remat if "remat" in config.model else "not available"
        entry["grid"] = list(config.data.shape)
        return entry

    return run


def section_weather_sampling(sizes: Sizes, results: dict) -> dict[str, Any]:
    """`steps.benchmark_sampling`: a 20-member, 20-step DPM-Solver++ ensemble at 1059 x 1799."""
    config = task_config(sizes, "weather:paper")
    if not sizes.smoke:
        config.eval.bench_members = 20
        config.eval.bench_repeats = 1
        config.diffusion.sample_steps = 20
        config.diffusion.sampler = "dpm_solver_pp"
    steps = import_task(config, "steps")
    start = time.perf_counter()
    entry = steps.benchmark_sampling(config, _mesh(config))
    entry["ensemble_s"] = entry["sampling_members"] / entry["sampling_members_per_sec"]
    entry["total_s_with_compile"] = time.perf_counter() - start
    entry["device_peak_bytes"] = peak_device_bytes()
    return entry


def task_section(spec: str, fit: bool) -> Callable[[Sizes, dict], dict]:
    def run(sizes: Sizes, results: dict) -> dict[str, Any]:
        config = task_config(sizes, spec)
        return step_entry(config, _mesh(config), sizes, results.get("matmul"), fit=fit)

    return run


# Task configs whose predict network `portable_predict` times; (config, network batch argument).
PORTABLE_TASKS = {
    "example": ("example:demo", None),
    "glitch": ("glitch:paper", None),
    "neutrino": ("neutrino:paper", None),
    "vegetation": ("vegetation:paper", None),
    "weather": ("weather:paper", 4),  # 4 members, one lead: the whole sampler loop, full grid
    "sales": ("sales:paper", None),
}


def random_inference_params(config, seed: int = 0):
    """Parameters of the task's inference shapes (`steps.inference_params`), N(0, 0.05^2):
    timing needs no trained weights, and nothing is compiled to make them."""
    steps = import_task(config, "steps")
    parts = steps.build(config, _mesh(config))
    inference = getattr(steps, "inference_params", lambda state: state.params)
    abstract = jax.eval_shape(inference, parts.abstract_state)
    gen = np.random.default_rng(seed)  # host numbers: no compile per parameter shape
    return jax.tree.map(
        lambda a: jnp.asarray((0.05 * gen.standard_normal(a.shape)).astype(a.dtype)), abstract
    )


def portable_entry(sizes: Sizes, name: str) -> dict[str, Any]:
    """One task: the artefact's and the Python network's time per predict call (median, synced)."""
    spec, batch = PORTABLE_TASKS[name]
    config = task_config(sizes, spec) if name != "example" or sizes.smoke else load_config(spec)
    network = import_task(config, "predict").network(config, batch)
    inference = random_inference_params(config)
    gen = np.random.default_rng(2)  # sales' forecaster: the network's extra parameter set
    extra = {
        key: jax.tree.map(
            lambda a: jnp.asarray((0.05 * gen.standard_normal(a.shape)).astype(a.dtype)), tree
        )
        for key, (_, tree) in network.extra_params.items()
    }
    params = portable.network_params(network, inference, extra)
    gen = np.random.default_rng(1)
    inputs = {
        k: jnp.asarray(
            gen.standard_normal(v.shape).astype(v.dtype)
            if jnp.issubdtype(v.dtype, jnp.floating)
            else np.zeros(v.shape, v.dtype)
        )
        for k, v in network.inputs.items()
    }
    start = time.perf_counter()
    blob = portable.export_network(network, inference, extra=extra).serialize()
    export_s = time.perf_counter() - start
    exported = jax.export.deserialize(blob)
    flat = portable.flat_params(network, params)
    python_fn, hlo_fn = jax.jit(network.fn), jax.jit(exported.call)
    python_out, hlo_out = python_fn(params, inputs), hlo_fn(flat, inputs)
    diff = max(
        float(jnp.max(jnp.abs(hlo_out[k].astype(jnp.float32) - python_out[k].astype(jnp.float32))))
        for k in python_out
    )
    python_s = _median_time(python_fn, params, inputs, repeats=sizes.steps)
    hlo_s = _median_time(hlo_fn, flat, inputs, repeats=sizes.steps)
    return {
        "config": spec if not sizes.smoke else f"{config.task} (smoke)",
        "inputs": {k: list(v.shape) for k, v in network.inputs.items()},
        "export_s": export_s,
        "artefact_bytes": len(blob),
        "platforms": list(exported.platforms),
        "python_ms": python_s * 1e3,
        "stablehlo_ms": hlo_s * 1e3,
        "stablehlo_over_python": hlo_s / python_s,
        "max_abs_diff": diff,
    }


def section_portable_predict(sizes: Sizes, results: dict) -> dict[str, Any]:
    """`portable_entry` for every task; one task's failure is recorded, not fatal."""
    out: dict[str, Any] = {}
    for name in PORTABLE_TASKS:
        try:
            out[name] = portable_entry(sizes, name)
        except Exception as e:
            traceback.print_exc()
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    return out


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}[dtype]


# Run order: cheap and most important first, so a budget cut drops the least.
SECTIONS: dict[str, Callable[[Sizes, dict], dict]] = {
    "matmul": section_matmul,
    "vit_single_bf16": vit_section(False, "bfloat16"),
    "timm_bf16": timm_section("bfloat16"),
    "vit_single_fp32": vit_section(False, "float32"),
    "timm_fp32": timm_section("float32"),
    "attention": section_attention,
    "portable_predict": section_portable_predict,
    "weather_remat": weather_section(True),
    "weather_no_remat": weather_section(False),
    "weather_sampling": section_weather_sampling,
    "vit_multiview_bf16": vit_section(True, "bfloat16"),
    "neutrino": task_section("neutrino:paper", fit=False),
    "vegetation_bf16": task_section("vegetation:paper_bf16", fit=True),
    "vegetation_fp32": task_section("vegetation:paper", fit=True),
}


# --- running -------------------------------------------------------------------------------------


def run_section(name: str, sizes: Sizes, results: dict) -> dict[str, Any]:
    """One section in this process; an exception becomes {"error": ...}."""
    start = time.perf_counter()
    try:
        entry = SECTIONS[name](sizes, results)
    except Exception as e:
        traceback.print_exc()
        entry = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    entry["section_s"] = time.perf_counter() - start
    return entry


def run_isolated(name: str, args: argparse.Namespace, results: dict, timeout: float) -> dict:
    """One section in a child process (clean peak memory, survives OOM and hangs)."""
    partial = pathlib.Path(args.out).with_suffix(f".{name}.json")
    command = [sys.executable, __file__, f"--section={name}", f"--out={partial}"]
    partial.write_text(json.dumps(results))  # earlier sections: the matmul peak, jaxlab's batch
    start = time.perf_counter()
    try:
        subprocess.run(command, timeout=timeout, check=False)
        entry = json.loads(partial.read_text()).get(name) or {"error": "no result written"}
    except subprocess.TimeoutExpired:
        entry = {"error": f"timed out after {timeout:.0f} s"}
    finally:
        partial.unlink(missing_ok=True)
    entry.setdefault("section_s", time.perf_counter() - start)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes on CPU, same JSON keys.")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json).")
    parser.add_argument(
        "--budget_s", type=float, default=None, help="Skip sections past this (420; smoke 3600)."
    )
    parser.add_argument("--sections", default=None, help="Comma-separated subset of sections.")
    parser.add_argument("--isolate", default=None, choices=("true", "false"))
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    if args.budget_s is None:  # the GPU run must end in 8 min; a smoke run must not skip
        args.budget_s = 3600.0 if args.smoke else 420.0
    args.out = args.out or str(pathlib.Path(os.environ.get("OUT", "runs")) / "gpu_check.json")
    compile_cache.enable()

    if args.section:  # child: results of earlier sections come in through the out file
        results = json.loads(pathlib.Path(args.out).read_text())
        results[args.section] = run_section(args.section, sizes, results)
        bench.write_json(results, args.out)
        return 0

    names = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; known: {list(SECTIONS)}")
    isolate = (args.isolate or ("false" if args.smoke else "true")) == "true"
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": bench.device_info(),
        "smoke": args.smoke,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "budget_s": args.budget_s,
        "sections": {},
    }
    results = report["sections"]
    for name in SECTIONS:
        if name not in names:
            continue
        elapsed = time.perf_counter() - started
        if elapsed > args.budget_s:
            results[name] = {"skipped": f"time budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"}
        elif isolate:
            results[name] = run_isolated(name, args, results, args.budget_s - elapsed + 60)
        else:
            results[name] = run_section(name, sizes, results)
        print(f"[gpu_check] {name}: {results[name].get('section_s', 0):.1f} s", flush=True)
        report["total_s"] = time.perf_counter() - started
        bench.write_json(report, args.out)
    print(report_table(report), flush=True)
    print(f"[gpu_check] wrote {args.out}", flush=True)
    return 0


def _cell(entry: dict, key: str, scale: float = 1.0, spec: str = ".1f") -> str:
    value = entry.get(key)
    return "-" if value is None else format(value / scale, spec)


def report_table(report: dict[str, Any]) -> str:
    """The JSON as a text table: one line per measured step, plus matmul and attention."""
    dev, sections = report["device"], report["sections"]
    lines = [
        f"{report['date']}  {dev['device_kind']} ({dev['platform']}), jax {dev['jax_version']}"
    ]
    matmul = sections.get("matmul", {})
    if "float32" in matmul:
        lines.append(
            f"matmul {matmul['size']}^2 TFLOP/s: "
            + ", ".join(
                f"{d} {matmul[d]['tflops_per_device']:.3g}" for d in ("float32", "tf32", "bfloat16")
            )
        )
    header = (
        f"{'section':<20} {'batch':>6} {'step ms':>9} {'ex/s':>9} {'MFU meas':>8} "
        f"{'MFU vend':>8} {'peak GB':>8} {'note':<30}"
    )
    lines += [header, "-" * len(header)]
    for name, entry in sections.items():
        if name in ("matmul", "attention", "portable_predict"):
            continue
        note = entry.get("error") or entry.get("skipped") or ""
        if "jaxlab_over_timm" in entry:
            note = f"jaxlab/timm {entry['jaxlab_over_timm']:.2f}x"
        if "ensemble_s" in entry:
            note = f"{entry['sampling_members']} members: {entry['ensemble_s']:.1f} s"
        lines.append(
            f"{name:<20} {_cell(entry, 'global_batch_size', spec='.0f'):>6} "
            f"{_cell(entry, 'step_time_ms'):>9} {_cell(entry, 'examples_per_sec'):>9} "
            f"{_cell(entry, 'mfu_vs_measured_peak', 0.01):>8} "
            f"{_cell(entry, 'mfu_vs_vendor_peak', 0.01):>8} "
            f"{_cell(entry, 'device_peak_bytes', 2**30, '.2f'):>8} {note[:60]:<30}"
        )
    for shape, entry in sections.get("attention", {}).items():
        if not isinstance(entry, dict):
            continue
        parts = []
        for kernel in ("jaxlab_xla", "jax_nn_xla", "cudnn"):
            k = entry.get(kernel, {})
            parts.append(
                f"{kernel} " + ("n/a" if "error" in k else f"{k['forward_backward_ms']:.2f} ms")
            )
        lines.append(f"attention {shape} fwd+bwd: " + ", ".join(parts))
    for task, entry in sections.get("portable_predict", {}).items():
        if not isinstance(entry, dict):
            continue
        if "error" in entry:
            lines.append(f"portable predict {task}: {entry['error'][:80]}")
            continue
        lines.append(
            f"portable predict {task}: python {entry['python_ms']:.2f} ms, StableHLO "
            f"{entry['stablehlo_ms']:.2f} ms ({entry['stablehlo_over_python']:.2f}x), "
            f"max |diff| {entry['max_abs_diff']:.2g}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
