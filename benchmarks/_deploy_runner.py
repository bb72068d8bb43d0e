"""Run jobs in one runtime venv (self-contained: numpy + the runtime, plus backends/onnx/probe.py by path).

    python _deploy_runner.py JOBS.tsv

Each line of JOBS.tsv is ``kind<TAB>model<TAB>x.npy<TAB>out.npz``; kinds: ``ort`` (every ORT level),
``onnxoptimizer`` (fuse-and-elimination passes, then every ORT level), ``onnxsim`` (simplified, then
ORT disable and all), ``openvino`` (CPU, f32 inference precision), ``tflite`` (LiteRT interpreter).
``out.npz`` maps ``<run>`` to logits, or ``<run>/error`` to a message; ``versions`` names the runtime.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("onnx_probe", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backends", "onnx", "probe.py"))
onnx_probe = importlib.util.module_from_spec(_spec)  # by path: its folder must not go on sys.path
_spec.loader.exec_module(onnx_probe)


def _ort_levels(model, x, prefix, levels=onnx_probe.LEVELS) -> dict:
    out = {}
    for lv in levels:
        try:
            out[f"{prefix}{lv}"] = next(iter(onnx_probe.run_ort(model, x, lv).values()))
        except Exception as exc:  # noqa: BLE001
            out[f"{prefix}{lv}/error"] = np.array(f"{type(exc).__name__}: {exc}"[:300])
    return out


def run_job(kind: str, model: str, x: np.ndarray) -> dict:
    if kind == "ort":
        return {**_ort_levels(model, x, ""), "versions": np.array(onnx_probe.versions())}
    if kind == "onnxoptimizer":
        return {**_ort_levels(onnx_probe.onnxoptimizer_bytes(model), x, ""),
                "versions": np.array(onnx_probe.versions())}  # names onnxruntime and onnxoptimizer
    if kind == "onnxsim":
        import onnx
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx.load(model))
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
        return {**_ort_levels(simplified.SerializeToString(), x, "", ("disable", "all")),
                "versions": np.array(f"onnxsim {onnxsim.__version__}, {onnx_probe.versions()}")}
    if kind == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return {"f32": np.asarray(compiled(x)[compiled.output(0)]), "versions": np.array(f"openvino {ov.__version__}")}
    if kind == "tflite":
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=model)
        inp = it.get_input_details()[0]
        xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        it.resize_tensor_input(inp["index"], list(xin.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], xin)
        it.invoke()
        return {"litert": it.get_tensor(it.get_output_details()[0]["index"]),
                "versions": np.array(f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}")}
    raise ValueError(f"unknown job kind {kind!r}")


def main(argv) -> int:
    for line in open(argv[0]):
        kind, model, xpath, out = line.rstrip("\n").split("\t")
        try:
            res = run_job(kind, model, np.load(xpath))
        except Exception as exc:  # noqa: BLE001 - one failing job must not hide the others
            res = {"job/error": np.array(f"{type(exc).__name__}: {exc}"[:300])}
        np.savez(out, **res)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
