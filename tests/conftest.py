"""Every test process sees 8 fake CPU devices; this must run before jax is imported.

Test processes (both xdist workers and the scripts the tests launch, which inherit the
environment) share a persistent XLA compilation cache under `.cache/xla-tests` in the checkout:
many tests compile the same train step again (resume after SIGTERM, train then evaluate), and on
2 CPU cores compiling is a large share of the suite's time. A fresh clone starts with it empty.
Cache keys include the program, the flags and the jax version, so a hit is the same executable.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(__file__).resolve().parents[1] / ".cache" / "xla-tests"),
)
