"""Run one ONNX file in whatever ONNX Runtime (and onnxoptimizer) the running Python has.

Self-contained on purpose: it imports only numpy, onnxruntime and (for ``--onnxoptimizer``) onnx and
onnxoptimizer, never resnet_spec, so that it can run as a script in a throw-away venv holding an
older onnxruntime (tests/test_deploy.py, benchmarks/deploy_matrix.py) as well as in a verify worker::

    python backends/onnx/probe.py MODEL.onnx X.npy OUT.npz [--levels disable,basic,extended,all]
                         [--onnxoptimizer] [--outputs logits,stem,...]

``OUT.npz`` holds one array per run and output, keyed ``<run>/<output>``: runs are ``ort-<level>``
and, with ``--onnxoptimizer``, ``onnxoptimizer-<level>`` (the file after onnxoptimizer's
fuse-and-elimination passes, then run in ORT). A run that fails stores its message under
``<run>/error`` (a 0-d string array). ``versions`` holds the runtime versions.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run by path: inspect.py/io.py beside it must not shadow the stdlib
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import numpy as np

LEVELS = ("disable", "basic", "extended", "all")
_ORT_LEVEL = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def session(model, level: str, *, device: str = "cpu"):
    """An ORT session on exactly ``device``'s provider (CUDA: TF32 off, no CPU fallback)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVEL[level])
    opts.log_severity_level = 3
    if device == "cpu":
        providers = [("CPUExecutionProvider", {})]
    else:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                               f"(it offers {', '.join(ort.get_available_providers())}; install onnxruntime-gpu)")
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [("CUDAExecutionProvider", {"device_id": device.partition(":")[2] or "0", "use_tf32": "0"})]
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def run_ort(model, x: np.ndarray, level: str, outputs=None, device: str = "cpu") -> dict:
    """``{output name: array}`` for ``model`` (path or bytes) at ORT optimisation ``level``."""
    sess = session(model, level, device=device)
    names = list(outputs) if outputs else [o.name for o in sess.get_outputs()]
    inp = sess.get_inputs()[0]
    feed = x.astype(np.float16) if inp.type == "tensor(float16)" else x.astype(np.float32)
    return dict(zip(names, (np.asarray(a) for a in sess.run(names, {inp.name: feed}))))


def onnxoptimizer_bytes(path: str) -> bytes:
    """The model after onnxoptimizer's fuse-and-elimination passes (fuse_pad_into_pool among them)."""
    import onnx
    import onnxoptimizer

    model = onnx.load(path)
    return onnxoptimizer.optimize(model, onnxoptimizer.get_fuse_and_elimination_passes()).SerializeToString()


def versions() -> str:
    import onnxruntime as ort

    out = [f"onnxruntime {ort.__version__}"]
    try:
        import onnxoptimizer

        out.append(f"onnxoptimizer {getattr(onnxoptimizer, '__version__', '?')}")
    except ImportError:
        pass
    return ", ".join(out)


def probe(path: str, x: np.ndarray, levels=LEVELS, optimizer: bool = False, outputs=None) -> dict:
    """Every requested run of the module docstring as ``{key: array}``."""
    res = {"versions": np.array(versions())}
    runs = [(f"ort-{lv}", path, lv) for lv in levels]
    if optimizer:
        try:
            opt = onnxoptimizer_bytes(path)
            runs += [(f"onnxoptimizer-{lv}", opt, lv) for lv in levels]
        except Exception as exc:  # noqa: BLE001 - reported per run, never a crash of the probe
            res["onnxoptimizer/error"] = np.array(f"{type(exc).__name__}: {exc}")
    for key, model, level in runs:
        try:
            for name, arr in run_ort(model, x, level, outputs).items():
                res[f"{key}/{name}"] = arr
        except Exception as exc:  # noqa: BLE001
            res[f"{key}/error"] = np.array(f"{type(exc).__name__}: {exc}"[:500])
    return res


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("x")
    ap.add_argument("out")
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument("--onnxoptimizer", action="store_true")
    ap.add_argument("--outputs", default="")
    a = ap.parse_args(argv)
    res = probe(a.model, np.load(a.x), [lv for lv in a.levels.split(",") if lv], a.onnxoptimizer,
                [o for o in a.outputs.split(",") if o] or None)
    np.savez(a.out, **res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
