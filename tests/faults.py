"""Planted faults for the parity checker's diagnosis tests.

Module-level functions so that they pickle into the backend worker processes. Each takes the built
native model and returns it with one deliberate mistake in one named block.
"""

from __future__ import annotations

import os


def torch_scale_layer3_1(model):
    """A wrong weight in layer3.1 (5% too large)."""
    import torch

    with torch.no_grad():
        model.get_submodule("layer3.1.conv2").weight.mul_(1.05)
    return model


def onnx_shift_padding_layer2_0(model):
    """A wrong padding in layer2.0's 3x3 conv: pads (t,l,b,r) = (2,2,0,0) instead of (1,1,1,1) keeps
    the shape but shifts the window, the classic asymmetric-'same' mismatch."""
    for node in model.graph.node:
        if node.op_type == "Conv" and "layer2.0.conv2.weight" in node.input:
            for attr in node.attribute:
                if attr.name == "pads":
                    del attr.ints[:]
                    attr.ints.extend([2, 2, 0, 0])
            return model
    raise AssertionError("layer2.0.conv2 not found")


def tf_scale_layer1_1(model):
    """A wrong weight in layer1.1 of the Keras model."""
    from resnet_spec.backends.keras import tf as tf_backend

    layer = model.get_layer(tf_backend.layer_name("layer1.1.conv1"))
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel * 1.05, *rest])
    return model


def crash(model):
    """The worker dies as if a native library segfaulted."""
    os.abort()


def ready_worker_init():
    """A worker initializer for signal tests: the real one, then the worker's pid written to the FIFO
    named by RESNET_SPEC_TEST_READY, so that a test signals the parent only once a worker is running."""
    from resnet_spec import isolate

    isolate._worker_init()  # in the worker, the module is freshly imported: the real initializer
    try:  # non-blocking: a later worker (the test reads only the first pid) must not wait for a reader
        fd = os.open(os.environ["RESNET_SPEC_TEST_READY"], os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: the test no longer reads the FIFO
        return
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    except BrokenPipeError:  # a second worker, started at the same time, lost the race to the reader
        pass
    finally:
        os.close(fd)


def keras_bn_momentum_unconverted(model):
    """The classic port bug: PyTorch's BN momentum m used as Keras' momentum (which is 1 - m)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 1.0 - layer.momentum
    return model


def torch_block_gradient_layer2_0_conv1(model):
    """A gradient-blocking op: layer2.0.conv1's output is detached (same forward, no backward)."""
    model.get_submodule("layer2.0.conv1").register_forward_hook(lambda _m, _i, out: out.detach())
    return model


def torch_grad_off_by_1pct_layer3_2_conv2(model):
    """A small backward-only fault: layer3.2.conv2's weight gradient 1% too large (forward unchanged).
    Below 2e-2 of the model's largest gradient, so only a float32-sized check against float64 sees it."""
    model.get_submodule("layer3.2.conv2").weight.register_hook(lambda grad: grad * 1.01)
    return model


def aten_capability(_model=None):
    """In a worker: the SIMD level ATen's CPU kernels run at (ATEN_CPU_CAPABILITY, else the machine's)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def fifo_open(path: str, mode: str, fail: bool = False):
    """In a worker: open the FIFO ``path`` for reading ('r') or writing ('w'), which blocks until another
    process opens the other end -- so two workers return only when both ran at the same time. A
    watchdog (SIGALRM, default action: the worker dies) bounds the wait. ``fail``: raise at once."""
    import signal

    if fail:
        raise ValueError("worker failed on purpose")
    signal.alarm(120)
    fd = os.open(path, os.O_RDONLY if mode == "r" else os.O_WRONLY)
    os.close(fd)
    return os.getpid()
