"""Every test process sees 8 fake CPU devices; this must run before jax is imported.

Test processes (both xdist workers and the scripts the tests launch, which inherit the
environment) share a persistent XLA compilation cache under `.cache/xla-tests` in the checkout:
many tests compile the same train step again (resume after SIGTERM, train then evaluate), and on
2 CPU cores compiling is a large share of the suite's time. A fresh clone starts with it empty.
Cache keys include the program, the flags and the jax version, so a hit is the same executable.

The tests also compile for speed of compiling (`TEST_XLA_FLAGS`): XLA's backend optimisation
level 0, its older CPU code emitters (`--xla_cpu_use_fusion_emitters=false`) and no expensive
LLVM passes. Their programs are tiny and run for a few steps, so the compiler's optimisations
cost far more than they save: on three compile-bound test files the flags take 63 CPU-s to 38
(level 0 alone already halves the vegetation train step's compile). The numbers stay float32
arithmetic of the same graph; every comparison a test makes (bitwise resume, one process
against two, bundle against checkpoint) is between programs compiled with the same flags. The
one comparison between two differently built programs that must agree bit for bit (weather's
resident and streamed steps) runs in its own process with XLA's default emitters
(`DEFAULT_EMITTER_FLAGS`, `tests/core/scripts_util.rerun_test_with_xla_flags`).
"""

import collections
import os
import pathlib

import pytest

# Flags of every test process and of the scripts the tests launch (tests/core/scripts_util.py);
# JAXLAB_TEST_XLA_FLAGS=" " runs the suite at XLA's defaults. Measured on the whole suite, level
# 0 is cheaper (1,645 against 1,929 test-seconds) and the emitter and LLVM flags cut its wall
# time again from 558 to 454 s; a long, execution-bound learning run is the exception, so
# tests/sales/test_weekly_pattern.py runs its training in a subprocess at the default level on
# 1 device (66 against 221 CPU-seconds).
DEFAULT_EMITTER_FLAGS = "--xla_backend_optimization_level=0"
TEST_XLA_FLAGS = os.environ.get(
    "JAXLAB_TEST_XLA_FLAGS",
    f"{DEFAULT_EMITTER_FLAGS} --xla_cpu_use_fusion_emitters=false"
    " --xla_llvm_disable_expensive_passes=true",
)

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "xla-tests"),
)


def pin_config_meshes(monkeypatch, num_devices: int) -> None:
    """Meshes made from a config (`mesh.make_mesh(axes)`, no devices given) span the first
    `num_devices` of the 8 fake devices; meshes given their devices are left alone.

    For tests whose subject is learning, files or resume, not sharding: one step of a tiny model
    split over 8 fake CPU devices costs several times the step on 2 (the sales GAN step: 184 ms
    on 8 devices against 33 ms on 1), with the same global batch and the same arithmetic.
    """
    import jax

    from jaxlab.core import mesh as mesh_lib

    make_mesh = mesh_lib.make_mesh

    def first_devices(axes, devices=None):
        return make_mesh(axes, jax.devices()[:num_devices] if devices is None else devices)

    monkeypatch.setattr(mesh_lib, "make_mesh", first_devices)


@pytest.fixture
def two_devices(monkeypatch):
    """`pin_config_meshes(monkeypatch, 2)` for one test."""
    pin_config_meshes(monkeypatch, 2)


def pytest_collection_modifyitems(items):
    """Files holding slow tests run first, then files by their number of tests. `make test` hands
    each file to the next free xdist worker (`--dist loadfile --no-loadscope-reorder`, so in this
    order): starting with the long files and ending with short ones lets the two workers finish
    together, where xdist's own order (by number of tests) left a one-test file of 40 s for last
    (the workers ended 53 s apart). Each file's tests keep their order."""
    first = {}
    count = collections.Counter(item.path for item in items)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    for index, item in enumerate(items):
        first.setdefault(item.path, index)
    items.sort(key=lambda item: (item.path not in slow, -count[item.path], first[item.path]))
