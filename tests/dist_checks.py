"""Worker functions for tests/test_distributed.py (data-parallel training on the frameworks' engines).

``ddp_rank`` runs as one rank of a torch.distributed (gloo) group; ``jax_data_parallel`` runs in a fresh
process with two host devices for JAX (XLA_FLAGS is read at JAX import).
"""

from __future__ import annotations

import os

import numpy as np


def _no_dropout_train(model):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif type(m).__name__ == "DropPath":
            m.rate = 0.0
    return model.train()


def ddp_rank(rank, world, port, spec_yaml, weights, x, g, out_dir):
    """One DDP rank: its shard of the batch, loss sum(logits * g) / n_local, backward; rank 0 saves grads."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from resnet_spec import load
    from resnet_spec.backends.torch import backend as torch_backend
    from resnet_spec.resolve import UNCHECKED

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DDP(_no_dropout_train(torch_backend.build(load(spec_yaml, UNCHECKED), weights)))
        n = x.shape[0] // world
        xs, gs = (torch.from_numpy(a[rank * n:(rank + 1) * n].copy()) for a in (x, g))
        loss = (model(xs) * gs).sum() / n
        loss.backward()  # DDP all-reduces (averages) the gradients over the ranks here
        grads = {k: p.grad.numpy() for k, p in model.module.named_parameters()}
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **grads)
    finally:
        dist.destroy_process_group()


def jax_data_parallel(spec_yaml, weights, x, g):
    """Keras on JAX: gradients of the training step on one device with the whole batch, and under
    keras.distribution.DataParallel over two host devices with the batch sharded."""
    # Two host devices. XLA's CPU all-reduce ends the process when one device's thread has not joined
    # the collective within 40 s, which happened on the loaded 2-core CI machine (both devices' threads
    # share the cores with the other xdist worker): wait up to 3 minutes instead (the test's verdict
    # does not depend on timing; a real hang still ends, as a crashed worker).
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                               "--xla_cpu_collective_call_terminate_timeout_seconds=180 "
                               "--xla_cpu_collective_call_warn_stuck_timeout_seconds=120")
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras

    from resnet_spec import load
    from resnet_spec.backends import training
    from resnet_spec.backends.keras.backend import Leg
    from resnet_spec.backends.keras.model import build
    from resnet_spec.resolve import UNCHECKED

    net = load(spec_yaml, UNCHECKED)
    single, _ = training.keras_step(Leg("jax"), net, weights, x, g)
    devices = jax.devices("cpu")
    dist = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(dist)
    model = build(net, weights, backend="jax")
    feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    sharded = keras.distribution.distribute_tensor(feed, dist.get_data_layout(feed.shape))
    logits, loss, grads = _jitted_grads(keras, model, sharded, g)
    grads = {v.path: np.asarray(gr) for v, gr in zip(model.trainable_variables, grads)}
    return {"single": single["grads"], "parallel": training._canonical_grads(net, model, grads),
            "devices": len(devices), "input_devices": len(sharded.sharding.device_set),
            "loss": (single["loss"], float(loss))}


def _jitted_grads(keras, model, feed, g):
    """The training step's logits, loss and gradients as one jitted SPMD program over the sharded batch.
    Run eagerly (``training._jax_grads``, what parity's JAX leg does on one device), every op on the
    sharded arrays is a program of its own with its own collectives; under load on the 2-core machine one
    such eager step waited on its collective for ten minutes (a whole-suite run, 2026-12-07)."""
    import jax

    from resnet_spec.backends import training

    def f(tv, ntv, x):
        outs, ntv = model.stateless_call(tv, ntv, x, training=True)
        outs = training._listed(outs)
        return training._loss(keras, outs[0], g), (outs, ntv)

    step = jax.jit(jax.value_and_grad(f, has_aux=True))
    (loss, (outs, frozen)), grads = step([v.value for v in model.trainable_variables],
                                         [v.value for v in model.non_trainable_variables], feed)
    for v, value in zip(model.non_trainable_variables, frozen):
        v.assign(value)
    return outs, loss, grads
