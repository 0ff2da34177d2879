"""`jaxlab bench` (`make bench`): step time, compile time, FLOPs, memory and MFU of every task's
train step.

`jaxlab bench --out=runs/benchmark.json [--tasks=example] [--variant=demo]`

First the machine's achievable peak is measured: a square float32 and bfloat16 matmul on every
local device at once, giving TFLOP/s per device: the median of `MATMUL_REPEATS` timed runs, with
the fastest, the slowest and the relative spread reported beside it (a 1024^2 matmul on a shared
2-core CPU moved between 92 and 218 GFLOP/s from run to run; 2048^2 and a median are steadier).
Then, for each task in `TASKS`, its config `<file>:<variant>` is loaded, the mesh built, and the
task's `benchmark_setup(config, mesh) -> (step_fn, state, batch, extras)` called. The step is
lowered and compiled (timed separately), its FLOPs and memory read from XLA's analyses, and
`--steps` steps timed after `--warmup` steps, with one host sync at the end of the timed window.

MFU = total FLOPs per step * steps/s / (device count * measured peak per device), with the bfloat16
peak when `config.model.dtype` is bfloat16, else the float32 one. The peak is the measured matmul
rate, not a vendor number, so on CPU (and with fake CPU devices sharing cores) MFU only says how
close the step comes to this machine's own matmul speed. XLA counts FLOPs per device (of the
partitioned program); `flops_per_step` is that times the number of devices, so replicated work
(e.g. the optimizer update) counts once per device, as it runs.

A persistent compilation cache is on (`jaxlab.core.compile_cache`; `JAXLAB_NO_COMPILE_CACHE=1`
turns it off), so a second run loads its executables instead of compiling them; `compile_time_s`
is then the cache load time.

Prints one table and writes every number as JSON to `--out`. A task that fails is reported, the
others still run, and the exit status is non-zero.

`jaxlab bench --input_pipeline [--input_tasks=glitch,...] [--input_seconds=20]` measures the train
iterators instead (records/s with worker processes against what one H100 consumes; see
`jaxlab/cli/bench_input.py`) and writes them to `--out` (default runs/benchmark_input.json).
"""

import json
import pathlib
import resource
import statistics
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlab.cli import bench_input
from jaxlab.cli.flags import define_flag
from jaxlab.core import compile_cache, loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.config import load_config
from jaxlab.core.task import TASKS, import_task

MATMUL_REPEATS = 9  # timed matmul runs per dtype; the median is reported, with the spread
MATMUL_DTYPES = ("float32", "bfloat16")
_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}

DEFAULT_OUT = "runs/benchmark.json"
DEFAULT_INPUT_OUT = "runs/benchmark_input.json"
# Through define_flag: `export` and `predict` define --out too when they ran first in-process.
_OUT = define_flag(flags.DEFINE_string, "out", DEFAULT_OUT, "Where to write the JSON report.")
_TASKS = flags.DEFINE_list("tasks", None, f"Subset of tasks (default: all of {list(TASKS)}).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per task.", lower_bound=1)
_WARMUP = flags.DEFINE_integer(
    "warmup", 3, "Untimed steps before the timed ones (at least 1).", lower_bound=1
)
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size",
    None,
    "Side of the peak-FLOPs matmul (default: 8192 on GPU/TPU, 2048 on CPU).",
    lower_bound=1,
)
_VARIANT = flags.DEFINE_string("variant", "demo", "Config variant of every task (X:V).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Override config.train.global_batch_size (e.g. paper configs on CPU)."
)
_INPUT_PIPELINE = flags.DEFINE_bool(
    "input_pipeline",
    False,
    "Measure the train input pipelines (records/s, workers, memory) against an H100's demand "
    "instead of the train steps; options --input_tasks, --input_seconds, --input_workers.",
)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only",
    False,
    "Lower and compile only: FLOPs and XLA's memory plan without running a step, to find the "
    "largest batch that fits quickly (step time, MFU and sampling are left out).",
)


