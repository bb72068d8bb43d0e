"""docs/deployment.md from the deployment matrix's JSON (benchmarks/deploy_matrix.py)."""

from __future__ import annotations

import os
import platform
import time

from resnet_spec.verify import INT8_TOL

OUTPUTS = ("onnx", "onnx-f16", "onnx-int8", "tflite", "tflite-f16", "tflite-int8")
#: resnet_spec.parity / resnet_spec.verify: every file by max rel (int8: verify.INT8_TOL; the top-1 agreement
#: is shown beside int8 cells, not judged)
TOL = {"onnx": 1e-4, "onnx-f16": 1e-2, "onnx-int8": INT8_TOL, "tflite": 1e-4, "tflite-f16": 1e-2,
       "tflite-int8": INT8_TOL}
TOP1 = ("onnx-int8", "tflite-int8")  # outputs whose cells show the top-1 agreement
_COUNT = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

BEFORE = ("Before the fix (graph with `Pad(0) -> MaxPool` in the V2 stem; tests/test_deploy.py on that graph, "
          "keras_resnet50v2 at 64 px, 4 images): onnxruntime 1.31.1 at basic, extended and all, and onnxoptimizer's "
          "passes at disable, basic and extended (the printed list was cut there): max rel 4.43e-3, top-1 4/4 (FAIL); "
          "1.31.1 at disable and the installed 1.32.0 at every level: within "
          "1e-5. The issue reports the same fault for 1.17.3-1.31.1 at 224 px (3.3e-4 to 5.9e-4).")

# Findings of the last run, written by hand after investigating them (see the summary's figures).
FINDINGS = (
    "**Finding (fixed): onnxruntime 1.29.0 computes a float16 `Gemm` with float16 accumulation.** On the "
    "older float16 files (plain float16 classifier `Gemm`) its cells were 7.5e-4 to 1.3e-2, over the 1e-2 "
    "tolerance on seven entries, at every level, against <= 6.2e-4 in every other release. Cause, found by "
    "running the float16 files of resnet20 and keras_resnet50v2 with every node's output exposed in 1.28.0 and "
    "1.29.0: every node gives bit-identical outputs in both except the final `Gemm`, and 1.29.0's `Gemm` output "
    "is bit-identical to a sequential float16 multiply-add over the K inputs (numpy simulation), while 1.28.0's "
    "is the float16 rounding of the exact product. Fix (backends/onnx/fp16.py): the float16 file computes the "
    "classifier in float32 (Casts up; with float32 I/O the `Gemm` writes the float32 logits directly). The "
    "float16 cells of this table were measured with the first version of that fix (logits still rounded to "
    "float16, hence figures up to 9.7e-4, identical in every release); the final version, spot-checked in "
    "1.29.0 and 1.32.0 at every level: resnet32 3.0e-4, seresnet50 4.0e-4, wrn_28_10 7.1e-4, the same in both "
    "releases. tests/test_deploy.py runs 1.29.0 (1.09e-2 without the fix). onnxruntime 1.30.0 was not measured.")


