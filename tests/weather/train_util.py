"""What the weather training tests share: a SIGTERM sent from inside the loop, the final
checkpointed state, and the per-step training rows of metrics.jsonl."""

import dataclasses
import os
import signal

import jax

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