def device_info() -> dict[str, Any]:
    """Platform, device kind and counts of this JAX runtime."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
    }


def default_matmul_size(platform: str) -> int:
    """A matmul big enough to reach peak (8192^2 bf16: ~1 ms on an H100), small enough for a CPU
    (2048^2: ~0.1 s on 2 cores)."""
    return 2048 if platform == "cpu" else 8192


def matmul_tflops(size: int, dtype: str, devices: list[Any], repeats: int = MATMUL_REPEATS) -> dict:
    """Achieved TFLOP/s per device of a [size, size] @ [size, size] matmul on all `devices` at once.

    Each device multiplies its own pair of matrices (a batch dimension sharded over the devices),
    so devices that share hardware (fake CPU devices) share it here as they do in the train step.
    Counts 2 * size**3 FLOPs per device and run. Returns the median rate over `repeats` timed runs
    (`tflops_per_device`, the MFU denominator), the fastest and slowest run's rates, and
    `relative_spread` = (max - min) / median of the rates: a spread above ~0.3 says the machine
    was busy and MFU figures of the same run carry that uncertainty.
    """
    mesh = Mesh(np.asarray(devices), ("devices",))
    sharding = NamedSharding(mesh, PartitionSpec("devices"))
    shape = (len(devices), size, size)
    make = jax.jit(
        lambda key: jax.random.normal(key, shape, jnp.dtype(dtype)), out_shardings=sharding
    )
    a, b = make(jax.random.key(0)), make(jax.random.key(1))
    matmul = jax.jit(jnp.matmul, out_shardings=sharding)
    jax.block_until_ready(matmul(a, b))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    rates = [2 * size**3 / t / 1e12 for t in times]
    median = statistics.median(rates)
    return {
        "tflops_per_device": median,
        "tflops_min": min(rates),
        "tflops_max": max(rates),
        "relative_spread": (max(rates) - min(rates)) / median,
        "median_time_ms": 1e3 * statistics.median(times),
        "repeats": repeats,
    }


def machine_peak(size: int) -> dict[str, Any]:
    """Measured matmul TFLOP/s per device for each dtype in `MATMUL_DTYPES`."""
    devices = jax.local_devices()
    peak: dict[str, Any] = {"size": size, "devices_measured": len(devices)}
    for dtype in MATMUL_DTYPES:
        logging.info("Peak: %dx%d %s matmul on %d devices", size, size, dtype, len(devices))
        peak[dtype] = matmul_tflops(size, dtype, devices)
    peak["note"] = (
        "Measured with JAX's default matmul precision; MFU is relative to this measured rate, "
        "not to a vendor peak (on CPU especially)."
    )
    return peak


def flops_from_cost_analysis(cost: Any) -> float | None:
    """The "flops" of `compiled.cost_analysis()`: a dict, or a list of dicts in some versions."""
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost:
        return None
    flops = cost.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def compiled_memory(compiled: Any) -> dict[str, int | None]:
    """Argument/output/temp/alias/code sizes in bytes from `compiled.memory_analysis()`."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not implemented on every backend
        stats = None
    names = ("argument", "output", "temp", "alias", "generated_code")
    return {
        f"{name}_bytes": (getattr(stats, f"{name}_size_in_bytes", None) if stats else None)
        for name in names
    }


def host_peak_rss_bytes() -> int:
    """Peak resident memory of this process (the only peak there is on CPU, where device memory
    is host memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first local device since the process started; None on CPU."""
    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def jit_cache_size(step_fn: Any) -> int | None:
    """Number of executables in the jit dispatch cache, when this JAX version exposes it."""
    cache_size = getattr(step_fn, "_cache_size", None)
    return cache_size() if callable(cache_size) else None


def time_steps(step_fn: Any, state: Any, batch: Any, warmup: int, steps: int) -> float:
    """Seconds per step over `steps` steps after `warmup` ones; no host transfer in the window.

    Dispatch runs at most two steps ahead (`loop.StepThrottle`), as in the train loops.

    The first warmup call puts the executable compiled by `.lower().compile()` into the jit cache;
    the cache must not grow after it, or the step's output state does not match its input (shape,
    dtype or sharding) and a training loop would recompile.
    """
    state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    cache_size = jit_cache_size(step_fn)
    for _ in range(warmup - 1):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready((state, metrics))
    throttle = loop.StepThrottle()
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
        throttle(metrics)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    if cache_size is not None and jit_cache_size(step_fn) != cache_size:
        raise RuntimeError(
            f"The step recompiled during the benchmark (jit cache {cache_size} -> "
            f"{jit_cache_size(step_fn)}): its output state differs from its input in shape, "
            "dtype or sharding."
        )
    return seconds / steps


