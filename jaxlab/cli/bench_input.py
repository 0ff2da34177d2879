"""`jaxlab bench --input_pipeline`: does each task's train iterator keep an accelerator fed?

For every task in `--input_tasks` (default `INPUT_TASKS`) the `paper` config (`tiny` with
`--input_tiny`) is given synthetic data written by the task's own writers at the config's shapes
into a bench folder (`--input_workdir`; or the task's real data with `--input_data=TASK=DIR`, read
only), and the train iterator is built exactly as training builds it: the task's
`train.sources(config, workdir)`, so whatever caches and packing the task uses are measured too.
Then, per worker count (0 = in-process grain threads, 1, and N = `--input_workers`):

  records/s     after warm-up (every worker has delivered), records pulled over
                `--input_seconds` (events for neutrino, samples / windows / pairs otherwise);
  per core      records/s over the cores the readers can use: min(CPUs, workers), or
                min(CPUs, data.num_threads) in-process;
  /cpu-s        records per CPU-second of all readers (this process and its workers): one
                core's rate when it is not shared, steadier than wall clock on a busy machine;
  first batch   seconds from the iterator's creation to its first batch (workers starting);
  RSS           peak resident memory sampled every 50 ms: each worker's peak, or for the
                in-process reader the training process's growth while it reads.

The first batch and the memory are also measured on a dataset 4x larger (N and 4N records): a
reader that loads or indexes everything up front shows here, as both must not grow with N.

Demand: FLOPs per record from XLA's cost analysis of the same config's train step (the lowered
step of `steps.benchmark_setup`, at min(8, batch) records per step), and the records/s one H100
needs at `ASSUMED_MFU` of its 989 TFLOP/s bf16 dense peak: 40% for the large models, 10% for
models too small to reach it (`ASSUMED_MFU` says which). The report gives delivered / needed with
N workers here, and the same per-core rate extrapolated to `GPU_HOST_CORES` cores (stated as an
extrapolation, not a measurement).

Speeds measured on a shared machine are depressed by the other jobs; the CPU model (`lscpu`) and
count are recorded with the numbers.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core.config import load_config
from jaxlab.core.task import import_task
from jaxlab.data import pipeline

H100_BF16_PEAK = 989e12  # FLOP/s, dense bf16 (NVIDIA's H100 SXM datasheet)
GPU_HOST_CORES = 12  # CPU cores a GPU host typically gives each accelerator
INPUT_TASKS = ("glitch", "vegetation", "neutrino", "weather", "example")
# MFU one H100 can be expected to reach with each task's paper model, and why.
ASSUMED_MFU = {
    "glitch": (0.40, "ViT-B/16: large matmuls"),
    "vegetation": (0.40, "ConvLSTM on 128 px cubes: large convolutions"),
    "weather": (0.40, "U-Net at 1059 x 1799: large convolutions"),
    "neutrino": (0.10, "1.6M-parameter transformer, d_model 128: too small for 40%"),
    "example": (0.10, "an MLP of width 64: far too small for 40%"),
    "sales": (0.10, "small recurrent models: too small for 40%"),
}
FLOPS_BATCH = 8  # records per step of the cost analysis (at most; the config's batch if smaller)
RSS_SAMPLE_S = 0.05

_INPUT_TASKS = flags.DEFINE_list(
    "input_tasks", None, f"input_pipeline: tasks to measure (default {list(INPUT_TASKS)})."
)
_INPUT_SECONDS = flags.DEFINE_float(
    "input_seconds",
    20.0,
    "input_pipeline: seconds of timed reading per worker count.",
    lower_bound=0.1,
)
_INPUT_WORKERS = flags.DEFINE_integer(
    "input_workers",
    None,
    "input_pipeline: N, the larger worker count (default max(2, auto)).",
    lower_bound=1,
)
_INPUT_TINY = flags.DEFINE_bool(
    "input_tiny", False, "input_pipeline: each task's `tiny` config and a 2x size step (for tests)."
)
_INPUT_WORKDIR = flags.DEFINE_string(
    "input_workdir",
    None,
    "input_pipeline: folder for the synthetic data (default: a temporary folder, removed after).",
)
_INPUT_DATA = flags.DEFINE_list(
    "input_data",
    [],
    "input_pipeline: TASK=DIR, real data of a task (read only; no 4N measurement).",
)
_INPUT_FLOPS = flags.DEFINE_bool(
    "input_flops", True, "input_pipeline: compute the demand from XLA's cost analysis of the step."
)


# --- Data size per task -------------------------------------------------------------------------
# `n` is a size unit: the bench writes the data at n and at 4n (tiny: 2n). Each function sets the
# task's synthetic-writer keys for that size and returns the config.


def _glitch_size(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
    d = config.data
    d.synthetic_samples_per_class = 12 * n
    d.synthetic_min_per_class = min(d.synthetic_min_per_class, 12 * n)
    return config


def _vegetation_size(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
    # A synthetic cube gives one training window: 8 n cubes, and batches of 8 windows (the
    # paper's 32 would need 4x the cubes for the same measurement; the rate per window is the same).
    train = config.data.train_track
    config.data.synthetic_cubes = tuple(
        (t, 8 * n if t == train else 1) for t, _ in config.data.synthetic_cubes
    )
    config.train.global_batch_size = min(config.train.global_batch_size, 8)
    return config


def _neutrino_size(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
    config.data.synth.train_batches = n + 1
    config.data.train_batches = f"1-{n}" if n > 1 else "1"
    config.data.eval_batches = str(n + 1)
    return config


def _weather_size(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
    config.data.num_times = 8 * n
    return config


def _example_size(config: ml_collections.ConfigDict, n: int) -> ml_collections.ConfigDict:
    config.data.num_train = 1024 * n
    config.data.num_eval = 64
    return config


SIZE_FNS: dict[str, Callable[[ml_collections.ConfigDict, int], ml_collections.ConfigDict]] = {
    "glitch": _glitch_size,
    "vegetation": _vegetation_size,
    "neutrino": _neutrino_size,
    "weather": _weather_size,
    "example": _example_size,
}


def bench_config(task: str, tiny: bool, n: int, data_dir: str | None) -> ml_collections.ConfigDict:
    """The task's paper (or tiny) config, with synthetic data of size n or `data_dir`'s data."""
    variant = "tiny" if tiny else ("demo" if task == "example" else "paper")
    config = load_config(f"{task}:{variant}")
    if data_dir:  # the user's data, read in place
        key = "root" if task == "neutrino" else "dir"
        config.data[key] = data_dir
        config.data.synthetic = False
        return config
    config.data.synthetic = True
    if task == "vegetation":
        config.data.dir = ""
    if not tiny:
        config = SIZE_FNS[task](config, n)
    return config


def records_in(task: str, batch: Any) -> int:
    """Records in one host batch: events for neutrino (packs hold many), else the batch size."""
    if task == "neutrino":
        return int(np.sum(batch["event_valid"]))
    return int(jax.tree.leaves(batch)[0].shape[0])


# --- Memory ---------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` (psutil when installed, else /proc); 0 once it has exited."""
    try:
        import psutil  # noqa: PLC0415  (optional)

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - gone
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (/proc; psutil when /proc lacks `children`)."""
    try:
        import psutil  # noqa: PLC0415

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    except Exception:  # noqa: BLE001
        return []
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (/proc/<pid>/stat); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def reader_cpu_seconds() -> float:
    """CPU seconds of this process and its children (the readers) so far."""
    pid = os.getpid()
    return _cpu_seconds(pid) + sum(_cpu_seconds(c) for c in _children(pid))


class RssSampler:
    """Samples the resident memory of this process and its children every `RSS_SAMPLE_S` s in a
    thread; `peaks()` -> (this process's peak, {child pid: peak})."""

    def __init__(self):
        self._main = 0
        self._children: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        pid = os.getpid()
        self._main = max(self._main, _rss_bytes(pid))
        for child in _children(pid):
            self._children[child] = max(self._children.get(child, 0), _rss_bytes(child))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(RSS_SAMPLE_S)

    def peaks(self) -> tuple[int, dict[int, int]]:
        self._sample()
        return self._main, dict(self._children)


# --- Measurements ---------------------------------------------------------------------------------


def cores_used(workers: int, num_threads: int, cpus: int) -> int:
    """Cores the readers can keep busy: one per worker process, or the in-process threads."""
    return max(1, min(cpus, workers if workers > 0 else num_threads))


def read_rate(task: str, train_iter: Any, seconds: float, warmup: int) -> dict[str, float]:
    """(first batch s, records/s over `seconds` after `warmup` batches) of a fresh iterator."""
    start = time.perf_counter()
    batch = next(train_iter)
    first = time.perf_counter() - start
    for _ in range(warmup):
        batch = next(train_iter)
    records, batches = 0, 0
    cpu = reader_cpu_seconds()
    start = time.perf_counter()
    while True:
        batch = next(train_iter)
        records += records_in(task, batch)
        batches += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and batches >= 2:
            break
    cpu = reader_cpu_seconds() - cpu
    return {
        # Records per CPU-second of the readers (this process and its workers): what one core
        # delivers when it is not shared, so it is steadier than wall-clock rates on a busy host.
        "records_per_cpu_second": records / cpu if cpu > 0 else None,
        "first_batch_s": first,
        "records_per_sec": records / elapsed,
        "records_per_batch": records / batches,
        "timed_batches": batches,
        "timed_s": elapsed,
    }


def measure(
    task: str, config: ml_collections.ConfigDict, workdir: str, workers: int, seconds: float
) -> dict[str, Any]:
    """One iterator (`train.sources` with `data.workers` = workers) read for `seconds`."""
    config = copy.deepcopy(config)
    config.data.workers = workers
    train = import_task(config, "train")
    start = time.perf_counter()
    data = train.sources(config, workdir)
    sources_s = time.perf_counter() - start
    before = _rss_bytes(os.getpid())
    it = data.train_iter
    # A task with its own iterator may not read `data.workers` (its `workers` attribute says).
    iterator_workers = getattr(it, "workers", None)
    with RssSampler() as sampler:
        rate = read_rate(task, it, seconds, warmup=2 * max(workers, 1))
        main_peak, children = sampler.peaks()
    close = getattr(it, "close", None)
    if callable(close):
        close()
    cpus = len(os.sched_getaffinity(0))
    threads = int(config.data.get("num_threads", 2))
    cores = cores_used(workers, threads, cpus)
    worker_peaks = sorted(children.values(), reverse=True)[: max(workers, 0)]
    return {
        **rate,
        "workers": workers,
        "iterator_workers": iterator_workers,
        "cores_used": cores,
        "records_per_sec_per_core": rate["records_per_sec"] / cores,
        "sources_s": sources_s,
        "train_process_rss_growth_bytes": max(0, main_peak - before),
        "worker_peak_rss_bytes": max(worker_peaks) if worker_peaks else None,
        "worker_peak_rss_each_bytes": worker_peaks,
    }


def flops_per_record(task: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """XLA's FLOPs of one train step (lowered, `FLOPS_BATCH` records at most) per record."""
    config = copy.deepcopy(config)
    batch = config.train.global_batch_size
    config.train.global_batch_size = min(batch, FLOPS_BATCH)
    mesh = mesh_lib.make_mesh([("data", 1)], jax.local_devices()[:1])
    steps = import_task(config, "steps")
    step_fn, state, step_batch, extras = steps.benchmark_setup(config, mesh)
    cost = step_fn.lower(state, step_batch).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    records = float(extras.get("events_per_step", config.train.global_batch_size))
    return {
        "flops_batch": config.train.global_batch_size,
        "records_per_step": records,
        "flops_per_step": flops,
        "flops_per_record": flops / records if flops > 0 else None,
    }


def demand(task: str, flops_per_record: float | None) -> dict[str, Any]:
    """Records/s one H100 consumes at the task's assumed MFU of the bf16 dense peak."""
    mfu, why = ASSUMED_MFU.get(task, (0.10, "assumed small"))
    needed = mfu * H100_BF16_PEAK / flops_per_record if flops_per_record else None
    return {"assumed_mfu": mfu, "mfu_reason": why, "h100_records_per_sec": needed}


def cpu_model() -> str:
    """`lscpu`'s "Model name" (or /proc/cpuinfo's), e.g. "AMD EPYC"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def bench_task(
    task: str,
    root: str,
    *,
    tiny: bool,
    seconds: float,
    workers_n: int,
    data_dir: str | None,
    with_flops: bool,
) -> dict[str, Any]:
    """Every input measurement of one task; see the module docstring."""
    entry: dict[str, Any] = {"config": "tiny" if tiny else "paper", "data": data_dir or "synthetic"}
    sizes = (1,) if data_dir else ((1, 2) if tiny else (1, 4))
    runs: dict[str, Any] = {}
    for n in sizes:
        config = bench_config(task, tiny, n, data_dir)
        workdir = os.path.join(root, task, f"n{n}")
        os.makedirs(workdir, exist_ok=True)
        if n == 1:
            entry["global_batch_size"] = config.train.global_batch_size
            entry["num_threads"] = int(config.data.get("num_threads", 2))
            counts = [0, 1, workers_n] if workers_n > 1 else [0, 1]
            for w in counts:
                logging.info("bench --input_pipeline: %s, size %d, %d workers", task, n, w)
                runs[f"n1_w{w}"] = measure(task, config, workdir, w, seconds)
            if with_flops:
                entry["flops"] = flops_per_record(task, config)
        else:  # first batch and memory only: a short read with N workers
            runs[f"n{n}_w{workers_n}"] = measure(
                task, config, workdir, workers_n, min(seconds, 2.0)
            )
    entry["runs"] = runs
    one, many = runs["n1_w1"], runs[f"n1_w{workers_n}"]
    # False: the task's iterator reads in-process whatever data.workers says; its "worker"
    # rates are in-process repeats.
    entry["workers_used"] = many["iterator_workers"] == workers_n
    entry["records_per_sec_1_worker"] = one["records_per_sec"]
    entry["records_per_sec_n_workers"] = many["records_per_sec"]
    entry["records_per_sec_in_process"] = runs["n1_w0"]["records_per_sec"]
    entry["speedup_1_to_n"] = many["records_per_sec"] / one["records_per_sec"]
    entry["records_per_sec_per_core"] = many["records_per_sec_per_core"]
    big = runs.get(f"n{sizes[-1]}_w{workers_n}") if len(sizes) > 1 else None
    if big is not None:
        entry["size_factor"] = sizes[-1]
        entry["first_batch_growth"] = big["first_batch_s"] / max(many["first_batch_s"], 1e-9)
        small_rss, big_rss = many["worker_peak_rss_bytes"], big["worker_peak_rss_bytes"]
        entry["worker_rss_growth"] = big_rss / small_rss if small_rss and big_rss else None
    flops = entry.get("flops", {}).get("flops_per_record")
    entry.update(demand(task, flops))
    needed = entry["h100_records_per_sec"]
    if needed:
        entry["delivered_over_needed"] = many["records_per_sec"] / needed
        entry["extrapolated_12_core_over_needed"] = (
            many["records_per_sec_per_core"] * GPU_HOST_CORES / needed
        )
    return entry


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def input_table(report: dict[str, Any]) -> str:
    """The input report as a text table."""
    lines = [
        f"Input pipelines on {report['cpu_count']} x {report['cpu_model']} (N = "
        f"{report['workers_n']} workers; H100 demand at the assumed MFU of 989 bf16 TFLOP/s)",
    ]
    header = (
        f"{'task':<11} {'in-proc/s':>9} {'1 w rec/s':>9} {'N w rec/s':>9} {'x1->N':>5} "
        f"{'/core':>8} {'/cpu-s':>8} {'1st b s':>7} {'1st 4N':>7} {'w RSS MB':>8} {'RSS 4N':>7} "
        f"{'GFLOP/rec':>9} {'MFU':>4} {'H100 needs':>10} {'ratio':>7} {'12-core':>7}"
    )
    lines += [header, "-" * len(header)]
    notes: list[str] = []
    for task, e in report["tasks"].items():
        if "error" in e:
            lines.append(f"{task:<11} FAILED: {e['error']}")
            continue
        if not e["workers_used"]:
            notes.append(f"{task}: its iterator does not use data.workers (all rows in-process).")
        many = e["runs"][f"n1_w{report['workers_n']}"]
        big = e["runs"].get(f"n{e.get('size_factor', 0)}_w{report['workers_n']}", {})
        flops = e.get("flops", {}).get("flops_per_record")
        lines.append(
            f"{task:<11} {e['records_per_sec_in_process']:>9.1f} "
            f"{e['records_per_sec_1_worker']:>9.1f} {e['records_per_sec_n_workers']:>9.1f} "
            f"{e['speedup_1_to_n']:>5.2f} {e['records_per_sec_per_core']:>8.1f} "
            f"{_fmt(many['records_per_cpu_second'], '>8.1f')} "
            f"{many['first_batch_s']:>7.2f} {_fmt(big.get('first_batch_s'), '>7.2f')} "
            f"{_fmt(many['worker_peak_rss_bytes'], '>8.0f', 2**20)} "
            f"{_fmt(big.get('worker_peak_rss_bytes'), '>7.0f', 2**20)} "
            f"{_fmt(flops, '>9.3g', 1e9)} {e['assumed_mfu']:>4.0%} "
            f"{_fmt(e['h100_records_per_sec'], '>10.4g')} "
            f"{_fmt(e.get('delivered_over_needed'), '>7.3f')} "
            f"{_fmt(e.get('extrapolated_12_core_over_needed'), '>7.3f')}"
        )
    lines.append(
        "rec/s: records per second (neutrino: events); /core: N-worker rate per core used; "
        "/cpu-s: N-worker records per CPU-second of all readers (a core's rate when not shared); "
        "1st b: seconds to the first batch (N and 4N records); w RSS: peak per worker process; "
        "ratio: N-worker rate / H100 demand; 12-core: per-core rate x 12 / demand "
        "(an extrapolation)."
    )
    return "\n".join(lines + notes)


def run_input_bench() -> dict[str, Any]:
    """`jaxlab bench --input_pipeline`: the report of every task in `--input_tasks`."""
    tasks = _INPUT_TASKS.value or list(INPUT_TASKS)
    unknown = sorted(set(tasks) - set(SIZE_FNS))
    if unknown:
        raise ValueError(f"--input_tasks: unknown {unknown}; known: {sorted(SIZE_FNS)}.")
    data_dirs = {}
    for item in _INPUT_DATA.value:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--input_data: {item!r}; expected TASK=DIR.")
        data_dirs[task] = path
    workers_n = _INPUT_WORKERS.value or max(2, pipeline.auto_workers())
    cpus = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": cpus,
        "workers_n": workers_n,
        "seconds": _INPUT_SECONDS.value,
        "tiny": _INPUT_TINY.value,
        "h100_bf16_peak_flops": H100_BF16_PEAK,
        "gpu_host_cores": GPU_HOST_CORES,
        "tasks": {},
    }
    root = _INPUT_WORKDIR.value or tempfile.mkdtemp(prefix="jaxlab_bench_input_")
    try:
        for task in tasks:
            try:
                report["tasks"][task] = bench_task(
                    task,
                    root,
                    tiny=_INPUT_TINY.value,
                    seconds=_INPUT_SECONDS.value,
                    workers_n=workers_n,
                    data_dir=data_dirs.get(task),
                    with_flops=_INPUT_FLOPS.value,
                )
            except Exception as e:  # report it, measure the others, exit non-zero
                logging.error("bench --input_pipeline %s failed:\n%s", task, traceback.format_exc())
                report["tasks"][task] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if _INPUT_WORKDIR.value is None:
            shutil.rmtree(root, ignore_errors=True)
    return report
