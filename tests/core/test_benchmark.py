"""`jaxlab bench` (through scripts/benchmark.py) as `make bench` runs it, on 2 fake CPU devices
and tiny configs."""

import json
import pathlib
import subprocess
import sys

import pytest

from jaxlab.configs import example as example_config
from tests.core import scripts_util


def _run_benchmark(out, *flags: str) -> subprocess.CompletedProcess:
    script = str(scripts_util.REPO / "scripts" / "benchmark.py")
    return scripts_util.run_python([script, f"--out={out}", *flags], 2)


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


# --- compile cache -----------------------------------------------------------------------------


def test_compile_cache_dir_order():
    """Opt-out wins, then an explicit folder, then one JAX already has, then the XDG default."""
    from jaxlab.core import compile_cache

    env = {"XDG_CACHE_HOME": "/x"}
    assert compile_cache.resolve_cache_dir(environ=env) == pathlib.Path("/x/jaxlab/xla")
    assert compile_cache.resolve_cache_dir(current="/jax", environ=env) == pathlib.Path("/jax")
    assert compile_cache.resolve_cache_dir("/mine", current="/jax", environ=env) == pathlib.Path(
        "/mine"
    )
    for value in ("1", "true", "YES"):
        off = {**env, "JAXLAB_NO_COMPILE_CACHE": value}
        assert compile_cache.resolve_cache_dir("/mine", environ=off) is None
    assert compile_cache.resolve_cache_dir(environ={**env, "JAXLAB_NO_COMPILE_CACHE": "0"})
    home = compile_cache.default_cache_dir({})
    assert home == pathlib.Path.home() / ".cache" / "jaxlab" / "xla"


_CACHE_SCRIPT = """
import sys, jax, jax.numpy as jnp
from jaxlab.core import compile_cache
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print("dir", compile_cache.enable())
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
"""


@pytest.mark.slow
def test_compile_cache_second_process_reads_what_the_first_wrote(tmp_path):
    """Two processes: the first writes the executable under XDG_CACHE_HOME/jaxlab/xla, the second
    finds it (no new entry); with JAXLAB_NO_COMPILE_CACHE=1 nothing is written."""

    def run(cache_home, **extra):
        env = scripts_util.script_env(1, XDG_CACHE_HOME=str(cache_home), **extra)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the tests' own cache
        result = subprocess.run(
            [sys.executable, "-c", _CACHE_SCRIPT],
            env=env,
            cwd=scripts_util.REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return result.stdout

    folder = tmp_path / "on" / "jaxlab" / "xla"
    assert f"dir {folder}" in run(tmp_path / "on")
    entries = sorted(p.name for p in folder.iterdir())
    assert entries
    run(tmp_path / "on")
    assert sorted(p.name for p in folder.iterdir()) == entries  # a hit: nothing new compiled
    assert "dir None" in run(tmp_path / "off", JAXLAB_NO_COMPILE_CACHE="1")
    assert not (tmp_path / "off").exists()


def test_matmul_peak_reports_median_and_spread():
    import jax

    from jaxlab.cli import bench

    peak = bench.matmul_tflops(128, "float32", jax.devices()[:1], repeats=5)
    assert peak["repeats"] == 5
    assert 0 < peak["tflops_min"] <= peak["tflops_per_device"] <= peak["tflops_max"]
    spread = (peak["tflops_max"] - peak["tflops_min"]) / peak["tflops_per_device"]
    assert peak["relative_spread"] == pytest.approx(spread)
