"""Side-by-side speed of jaxlab and PyTorch on the same model and machine (benchmark-only).

    python scripts/compare_torch.py [--workloads=vit_train_fp32,...] [--batch=2] [--rounds=3]

Workloads: ViT-B/16 (glitch:vit_b16_single, 224 px, 22 classes) train step and forward, fp32 and
bf16, against timm's vit_base_patch16_224 with the same AdamW, gradient clipping, label smoothing
and drop-path (bf16: torch.autocast, i.e. AMP); and the seed weather U-Net train step
(weather:paper's `seed_minimal_unet` at `--unet_shape`) against the same layers written in
PyTorch (conv 3x3 / GroupNorm(8) / SiLU blocks 14 -> 16 -> 32 -> 32 -> 32 -> 16 -> 16 -> 1x1 7,
the sinusoid + MLP embedding added in every block, noise-prediction MSE, AdamW, clipping).

Every measurement is a separate process, run interleaved A, B, A, B for `--rounds` rounds, so
slow drift of a shared machine's load hits both sides alike. Both sides run on the same CPUs
(`--cpus`, default: all this process may use; each worker is pinned to them, PyTorch gets one
intra-op thread per CPU and XLA sizes its pool from the same affinity). In a process: build,
compile (jax's compilation cache is on, so later rounds load it) and `--warmup` steps, then
`--steps` synced steps timed one by one, wall clock and process CPU time (all threads).

Printed per workload: min and median step time of each side over all rounds, the throughput ratio
jaxlab / PyTorch as the median of the per-round ratios of median step times, the CPU seconds per
step of each side and its utilisation (CPU time / (wall time x CPUs)). The CPU seconds are the
work a step costs, nearly independent of other load; the utilisation says how much of the
machine a side keeps busy. The load average is recorded before every round and at the end.

On a shared machine PyTorch's OpenMP threads busy-wait by default and lose far more than XLA's
pool to oversubscription; `--omp_wait_policy=auto` (default) sets OMP_WAIT_POLICY=PASSIVE for
the PyTorch workers when the 1-minute load at the start is at least the number of CPUs, and the
JSON records the choice. torch and timm are imported only here and in scripts/gpu_check.py,
never by the package (`pip install torch timm`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

from jaxlab.core import run_records  # noqa: E402  (stdlib only: nothing heavy is imported)

PINNABLE = hasattr(os, "sched_setaffinity")  # Linux; elsewhere every CPU is used, unpinned

WORKLOADS = (
    "vit_train_fp32",
    "vit_train_bf16",
    "vit_fwd_fp32",
    "vit_fwd_bf16",
    "unet_train",
)


# --- jaxlab side ---------------------------------------------------------------------------------


def timed_steps(run, args, block=lambda out: out) -> dict[str, Any]:
    """`--warmup` untimed calls, then `--steps` calls: wall and process CPU seconds of each, and
    the process's peak resident memory (GiB)."""
    for _ in range(args.warmup):
        block(run())
    wall, cpu = [], []
    for _ in range(args.steps):
        cpu_start, start = time.process_time(), time.perf_counter()
        block(run())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"wall": wall, "cpu": cpu, "peak_rss_gib": peak_rss_gib}


def jax_worker(workload: str, args) -> dict[str, Any]:
    import jax  # noqa: PLC0415

    from jaxlab.core import compile_cache  # noqa: PLC0415
    from jaxlab.core import mesh as mesh_lib  # noqa: PLC0415
    from jaxlab.core.config import load_config  # noqa: PLC0415
    from jaxlab.core.task import import_task  # noqa: PLC0415

    compile_cache.enable()
    if workload == "unet_train":
        config = load_config("weather:paper")
        config.data.shape = tuple(args.unet_shape)
        config.optim.grad_accum_steps = 1
        config.model.remat = False  # torch_unet recomputes nothing either
    else:
        config = load_config("glitch:vit_b16_single")
        config.model.dtype = "bfloat16" if workload.endswith("bf16") else "float32"
    config.train.global_batch_size = args.batch
    config.mesh = [(name, 1) for name, _ in config.mesh]
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.local_devices()[:1])
    steps = import_task(config, "steps")
    step_fn, state, batch, _ = steps.benchmark_setup(config, mesh)
    if "fwd" in workload:
        from jaxlab.glitch import model as model_lib  # noqa: PLC0415

        model = model_lib.make_model(config, 22)
        images = batch["image"]
        forward = jax.jit(lambda params, x: model.apply({"params": params}, x)["logits"])

        def run():
            return forward(state.params, images)
    else:

        def run():
            nonlocal state
            state, metrics = step_fn(state, batch)
            return state, metrics

    return timed_steps(run, args, jax.block_until_ready)


