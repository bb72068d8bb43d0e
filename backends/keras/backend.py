"""The Keras model as a parity leg / backend on one Keras 3 backend: ``keras-tensorflow``,
``keras-jax``, ``keras-torch``, or ``keras`` (whichever backend is active).

A leg is a :class:`Leg` with the backend-module interface (``available``, ``versions``, ``build``,
``infer``). Keras reads ``KERAS_BACKEND`` once, at import, so a process runs one Keras backend; parity
runs every leg in its own worker process and :func:`select` sets the variable there before Keras is
imported. Nothing here imports TensorFlow unless the leg is ``keras-tensorflow``.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from ... import ir
from ...errors import BackendUnavailable, ResNetSpecError
from .model import DTYPES, KERAS_BACKENDS, build, keras_module, missing, tap_model
from ..legs import parse_device


def select(backend: str) -> None:
    """Make ``backend`` the Keras backend of this process (before Keras is imported); refuse when Keras
    already runs on another one."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
    keras_module(backend)


def tf_device_scope(device: str, allow_tf32: bool = False):
    """(tf.device context, description) for 'cpu' or 'cuda[:i]' with Keras on TensorFlow; never
    falls back to the CPU."""
    import tensorflow as tf

    if device == "cpu":
        return tf.device("/CPU:0"), "cpu"
    if device.startswith("cuda"):
        gpus = tf.config.list_physical_devices("GPU")
        try:
            idx = int(device.split(":", 1)[1]) if ":" in device else 0
        except ValueError:
            raise BackendUnavailable(f"tensorflow: unknown device {device!r}") from None
        if not gpus:
            build = tf.sysconfig.get_build_info()
            raise BackendUnavailable(
                "tensorflow: CUDA was requested but TensorFlow sees no GPU (tf.config.list_physical_devices"
                f"('GPU') is empty; tensorflow {tf.__version__}, built with CUDA: "
                f"{bool(build.get('is_cuda_build'))})")
        if idx >= len(gpus):
            raise BackendUnavailable(f"tensorflow: {device} requested but only {len(gpus)} GPU(s) are visible")
        tf.config.experimental.enable_tensor_float_32_execution(bool(allow_tf32))
        details = tf.config.experimental.get_device_details(gpus[idx])
        desc = f"cuda:{idx} ({details.get('device_name', 'GPU')}), TF32 {'on' if allow_tf32 else 'off'}"
        return tf.device(f"/GPU:{idx}"), desc
    raise BackendUnavailable(f"tensorflow: unknown device {device!r}")


def _jax_scope(device: str, allow_tf32: bool):
    import jax

    if device == "cpu":
        dev, desc = jax.devices("cpu")[0], "cpu"
    else:
        idx = _index(device, "keras-jax")
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise BackendUnavailable(f"keras-jax: CUDA was requested but JAX sees no GPU (jax {jax.__version__}, "
                                     f"default backend {jax.default_backend()!r}; install jax[cuda12] or jax[cuda13])")
        if idx >= len(gpus):
            raise BackendUnavailable(f"keras-jax: {device} requested but only {len(gpus)} GPU(s) are visible")
        dev = gpus[idx]
        desc = f"cuda:{idx} ({dev.device_kind}), TF32 {'on' if allow_tf32 else 'off'}"
    stack = contextlib.ExitStack()
    stack.enter_context(jax.default_device(dev))
    # float32 matmuls/convs on NVIDIA GPUs default to TF32 in JAX; 'highest' is true float32
    stack.enter_context(jax.default_matmul_precision("tensorfloat32" if allow_tf32 else "highest"))
    return stack, desc


