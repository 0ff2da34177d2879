"""Side-by-side speed of jaxlab and PyTorch on the same model and machine (benchmark-only).

    python scripts/compare_torch.py [--workloads=vit_train_fp32,...] [--batch=2] [--rounds=3]

Workloads: ViT-B/16 (glitch:vit_b16_single, 224 px, 22 classes) train step and forward, fp32 and
bf16, against timm's vit_base_patch16_224 with the same AdamW, gradient clipping, label smoothing
and drop-path (bf16: torch.autocast, i.e. AMP); and the seed weather U-Net train step
(weather:paper's `seed_minimal_unet` at `--unet_shape`) against the same layers written in
PyTorch (conv 3x3 / GroupNorm(8) / SiLU blocks 14 -> 16 -> 32 -> 32 -> 32 -> 16 -> 16 -> 1x1 7,
the sinusoid + MLP embedding added in every block, noise-prediction MSE, AdamW, clipping).

Every measurement is a separate process, run interleaved A, B, A, B for `--rounds` rounds, so
slow drift of a shared machine's load hits both sides alike. In a process: build, compile (jax's
compilation cache is on, so later rounds load it) and `--warmup` steps, then `--steps` synced
steps timed one by one. Printed per workload: min and median step time of each side over all
rounds, the throughput ratio jaxlab / PyTorch as the median of the per-round ratios of median
step times, and the load average at the start and the end. torch and timm are imported only
here and in scripts/gpu_check.py, never by the package (`pip install torch timm`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

WORKLOADS = (
    "vit_train_fp32",
    "vit_train_bf16",
    "vit_fwd_fp32",
    "vit_fwd_bf16",
    "unet_train",
)


# --- jaxlab side ---------------------------------------------------------------------------------


def jax_worker(workload: str, args) -> list[float]:
    import jax  # noqa: PLC0415

    from jaxlab.core import compile_cache  # noqa: PLC0415
    from jaxlab.core import mesh as mesh_lib  # noqa: PLC0415
    from jaxlab.core.task import import_task, load_config  # noqa: PLC0415

    compile_cache.enable()
    if workload == "unet_train":
        config = load_config("weather:paper")
        config.data.shape = tuple(args.unet_shape)
        config.optim.grad_accum_steps = 1
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

    for _ in range(args.warmup):
        jax.block_until_ready(run())
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return times


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


def torch_worker(workload: str, args) -> list[float]:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from gpu_check import import_torch_timm  # noqa: PLC0415 - beside this script

    from jaxlab.core.task import load_config  # noqa: PLC0415

    torch, timm = import_torch_timm()
    torch.set_num_threads(os.cpu_count() or 1)
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

    run = forward if "fwd" in workload else train_step
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


# --- driver --------------------------------------------------------------------------------------


def run_one(side: str, workload: str, args) -> list[float]:
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
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
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
    parser.add_argument("--out", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--worker", choices=("jax", "torch"), default=None)
    args = parser.parse_args()
    args.unet_shape = [int(v) for v in args.unet_shape.split(",")]
    workloads = args.workloads.split(",")
    if args.worker:
        worker = jax_worker if args.worker == "jax" else torch_worker
        print("TIMES " + json.dumps(worker(workloads[0], args)), flush=True)
        return
    load_start = os.getloadavg()
    results = {}
    header = (
        f"{'workload':<16} {'jaxlab min/med s':>17} {'torch min/med s':>16} {'jaxlab/torch':>12}"
        f" {'per-round ratios':<24}"
    )
    print(f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps; load {load_start}")
    print(header + "\n" + "-" * len(header), flush=True)
    for workload in workloads:
        jax_times, torch_times, ratios = [], [], []
        for _ in range(args.rounds):
            a = run_one("jax", workload, args)
            b = run_one("torch", workload, args)
            jax_times += a
            torch_times += b
            ratios.append(statistics.median(b) / statistics.median(a))
        ratio = statistics.median(ratios)
        results[workload] = {
            "jaxlab_s": jax_times,
            "torch_s": torch_times,
            "round_ratios": ratios,
            "jaxlab_over_torch_throughput": ratio,
        }
        print(
            f"{workload:<16} {min(jax_times):>8.3f}/{statistics.median(jax_times):<8.3f} "
            f"{min(torch_times):>7.3f}/{statistics.median(torch_times):<8.3f} {ratio:>12.2f} "
            + " ".join(f"{r:.2f}" for r in ratios),
            flush=True,
        )
    load_end = os.getloadavg()
    print(f"load average: start {load_start}, end {load_end}")
    if args.out:
        meta = {"batch": args.batch, "rounds": args.rounds, "steps": args.steps}
        payload = {**meta, "load_start": load_start, "load_end": load_end, "results": results}
        pathlib.Path(args.out).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
