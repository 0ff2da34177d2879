"""scripts/gpu_check.py: the largest-batch search against XLA's memory plan, and `--smoke` end
to end (every section on CPU, tiny sizes), so the GPU script is known to work before a GPU is
used. The script lives outside the package (it may import torch and timm); it is loaded by path.
"""

import importlib.util
import json
import sys

import pytest

from jaxlab.core.config import load_config
from tests.core import scripts_util

_spec = importlib.util.spec_from_file_location(
    "gpu_check", scripts_util.REPO / "scripts" / "gpu_check.py"
)
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up by name
_spec.loader.exec_module(gpu_check)


def test_largest_batch_plan_fits_the_memory_limit(monkeypatch):
    """The chosen batch's compiled plan fits the limit, it is larger than the probes, every
    larger batch tried did not fit, and its executable is handed back for reuse."""
    sizes = gpu_check.Sizes(True, 64, 4, 4096, 4, 1, 1, ())
    config = load_config("example:tiny")
    mesh = gpu_check._mesh(config)
    monkeypatch.setattr(gpu_check, "device_memory_limit", lambda sizes: 400_000)
    batch, plan, setups = gpu_check.largest_batch(config, mesh, sizes)
    plans = {int(b): v for b, v in plan["planned_bytes_by_batch"].items()}
    assert batch % 4 == 0 and 8 < batch < 4096 and len(plans) <= 4
    assert plans[batch] <= 400_000
    assert all(plans[b] > 400_000 for b in plans if b > batch)
    config.train.global_batch_size = batch
    compiled = gpu_check.setup_and_compile(config, mesh)[-2]
    assert gpu_check.planned_bytes(compiled) == plans[batch]
    assert list(setups) == [batch]


def test_portable_predict_entry_times_the_artefact_beside_the_python_network():
    """The artefact (exported for cpu, cuda, tpu, serialised, deserialised) runs here and
    agrees with the Python network; both times are measured."""
    entry = gpu_check.portable_entry(gpu_check.SMOKE_SIZES, "example")
    assert entry["platforms"] == ["cpu", "cuda", "tpu"] and entry["artefact_bytes"] > 0
    assert entry["python_ms"] > 0 and entry["stablehlo_ms"] > 0
    assert entry["stablehlo_over_python"] == entry["stablehlo_ms"] / entry["python_ms"]
    assert entry["max_abs_diff"] < 1e-5
    line = gpu_check.report_table(
        {
            "date": "d",
            "device": {"device_kind": "cpu", "platform": "cpu", "jax_version": "0"},
            "sections": {"portable_predict": {"example": entry, "section_s": 1.0}},
        }
    ).splitlines()[-1]
    assert line.startswith("portable predict example: python ") and "StableHLO" in line


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    script = str(scripts_util.REPO / "scripts" / "gpu_check.py")
    result = scripts_util.run_python([script, "--smoke", f"--out={out}"], 1, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "wrote" in result.stdout and "vit_single_bf16" in result.stdout  # the table
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    errors = {k: v["error"] for k, v in sections.items() if "error" in v}
    assert not errors, errors
    for dtype in ("float32", "tf32", "bfloat16"):
        assert sections["matmul"][dtype]["tflops_per_device"] > 0
    for name in ("vit_single_fp32", "vit_single_bf16", "vit_multiview_bf16", "vegetation_fp32"):
        entry = sections[name]
        assert entry["step_time_ms"] > 0 and entry["flops_per_step"] > 0
        assert entry["global_batch_size"] == entry["batch_plan"]["predicted_batch"]
        assert entry["mfu_vs_measured_peak"] > 0
    assert sections["vit_single_bf16"]["model_dtype"] == "bfloat16"
    assert sections["neutrino"]["events_per_sec"] > 0
    assert 0 < sections["neutrino"]["pulse_token_efficiency"] <= 1
    assert sections["weather_no_remat"]["grid"] and sections["weather_no_remat"]["step_time_ms"]
    assert sections["weather_sampling"]["sampling_members"] == 2
    for name in ("timm_fp32", "timm_bf16"):  # measured when torch + timm are installed
        assert "skipped" in sections[name] or sections[name]["jaxlab_over_timm"] > 0
    for task, entry in sections["portable_predict"].items():
        if task != "section_s":
            assert entry["stablehlo_ms"] > 0 and entry["python_ms"] > 0, task
            assert entry["max_abs_diff"] < 1e-3, task
    for shape in sections["attention"].values():
        if isinstance(shape, dict):
            xla = shape["jaxlab_xla"]
            assert xla["max_abs_diff_bf16_vs_fp32"] < 0.1 and xla["forward_backward_ms"] > 0
            assert shape["jax_nn_xla"]["max_abs_diff_bf16_vs_fp32"] < 0.1
            assert "error" in shape["cudnn"]  # no cuDNN on CPU: recorded, not fatal
