"""Running an ONNX model in ONNX Runtime on exactly the provider asked for (never a silent fallback)."""

from __future__ import annotations

import numpy as np

from ...errors import BackendUnavailable, ResNetSpecError
from ..legs import parse_device
from .graph import INPUT_NAME, OUTPUT_NAME, require

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised only without onnxruntime
    ort = None

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def make_session(model, *, device: str = "cpu", dtype: str = "float32", allow_tf32: bool = False,
                 optimization: str = "all", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model`` on exactly the requested provider.

    ``optimization``: ORT graph optimisation level ('disable', 'basic', 'extended', 'layout', 'all';
    ORT's default is 'all'). ``threads``: intra-op threads (None: ORT's default, one per physical
    core). Returns ``(session, device text)``. Never falls back to another provider: CUDA is only used
    when ``CUDAExecutionProvider`` is available, and then with CPU fallback disabled.
    """
    require(runtime=True)
    if dtype != "float32":
        raise BackendUnavailable(
            f"onnx: dtype {dtype!r} is not supported; the ONNX backend builds float32 graphs only (ONNX "
            "Runtime's CPU provider has no float16 Conv kernel and silently inserts casts to float32, so a "
            "reduced-precision run would not be what it claims)")
    opts = ort.SessionOptions()
    levels = [k for k, v in _OPT_LEVELS.items() if hasattr(ort.GraphOptimizationLevel, v)]
    if optimization not in levels:
        raise ResNetSpecError(f"onnx: unknown optimization level {optimization!r}; choose from {', '.join(levels)}")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    index = parse_device(device, "onnx")
    if index is None:
        provider, provider_opts = "CPUExecutionProvider", {}
    else:
        provider = "CUDAExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnx: CUDA was requested but onnxruntime {ort.__version__} offers only "
                f"{', '.join(ort.get_available_providers())} (install onnxruntime-gpu)")
        provider_opts = {"device_id": str(index), "use_tf32": "1" if allow_tf32 else "0"}
        # Without this ORT quietly runs nodes CUDA cannot take on the CPU.
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    source = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    sess = ort.InferenceSession(source, sess_options=opts, providers=[(provider, provider_opts)])
    got = sess.get_providers()
    if not got or got[0] != provider:
        raise BackendUnavailable(f"onnx: asked ONNX Runtime for {provider} but the session uses {got}")
    desc = f"{device} ({provider}), onnxruntime {ort.__version__}"
    return sess, desc


def run_session(sess, x: np.ndarray, tap_names=None) -> dict:
    """Run a session from :func:`make_session`; ``tap_names`` (when the model has taps) adds them."""
    names = [OUTPUT_NAME] + [t for t in (tap_names or ()) if t != "head"]
    res = sess.run(names, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    out = {"head": res[0]}
    out.update(zip(names[1:], res[1:]))
    return out