# --- PyTorch side --------------------------------------------------------------------------------


def torch_unet(torch, channels: int = 7, d: int = 16, emb_mult: int = 4):
    """The seed's UltraMinimalDDPM layers (jaxlab.weather.model.SeedMinimalUNet) in PyTorch."""
    nn = torch.nn
    emb_dim = d * emb_mult

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1, self.conv2 = (
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.Conv2d(cout, cout, 3, 1, 1),
            )
            self.norm1, self.norm2 = nn.GroupNorm(8, cout), nn.GroupNorm(8, cout)
            self.emb = nn.Linear(emb_dim, cout)

        def forward(self, x, emb):
            h = nn.functional.silu(self.norm1(self.conv1(x)))
            h = h + self.emb(emb)[:, :, None, None]
            return nn.functional.silu(self.norm2(self.conv2(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(d, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            widths = [d, 2 * d, 2 * d, 2 * d, d, d]
            cins = [2 * channels, *widths[:-1]]
            self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(cins, widths, strict=True))
            self.out = nn.Conv2d(d, channels, 1)

        def forward(self, xt, cond, t):
            half = d // 2
            freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(half) / half)
            args = t[:, None] * freqs[None]
            emb = self.mlp(torch.cat([torch.sin(args), torch.cos(args)], -1))
            h = torch.cat([xt, cond], 1)
            for block in self.blocks:
                h = block(h, emb)
            return self.out(h)

    return Net()


def torch_worker(workload: str, args) -> dict[str, Any]:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from gpu_check import import_torch_timm  # noqa: PLC0415 - beside this script

    from jaxlab.core.config import load_config  # noqa: PLC0415

    torch, timm = import_torch_timm()
    cpus = len(os.sched_getaffinity(0)) if PINNABLE else os.cpu_count() or 1
    torch.set_num_threads(cpus)  # the CPUs this worker is pinned to
    torch.manual_seed(0)
    b = args.batch
    if workload == "unet_train":
        config = load_config("weather:paper")
        height, width = args.unet_shape
        model = torch_unet(torch).train()
        cond = torch.randn(b, 7, height, width)
        target = torch.randn(b, 7, height, width)
        amp = False
    else:
        config = load_config("glitch:vit_b16_single")
        model = timm.create_model(
            "vit_base_patch16_224", num_classes=22, drop_path_rate=config.model.drop_path
        )
        images = torch.randn(b, 3, 224, 224)
        labels = torch.randint(0, 22, (b,))
        amp = workload.endswith("bf16")
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    smoothing = (
        config.get("loss", {}).get("label_smoothing", 0.0) if workload != "unet_train" else 0
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing or 0.0)
    clip = config.optim.get("grad_clip_norm", 1.0) or 1.0

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            if workload == "unet_train":
                t = torch.randint(0, 1000, (b,)).float()
                noise = torch.randn_like(target)
                abar = torch.rand(b)[:, None, None, None]
                xt = abar.sqrt() * target + (1 - abar).sqrt() * noise
                loss = torch.mean((model(xt, cond, t) - noise) ** 2)
            else:
                loss = loss_fn(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    def forward():
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(images)

    return timed_steps(forward if "fwd" in workload else train_step, args)


# --- driver --------------------------------------------------------------------------------------


def run_one(side: str, workload: str, args) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        f"--worker={side}",
        f"--workloads={workload}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--unet_shape={args.unet_shape[0]},{args.unet_shape[1]}",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if side == "torch":
        env["OMP_NUM_THREADS"] = str(len(args.cpus))
        if args.omp_wait_policy:
            env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    out = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=(lambda: os.sched_setaffinity(0, args.cpus)) if PINNABLE else None,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("TIMES ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{side} {workload} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("TIMES "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--unet_shape", default="256,384")
    parser.add_argument(
        "--cpus", default="", help="CPU ids both sides run on, e.g. 0,1 (default: all allowed)."
    )
    parser.add_argument(
        "--omp_wait_policy",
        default="auto",
        choices=("auto", "PASSIVE", "ACTIVE", "default"),
        help="OMP_WAIT_POLICY of the PyTorch workers; auto: PASSIVE when load >= CPUs.",
    )
    parser.add_argument("--out", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--worker", choices=("jax", "torch"), default=None)
    args = parser.parse_args()
    args.unet_shape = [int(v) for v in args.unet_shape.split(",")]
    workloads = args.workloads.split(",")
    if args.worker:
        worker = jax_worker if args.worker == "jax" else torch_worker
        print("TIMES " + json.dumps(worker(workloads[0], args)), flush=True)
        return
    allowed = sorted(os.sched_getaffinity(0)) if PINNABLE else list(range(os.cpu_count() or 1))
    args.cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else allowed
    load_start = os.getloadavg()
    if args.omp_wait_policy == "auto":
        args.omp_wait_policy = "PASSIVE" if load_start[0] >= len(args.cpus) else None
    elif args.omp_wait_policy == "default":
        args.omp_wait_policy = None
    results = {}
    header = (
        f"{'workload':<16} {'jaxlab min/med s':>17} {'torch min/med s':>16} {'jaxlab/torch':>12}"
        f" {'cpu-s/step jax|torch (util)':>30}  per-round ratios"
    )
    print(
        f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps, CPUs {args.cpus}, "
        f"OMP_WAIT_POLICY={args.omp_wait_policy or 'default'}; load {load_start}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    threads = len(args.cpus)
    for workload in workloads:
        rounds = []
        for _ in range(args.rounds):
            load = os.getloadavg()
            a = run_one("jax", workload, args)
            b = run_one("torch", workload, args)
            ratio = statistics.median(b["wall"]) / statistics.median(a["wall"])
            rounds.append({"load": load, "jaxlab": a, "torch": b, "ratio": ratio})
        jax_times = [t for r in rounds for t in r["jaxlab"]["wall"]]
        torch_times = [t for r in rounds for t in r["torch"]["wall"]]
        ratio = statistics.median([r["ratio"] for r in rounds])
        cpu = {
            side: statistics.median([t for r in rounds for t in r[side]["cpu"]])
            for side in ("jaxlab", "torch")
        }
        util = {
            side: cpu[side] / (statistics.median(times) * threads)
            for side, times in (("jaxlab", jax_times), ("torch", torch_times))
        }
        rss = {side: max(r[side]["peak_rss_gib"] for r in rounds) for side in ("jaxlab", "torch")}
        results[workload] = {
            "jaxlab_s": jax_times,
            "torch_s": torch_times,
            "round_ratios": [r["ratio"] for r in rounds],
            "jaxlab_over_torch_throughput": ratio,
            "cpu_s_per_step_median": cpu,
            "utilisation": util,
            "peak_rss_gib": rss,
            "rounds": rounds,
        }
        print(
            f"{workload:<16} {min(jax_times):>8.3f}/{statistics.median(jax_times):<8.3f} "
            f"{min(torch_times):>7.3f}/{statistics.median(torch_times):<8.3f} {ratio:>12.2f} "
            f"{cpu['jaxlab']:>9.2f} ({util['jaxlab']:.2f}) | {cpu['torch']:>6.2f} "
            f"({util['torch']:.2f})  " + " ".join(f"{r['ratio']:.2f}" for r in rounds),
            flush=True,
        )
    load_end = os.getloadavg()
    print(f"load average: start {load_start}, end {load_end}")
    if args.out:
        meta = {
            "batch": args.batch,
            "rounds": args.rounds,
            "steps": args.steps,
            "warmup": args.warmup,
            "cpus": args.cpus,
            "omp_wait_policy": args.omp_wait_policy,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "versions": run_records.package_versions(("jax", "jaxlib", "torch", "timm")),
        }
        payload = {**meta, "load_start": load_start, "load_end": load_end, "results": results}
        pathlib.Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
