"""`jaxlab bench` (through scripts/benchmark.py) as `make bench` runs it, on 2 fake CPU devices
and tiny configs."""

import json
import subprocess
import sys

import pytest

from jaxlab.configs import example as example_config
from tests.core import scripts_util


def _run_benchmark(out, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(scripts_util.REPO / "scripts" / "benchmark.py"),
            f"--out={out}",
            *flags,
        ],
        env=scripts_util.script_env(2),
        cwd=scripts_util.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )


def _mlp_train_flops(config) -> float:
    """6 * params * batch: forward + backward of the example MLP, independent of XLA's count."""
    widths = [config.data.num_features, *config.model.hidden, 1]
    params = sum(n_in * n_out + n_out for n_in, n_out in zip(widths[:-1], widths[1:], strict=True))
    return 6 * params * config.train.global_batch_size


def test_benchmark_reports_example_task(tmp_path):
    out = tmp_path / "bench" / "benchmark.json"
    flags = ["--tasks=example", "--steps=3", "--warmup=1", "--matmul_size=256", "--variant=tiny"]
    result = _run_benchmark(out, *flags)
    assert result.returncode == 0, result.stdout
    assert "example" in result.stdout  # the table
    assert "jaxlab bench: backend cpu, 2 x cpu" in result.stdout  # where it ran
    report = json.loads(out.read_text())

    assert report["device"]["device_count"] == 2
    for dtype in ("float32", "bfloat16"):
        assert report["matmul_peak"][dtype]["tflops_per_device"] > 0
    entry = report["tasks"]["example"]
    assert entry["compile_time_s"] > 0
    assert entry["step_time_ms"] > 0
    assert entry["steps_per_sec"] > 0
    assert entry["examples_per_sec"] == pytest.approx(16 * entry["steps_per_sec"])
    estimate = _mlp_train_flops(example_config.get_config("tiny"))
    assert estimate == 6 * (8 * 16 + 16 + 16 * 1 + 1) * 16
    assert entry["flops_per_step"] > 0
    assert estimate / 3 < entry["flops_per_step"] < 3 * estimate
    assert 0 < entry["mfu"] < 1
    assert entry["mfu_peak"] == "float32"


def test_benchmark_failed_task_exits_nonzero(tmp_path):
    out = tmp_path / "benchmark.json"
    flags = ["--tasks=example", "--steps=1", "--warmup=1", "--matmul_size=64", "--variant=nope"]
    result = _run_benchmark(out, *flags)
    assert result.returncode != 0
    assert "Benchmark failed for task(s) ['example']" in result.stdout
    assert "unknown variant 'nope'" in json.loads(out.read_text())["tasks"]["example"]["error"]


def test_benchmark_compile_only_reports_memory_without_running(tmp_path):
    out = tmp_path / "benchmark.json"
    flags = ["--tasks=example", "--variant=tiny", "--compile_only", "--matmul_size=64"]
    result = _run_benchmark(out, *flags, "--batch_size=64")
    assert result.returncode == 0, result.stdout
    entry = json.loads(out.read_text())["tasks"]["example"]
    assert entry["step_time_ms"] is None and entry["mfu"] is None
    assert entry["global_batch_size"] == 64
    assert entry["flops_per_step"] > 0 and entry["memory"]["argument_bytes"] > 0
    assert entry["memory"]["host_peak_rss_bytes"] > 10 * 2**20