def model_dtype(config: ml_collections.ConfigDict) -> str:
    """Which measured peak MFU uses: bfloat16 when `config.model.dtype` is, else float32."""
    model = config.get("model")
    dtype = model.get("dtype") if model is not None else None
    return "bfloat16" if dtype is not None and jnp.dtype(dtype) == jnp.bfloat16 else "float32"


def mfu(
    flops_per_step: float | None, steps_per_sec: float, peak_tflops: float, num_devices: int
) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over `num_devices` * the per-device peak."""
    if flops_per_step is None:
        return None
    return flops_per_step * steps_per_sec / (num_devices * peak_tflops * 1e12)


def task_extras(extras: dict[str, float], step_s: float) -> dict[str, float]:
    """A task's own numbers: `<what>_per_step` counts also become `<what>_per_sec` rates.

    `benchmark_setup` may return a fourth element, e.g. {"events_per_step": 73,
    "real_tokens_per_step": 1500, "padding_efficiency": 0.97}, for batches whose example count
    is not `global_batch_size` (packed sequences).
    """
    out = dict(extras)
    for key, value in extras.items():
        if key.endswith("_per_step"):
            out[key.removesuffix("_per_step") + "_per_sec"] = float(value) / step_s
    return out


def benchmark_task(
    config_spec: str, peak: dict[str, Any], warmup: int, steps: int, compile_only: bool = False
) -> dict:
    """Every measurement of one task's train step; see the module docstring."""
    config = load_config(config_spec)
    if _BATCH_SIZE.value:
        config.train.global_batch_size = _BATCH_SIZE.value
    mesh = mesh_lib.make_mesh(config.mesh)
    start = time.perf_counter()
    task = import_task(config, "steps")
    step_fn, state, batch, extras = task.benchmark_setup(config, mesh)
    sampling = getattr(task, "benchmark_sampling", None)
    if callable(sampling) and not compile_only:  # generative tasks: inference speed
        extras = {**extras, **sampling(config, mesh)}
    jax.block_until_ready((state, batch))
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    flops_per_device = flops_from_cost_analysis(compiled.cost_analysis())
    flops = flops_per_device * mesh.size if flops_per_device is not None else None
    dtype = model_dtype(config)
    batch_size = config.train.global_batch_size
    memory = {
        **compiled_memory(compiled),
        "device_peak_bytes_in_use": device_peak_bytes(),
        "host_peak_rss_bytes": host_peak_rss_bytes(),
    }
    if compile_only:
        step = {"step_time_ms": None, "steps_per_sec": None, "examples_per_sec": None, "mfu": None}
    else:
        step_s = time_steps(step_fn, state, batch, warmup, steps)
        memory["device_peak_bytes_in_use"] = device_peak_bytes()
        memory["host_peak_rss_bytes"] = host_peak_rss_bytes()
        step = {
            **task_extras(extras, step_s),
            "step_time_ms": 1e3 * step_s,
            "steps_per_sec": 1 / step_s,
            "examples_per_sec": batch_size / step_s,
            "mfu": mfu(flops, 1 / step_s, peak[dtype]["tflops_per_device"], mesh.size),
        }
    return {
        **step,
        "config": config_spec,
        "task": config.task,
        "mesh": dict(mesh.shape),
        "global_batch_size": batch_size,
        "model_dtype": dtype,
        "setup_time_s": setup_s,
        "lower_time_s": lower_s,
        "compile_time_s": compile_s,
        "flops_per_step_per_device": flops_per_device,
        "flops_per_step": flops,
        "memory": memory,
        "mfu_peak": dtype,
        "mfu_peak_tflops_per_device": peak[dtype]["tflops_per_device"],
    }


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def report_table(report: dict[str, Any]) -> str:
    """The report as a readable text table."""
    dev, peak = report["device"], report["matmul_peak"]
    lines = [
        f"{dev['device_count']} x {dev['device_kind']} ({dev['platform']}); measured matmul peak "
        f"{peak['size']}^2 per device: "
        + ", ".join(
            f"{d} {peak[d]['tflops_per_device']:.3g} TFLOP/s (median of {peak[d]['repeats']}, "
            f"{peak[d]['tflops_min']:.3g}-{peak[d]['tflops_max']:.3g})"
            for d in MATMUL_DTYPES
        ),
    ]
    header = (
        f"{'task':<12} {'lower s':>7} {'compile s':>9} {'step ms':>9} {'steps/s':>9} {'ex/s':>10} "
        f"{'GFLOP/step':>10} {'MFU':>7} {'peak':>5} {'temp MB':>8} {'dev peak MB':>11} "
        f"{'RSS MB':>8}"
    )
    lines += [header, "-" * len(header)]
    for name, entry in report["tasks"].items():
        if "error" in entry:
            lines.append(f"{name:<12} FAILED: {entry['error']}")
            continue
        memory = entry["memory"]
        lines.append(
            f"{name:<12} {entry['lower_time_s']:>7.2f} {entry['compile_time_s']:>9.2f} "
            f"{_fmt(entry['step_time_ms'], '>9.3f')} {_fmt(entry['steps_per_sec'], '>9.1f')} "
            f"{_fmt(entry['examples_per_sec'], '>10.1f')} "
            f"{_fmt(entry['flops_per_step'], '>10.4g', 1e9)} "
            f"{_fmt(entry['mfu'], '>7.2%')} {_SHORT_DTYPE[entry['mfu_peak']]:>5} "
            f"{_fmt(memory['temp_bytes'], '>8.1f', 2**20)} "
            f"{_fmt(memory['device_peak_bytes_in_use'], '>11.1f', 2**20)} "
            f"{_fmt(memory['host_peak_rss_bytes'], '>8.0f', 2**20)}"
        )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    mesh_lib.maybe_initialize_distributed()
    loop.quiet_library_logs()
    compile_cache.enable()  # opt out with JAXLAB_NO_COMPILE_CACHE=1
    unknown = sorted(set(_TASKS.value or []) - set(TASKS))
    if unknown:
        raise app.UsageError(f"--tasks: unknown {unknown}; known: {sorted(TASKS)}.")
    info = device_info()
    if _INPUT_PIPELINE.value:
        main_input(info)
        return
    print(
        f"jaxlab bench: backend {info['platform']}, {info['device_count']} x "
        f"{info['device_kind']} ({info['process_count']} process(es))",
        flush=True,
    )
    peak = machine_peak(_MATMUL_SIZE.value or default_matmul_size(info["platform"]))
    settings = {
        "steps": _STEPS.value,
        "warmup": _WARMUP.value,
        "variant": _VARIANT.value,
        "batch_size": _BATCH_SIZE.value,
        "compile_only": _COMPILE_ONLY.value,
    }
    report = {"device": info, "settings": settings, "matmul_peak": peak, "tasks": {}}
    for name in TASKS:
        config_file = name
        if _TASKS.value is None or name in _TASKS.value:
            logging.info("=== %s (%s:%s)", name, config_file, _VARIANT.value)
            try:
                spec = f"{config_file}:{_VARIANT.value}"
                report["tasks"][name] = benchmark_task(
                    spec, peak, _WARMUP.value, _STEPS.value, _COMPILE_ONLY.value
                )
            except Exception as e:  # report it, go on with the other tasks, exit non-zero
                logging.error("Task %s failed:\n%s", name, traceback.format_exc())
                report["tasks"][name] = {"error": f"{type(e).__name__}: {e}"}
    if jax.process_index() == 0:
        out = _OUT.value or DEFAULT_OUT
        write_json(report, out)
        print("\n" + report_table(report), flush=True)
        logging.info("Wrote %s", out)
    failed = [name for name, entry in report["tasks"].items() if "error" in entry]
    if failed:
        sys.exit(
            f"Benchmark failed for task(s) {failed}; see the errors above and in "
            f"{_OUT.value or DEFAULT_OUT}."
        )


def main_input(info: dict[str, Any]) -> None:
    """`--input_pipeline`: the input-pipeline report (bench_input.py), printed and as JSON."""
    out = _OUT.value if flags.FLAGS["out"].present else DEFAULT_INPUT_OUT
    report = {"device": info, "input": bench_input.run_input_bench()}
    if jax.process_index() == 0:
        write_json(report, out)
        print("\n" + bench_input.input_table(report["input"]), flush=True)
        logging.info("Wrote %s", out)
    failed = [name for name, entry in report["input"]["tasks"].items() if "error" in entry]
    if failed:
        sys.exit(f"bench --input_pipeline failed for {failed}; see the errors above and in {out}.")
