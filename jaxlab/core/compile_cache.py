"""A persistent XLA compilation cache for `jaxlab train` and `jaxlab bench` (opt-out).

Compiling a ViT-B/16 train step takes ~10 s on a 2-core CPU and a second process that finds the
executable in JAX's persistent cache loads it in ~1.4 s. The cache key covers the program, the
compile options, the XLA flags, the backend and the jax/jaxlib versions, so a hit is the same
executable that compiling would have produced: a cache changes start-up time, never results.

Where the cache lives, first match wins:
  1. `JAXLAB_NO_COMPILE_CACHE=1` (or true/yes): no cache is enabled by jaxlab.
  2. `enable(cache_dir=...)`: that folder.
  3. A cache folder already set for JAX (the `JAX_COMPILATION_CACHE_DIR` environment variable or
     `jax.config.update("jax_compilation_cache_dir", ...)`, as the tests do): left as it is.
  4. `$XDG_CACHE_HOME/jaxlab/xla`, i.e. `~/.cache/jaxlab/xla` by default.

Usage (before the first compilation in the process):

    from jaxlab.core import compile_cache
    compile_cache.enable()
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import jax
from absl import logging

OPT_OUT_ENV = "JAXLAB_NO_COMPILE_CACHE"
_TRUE = ("1", "true", "yes", "on")


def opted_out(environ: Mapping[str, str] | None = None) -> bool:
    """True when `JAXLAB_NO_COMPILE_CACHE` is set to 1/true/yes/on."""
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_ENV, "").strip().lower() in _TRUE


def default_cache_dir(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """`$XDG_CACHE_HOME/jaxlab/xla`, or `~/.cache/jaxlab/xla` when XDG_CACHE_HOME is unset."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "jaxlab" / "xla"


def resolve_cache_dir(
    cache_dir: str | os.PathLike | None = None,
    *,
    current: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> pathlib.Path | None:
    """Which folder `enable` uses (None: opted out); see the module docstring for the order.

    `current` is JAX's cache folder already configured (`jax.config.jax_compilation_cache_dir`).
    """
    if opted_out(environ):
        return None
    if cache_dir is not None:
        return pathlib.Path(cache_dir).expanduser()
    if current:
        return pathlib.Path(current)
    return default_cache_dir(environ)


def enable(cache_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache; returns its folder, or None when opted out.

    Creates the folder. Call before the first compilation: JAX initialises its cache once per
    process, at the first compile.
    """
    path = resolve_cache_dir(cache_dir, current=jax.config.jax_compilation_cache_dir)
    if path is None:
        logging.info("Compilation cache: off (%s is set).", OPT_OUT_ENV)
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home must not stop training: run without the cache
        logging.warning("Compilation cache: cannot create %s (%s); running without it.", path, e)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    logging.info("Compilation cache: %s (set %s=1 to turn it off).", path, OPT_OUT_ENV)
    return path