def _torch_scope(device: str, allow_tf32: bool):
    import torch

    keras = keras_module()
    if device == "cpu":
        return keras.device("cpu"), "cpu"
    idx = _index(device, "keras-torch")
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"keras-torch: CUDA was requested but torch {torch.__version__} sees no GPU")
    if idx >= torch.cuda.device_count():
        raise BackendUnavailable(f"keras-torch: {device} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    desc = f"cuda:{idx} ({torch.cuda.get_device_name(idx)}), TF32 {'on' if allow_tf32 else 'off'}"
    return keras.device(f"cuda:{idx}"), desc


def _index(device: str, leg: str) -> int:
    """The GPU index of a non-CPU ``device`` (the callers handle 'cpu' first)."""
    index = parse_device(device, leg)
    if index is None:
        raise BackendUnavailable(f"{leg}: unknown device {device!r}")
    return index


def to_numpy(t) -> np.ndarray:
    return np.asarray(keras_module().ops.convert_to_numpy(t)).astype(np.float32)


def _unsupported(exc: Exception) -> bool:
    """A backend's 'this dtype/device has no kernel' error (as opposed to a bug of ours)."""
    name, text = type(exc).__name__, str(exc)
    return name in ("UnimplementedError", "NotFoundError") or "not implemented for" in text or "UNIMPLEMENTED" in text


class Leg:
    """The Keras model on Keras backend ``backend`` ('tensorflow', 'jax', 'torch'; None: the active one)."""

    def __init__(self, backend: str | None = None):
        if backend is not None and backend not in KERAS_BACKENDS:
            raise ResNetSpecError(f"unknown Keras backend {backend!r}; choose from {', '.join(KERAS_BACKENDS)}")
        self.backend = backend
        self.NAME = f"keras-{backend}" if backend else "keras"

    def active(self) -> str:
        return self.backend or keras_module().backend.backend()

    def available(self) -> str | None:
        return missing(self.backend or os.environ.get("KERAS_BACKEND", "tensorflow"))

    def versions(self) -> str:
        keras = keras_module(self.backend)
        b = self.active()
        mod = __import__(KERAS_BACKENDS[b])
        return f"{b} {mod.__version__} / keras {keras.__version__}"

    def build(self, net: ir.Network, weights=None, **options):
        return build(net, weights, backend=self.backend, **options)

    def device_scope(self, device: str, allow_tf32: bool = False):
        """(context, description) placing work on 'cpu' or 'cuda[:i]'; never falls back to the CPU."""
        b = self.active()
        if b == "tensorflow":
            return tf_device_scope(device, allow_tf32)
        return (_jax_scope if b == "jax" else _torch_scope)(device, allow_tf32)

    def infer(self, net: ir.Network, weights, x: np.ndarray, *, device: str = "cpu", dtype: str = "float32",
              taps: bool = False, mutate=None, allow_tf32: bool = False, data_format: str = "channels_last"):
        """Run the model in inference mode on NCHW ``x``: ({'head': logits, [taps]}, device description).

        ``mutate(model) -> model`` is applied to the built model first (planted-fault tests)."""
        keras_module(self.backend)
        scope, desc = self.device_scope(device, allow_tf32)
        if dtype not in DTYPES:
            raise BackendUnavailable(f"{self.NAME}: unsupported dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        x = check_input(net, x)
        with scope:
            model = build(net, weights, data_format=data_format, dtype=dtype, backend=self.backend)
            if mutate is not None:
                model = mutate(model) or model
            run = tap_model(net, model) if taps else model
            feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if data_format == "channels_last" else x)
            try:
                outs = self._call(net, run, feed)
            except Exception as exc:  # noqa: BLE001 -- only kernel-missing errors are translated
                if not _unsupported(exc):
                    raise
                raise BackendUnavailable(f"{self.NAME}: {dtype} on {desc} is not supported here: "
                                         f"{str(exc).strip().splitlines()[0][:200]}") from None
            result = _outputs(net, outs, taps)
        return result, f"{desc}, {self.versions()}"

    def _call(self, net, run, feed):
        call = lambda t: run(t, training=False)  # noqa: E731
        if self.active() == "tensorflow" and any(isinstance(op, ir.CONVS) and op.groups > 1 for op in net.all_ops()):
            # TF runs each grouped conv as its own XLA function (its CPU kernel lacks groups); traced once
            # inside one tf.function instead of re-traced at every eager call.
            import tensorflow as tf

            call = tf.function(call)
        return call(feed)


def check_input(net: ir.Network, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(net.input_shape):
        raise ResNetSpecError(f"input of shape {x.shape} does not match the spec's "
                              f"(N, {', '.join(map(str, net.input_shape))})")
    return x


def _outputs(net: ir.Network, outs, taps: bool) -> dict:
    if not taps:
        return {"head": to_numpy(outs)}
    result = {}
    for tap, out in zip(net.tap_names(), outs):
        arr = to_numpy(out)
        result[tap] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2)) if arr.ndim == 4 else arr
    return result


def load_keras(path: str):
    """Load a ``.keras`` file (``verify``'s, the import's) on the active Keras backend (any of the three),
    after the checks of :func:`resnet_spec.archive.check_keras_model` (archive budgets, the allow-list of
    classes, the variables its config declares) made on the file opened once here; Keras then reads that
    same open file (:func:`same_file`), and never compiles it (``compile_config`` is not deserialized)."""
    from ...archive import check_keras_model
    from ...fileio import open_regular
    from .model import custom_objects, deep_recursion

    with open_regular(path) as fh:  # a FIFO or a link to /dev/zero is refused before Keras opens it
        layers = check_keras_model(path, fh=fh)
        keras = keras_module()
        with same_file(path, fh) as checked, deep_recursion(layers):  # ResNet-1202 needs the recursion
            return keras.saving.load_model(checked, custom_objects=custom_objects(), compile=False)


@contextlib.contextmanager
def same_file(path: str, fh, name: str = "model.keras"):
    """A path that opens the file open as ``fh``: on Linux a link ``name`` (Keras goes by the suffix:
    ``.keras``, ``.weights.h5``) to ``/proc/self/fd/N`` in a private folder, so Keras reads what was
    checked even if ``path`` is replaced meanwhile; elsewhere ``path`` itself."""
    import tempfile

    fd_path = f"/proc/self/fd/{fh.fileno()}"
    if not os.path.exists(fd_path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="resnet-spec-keras-") as tmp:
        link = os.path.join(tmp, name)
        os.symlink(fd_path, link)
        yield link
