"""Named random streams: one root key per run, one stream per purpose, one key per step.

Separating streams with bare integers (`fold_in(key, 3)`, `seed + 7`) makes two purposes collide
silently when someone picks the same number twice. Here a stream is named ("params", "dropout",
"noise", ...) and the name is hashed to a fixed 31-bit integer, so keys are stable across runs,
processes and releases, and a resumed run draws exactly the keys an uninterrupted one would.
"""

from __future__ import annotations

import zlib

import jax


def name_id(name: str) -> int:
    """The fixed integer a stream name folds in (crc32, 31 bits so it fits an int32)."""
    if not name:
        raise ValueError("A random stream needs a non-empty name.")
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def stream(seed: int | jax.Array, name: str, *indices: int | jax.Array) -> jax.Array:
    """The key of stream `name`, then folded with each index (step, member, case, ...).

    Args:
      seed: the run's `config.seed` (an int) or an existing key to derive from.
      name: what the randomness is for, e.g. "params", "dropout", "critic_noise".
      indices: integers (or traced int scalars inside jit) such as the step number; keys for step
        s are `fold_in(stream(seed, name), s)`, so they do not depend on the device count.
    """
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    key = jax.random.fold_in(key, name_id(name))
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key
