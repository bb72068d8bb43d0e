"""Data-parallel training of the generated models on the frameworks' own engines (README recipe).

* PyTorch DistributedDataParallel, gloo, two CPU processes, each with half the batch. DDP averages the
  gradients; BatchNorm normalizes per replica (SyncBatchNorm needs CUDA), so the one-process
  reference runs the same two half-batches through one model and averages their losses.
* Keras on JAX, ``keras.distribution.DataParallel`` over two host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), batch sharded: one SPMD program over the
  global batch, so BN statistics are those of the whole batch and the reference is plainly one device
  with the whole batch.

Tolerance: gradients agree to float32 summation-order noise on resnet20 (32x32, well conditioned):
1e-5 of each tensor's scale, floored at 1e-3 of the model's largest gradient.
"""

from __future__ import annotations

import socket

import dist_checks
import numpy as np
import pytest

import resnet_spec
from resnet_spec.backends import keras_model
from resnet_spec.isolate import run_isolated
from resnet_spec.parity import make_input
from resnet_spec.train_parity import _per_tensor, make_loss_weights
from resnet_spec.weights import init_weights

torch = pytest.importorskip("torch")
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    net = resnet_spec.load("resnet20")
    return net, init_weights(net, seed=0, random_bn=True), make_input(net, 4, 0), make_loss_weights(net, 4, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two DDP processes (torch.multiprocessing.spawn)
def test_torch_ddp_gradients_equal_one_process(case, tmp_path):
    import torch.multiprocessing as mp

    from resnet_spec.backends import torch_backend

    net, w, x, g = case
    mp.spawn(dist_checks.ddp_rank, args=(2, _free_port(), net.spec_yaml, w, x, g, str(tmp_path)), nprocs=2)
    ddp = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]
    model = dist_checks._no_dropout_train(torch_backend.build(net, w))
    loss = sum((model(torch.from_numpy(x[i:i + 2])) * torch.from_numpy(g[i:i + 2])).sum() / 2 for i in (0, 2)) / 2
    loss.backward()
    ref = {k: p.grad.numpy() for k, p in model.named_parameters()}
    assert sorted(ddp[0]) == sorted(ref)
    for rank in ddp:  # every rank holds the same averaged gradients
        worst = _per_tensor(ref, rank, 1e-3)[0]
        assert worst[1] < TOL, worst


# slow: a Keras-on-JAX worker process
@pytest.mark.slow
@pytest.mark.skipif(keras_model.missing("jax") is not None, reason="JAX is not installed")
def test_keras_jax_data_parallel_gradients_equal_one_device(case):
    net, w, x, g = case
    r = run_isolated(dist_checks.jax_data_parallel, net.spec_yaml, w, x, g)
    assert r["devices"] == 2 and r["input_devices"] == 2  # the batch really was split over two devices
    assert sorted(r["parallel"]) == sorted(r["single"])
    worst = _per_tensor(r["single"], r["parallel"], 1e-3)[0]
    assert worst[1] < TOL, worst
    assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5 * max(1.0, abs(r["loss"][0]))
