"""What the weather training tests share: a SIGTERM sent from inside the loop, the final
checkpointed state, the per-step training rows of metrics.jsonl, and memoised builders so the
training runs of one test module reuse their compiled programs."""

import dataclasses
import json
import os
import signal

import jax
import numpy as np

from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.weather import steps


def sigterm_after_step(monkeypatch, module, at_step):
    """The next `module.build` (`steps.build` or `train.build`) returns parts whose train step
    sends this process SIGTERM once step `at_step` is dispatched: the loop must checkpoint it
    and exit."""
    build = module.build

    def build_with_sigterm(*args, **kwargs):
        parts = build(*args, **kwargs)

        def step_then_signal(state, batch):
            out = parts.train_step(state, batch)
            if int(out[0].step) == at_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return dataclasses.replace(parts, train_step=step_then_signal)

    monkeypatch.setattr(module, "build", build_with_sigterm)


def final_state(config, workdir):
    """The latest checkpointed train state of `workdir`, on the host."""
    mesh = mesh_lib.make_mesh(config.mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    return jax.device_get(checkpoint.restore(manager, steps.build(config, mesh).abstract_state))


def train_rows(workdir):
    """{step: metrics row} of the training rows (those with a data checksum)."""
    return {m["step"]: m for m in read_metrics(workdir) if "data_checksum" in m}


def memoised_build(build):
    """`steps.build` returning one `Parts` per (config, mesh, residual scale): the runs of a test
    module reuse its jitted programs (a new `Parts` traces and compiles them again). The key
    leaves out `data.resident` and `data.resident_budget_mb`: they decide where the training
    data lives, not what `steps.build` builds (`train.build` adds the resident step)."""
    cache = {}

    def shared(config, mesh, residual_std=None, residual_mean=None, **kwargs):
        keyed = json.loads(config.to_json_best_effort())
        keyed["data"].pop("resident", None)
        keyed["data"].pop("resident_budget_mb", None)
        devices = tuple(d.id for d in mesh.devices.flat)
        scale = tuple(
            None if v is None else np.asarray(v).tobytes() for v in (residual_std, residual_mean)
        )
        key = (
            json.dumps(keyed, sort_keys=True),
            devices,
            mesh.axis_names,
            scale,
            tuple(kwargs.items()),
        )
        if key not in cache:
            cache[key] = build(config, mesh, residual_std, residual_mean, **kwargs)
        return cache[key]

    return shared


def memoised_resident_program(program):
    """`steps.resident_step_program` returning one jit per (parts, store layout): with
    `memoised_build`'s parts, resident runs over stores of one layout share a compiled step
    (each run still binds its own loaded store)."""
    cache = {}

    def shared(config, mesh, parts, crop, sharded, states_sharding):
        key = (id(parts), tuple(crop), sharded, states_sharding)
        if key not in cache:
            cache[key] = (parts, program(config, mesh, parts, crop, sharded, states_sharding))
        return cache[key][1]

    return shared