def machine() -> str:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def environment() -> str:
    """Versions of the packages that make the files and the reference (this process, not the venvs)."""
    from importlib import metadata

    out = []
    for pkg in ("numpy", "torch", "onnx", "tensorflow", "tensorflow-cpu", "keras"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def passed(c, out) -> bool:
    """A measured cell of output ``out`` within its tolerance."""
    return "error" not in c and c["rel"] <= TOL[out]


def _cell(c, out) -> str:
    if c is None:
        return "—"
    if "error" in c:
        return "error"
    text = f"{c['rel']:.1e}" + (f" ({c['top1']:.0%})" if out in TOP1 else "")
    return text + ("" if passed(c, out) else " **FAIL**")


def _rows(results) -> list:
    from resnet_spec.spec import zoo_names

    zoo = zoo_names()
    keys = [k for k in results if not k.startswith("_")]
    rank = {n: i for i, n in enumerate(zoo + [k.split(" | ")[0] for k in keys if k.split(" | ")[0] not in zoo])}
    return sorted(keys, key=lambda k: (rank[k.split(" | ")[0]], OUTPUTS.index(k.split(" | ")[1])))


def _coverage(results, rows) -> str:
    """Which entries and outputs were measured, and which cells the others of the same output have that an
    entry lacks."""
    from resnet_spec.spec import zoo_names

    names = list(dict.fromkeys(r.split(" | ")[0] for r in rows))
    zoo = zoo_names()
    outs = [o for o in OUTPUTS if any(r.endswith(f" | {o}") for r in rows)]
    cols = {o: set().union(*(results[r] for r in rows if r.endswith(f" | {o}"))) for o in outs}
    gaps = []
    for n in names:
        for o in outs:
            lack = sorted(cols[o] - set(results.get(f"{n} | {o}", {})))
            if lack:
                gaps.append(f"{n} {o}: {', '.join(lack)}")
    again = " (running the same command again measures only the missing cells)"
    unrunnable = results.get("_unrunnable", {})
    waiting = [n for n in zoo if n not in names and n not in unrunnable]
    text = (f"Entries: the whole zoo ({len(zoo)})" if set(zoo) <= set(names) else
            f"Entries: {len(names)} of the zoo's {len(zoo)}" + (f"; not measured yet: {', '.join(waiting)}"
                                                               if waiting else ""))
    if unrunnable:
        text += "; not runnable at this size: " + "; ".join(f"{n} ({why})" for n, why in unrunnable.items())
    if len(outs) < len(OUTPUTS):
        text += f"; outputs not measured: {', '.join(o for o in OUTPUTS if o not in outs)}"
    if gaps:
        text += f"; cells not measured yet: {'; '.join(gaps)}"
    if set(zoo) <= set(names) and not gaps and len(outs) == len(OUTPUTS):
        return text + f", each with its {_COUNT.get(len(OUTPUTS), len(OUTPUTS))} outputs."
    return text + again + "."


def _worst_rows(results, rows, cols) -> list:
    """One table row per output: the largest figure of each column (an error counts as worst)."""
    lines = []
    for out in OUTPUTS:
        cells = []
        for c in cols:
            vals = [results[r].get(c) for r in rows if r.endswith(f" | {out}")]
            vals = [v for v in vals if v is not None]
            if not vals:
                cells.append("—")
            elif any("error" in v for v in vals):
                cells.append("error")
            else:
                cells.append(_cell(max(vals, key=lambda v: v["rel"]), out))
        lines.append(f"| **worst** | {out} | " + " | ".join(cells) + " |")
    return lines


def _header(results, size, f16_note) -> list:
    return ["# Deployment matrix", "",
            "Generated by `python benchmarks/deploy_matrix.py` "
            f"({results.get('_date', time.strftime('%Y-%m-%d'))}). Each cell: max |y - ref| / max |ref| of the "
            "logits, where ref is the torch backend in float64 on the same seeded random weights (non-trivial BN "
            f"statistics) and the same input (batch 2). ImageNet entries at **{size} px** (reduced from 224: the "
            "run shares a 2-core machine), CIFAR entries at 32 px. Tolerances: float32 files 1e-4, float16 files "
            "1e-2, int8 files 0.2 (as `verify`; the int8 cells show in brackets the top-1 agreement over the 2 inputs, "
            "reported, not judged: within 0.2 a class can change only where the reference's two highest logits are "
            "closer than 0.4 of the scale, and random weights make such near-ties common); a cell outside its "
            "tolerance says **FAIL**. `—`: not run (a runtime that does not take that "
            f"output{f16_note}). Outputs: `onnx` (float32), `onnx-f16` (`--dtype float16`, float32 I/O), "
            "`tflite` (float32, from the Keras model), `tflite-f16` (`--dtype float16`: TFLite's float16 "
            "post-training quantization, float16 weights dequantized to float32 at run time, float32 I/O), "
            "`onnx-int8` and `tflite-int8` (`--dtype int8`: ONNX QDQ S8S8 per-channel, TFLite full-integer; both "
            "calibrated on convert's default 32 seeded synthetic images, float32 I/O). The "
            "`worst` rows at the end give each column's largest figure.", "",
            f"Machine: {results.get('_machine') or machine()}. Files and reference made with "
            f"{results.get('_env') or environment()}.", ""]


def _grouped(fails) -> str:
    """'row in runtime (level, level); ...' for the failing cells."""
    groups = {}
    for r, c in fails:
        runtime, _, level = c.partition(" / ")
        groups.setdefault((r.replace(" | ", " "), runtime), []).append(level)
    return "; ".join(f"{r} in {rt} ({', '.join(lv)})" for (r, rt), lv in groups.items())


def write_doc(results, path, size) -> None:
    rows = _rows(results)
    cols = list(dict.fromkeys(c for r in rows for c in results[r]))
    f16_cols = {c.split(" / ")[0] for r in rows if r.endswith(" | onnx-f16") for c in results[r]}
    ort_f16 = sorted(g.split()[1] for g in f16_cols if g.startswith("onnxruntime "))
    f16_note = f"; float16 files ran in onnxruntime {', '.join(ort_f16)} and the tools" if ort_f16 else ""
    fails = [(r, c) for r in rows for c, v in results[r].items() if not passed(v, r.split(" | ")[1])]
    lines = _header(results, size, f16_note) + [_coverage(results, rows), "", BEFORE, "",
                                                "Runtimes (each in its own venv from the registry):", ""]
    lines += [f"- {g}: {v}" for g, v in results.get("_versions", {}).items()]
    lines += [f"- {g}: not measured ({v})" for g, v in results.get("_skipped", {}).items()]
    n_cells = sum(len(results[r]) for r in rows)
    lines += ["", f"Summary: {n_cells} cells, {len(rows)} rows x {len(cols)} columns; "
              + (f"{len(fails)} over tolerance or failing: " + _grouped(fails) if fails
                 else "every cell within tolerance") + "."]
    if FINDINGS:
        lines += ["", FINDINGS]
    lines += ["", "| entry | output | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        name, out = r.split(" | ")
        lines.append(f"| {name} | {out} | " + " | ".join(_cell(results[r].get(c), out) for c in cols) + " |")
    lines += _worst_rows(results, rows, cols)
    errors = [(r, c, v["error"]) for r in rows for c, v in results[r].items() if "error" in v]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r}, {c}: {e}" for r, c, e in errors[:40]]
    kept = _kept(path)  # read before the file is truncated
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n" + kept)


#: the sections below this line in docs/deployment.md come from other benchmarks (benchmarks/int8.py)
#: and survive a regeneration of the matrix
KEPT = "<!-- kept: sections below are written by hand from other benchmarks; deploy_matrix.py keeps them -->"


def _kept(path) -> str:
    """What follows :data:`KEPT` in the existing file (with the marker), else nothing."""
    import os

    if not os.path.exists(path):
        return ""
    with open(path) as fh:
        text = fh.read()
    at = text.find(KEPT)
    return "" if at < 0 else "\n" + text[at:]
