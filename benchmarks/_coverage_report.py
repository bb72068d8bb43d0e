"""docs/family_coverage.md from the outcomes of benchmarks/family_coverage.py (kept in
docs/family_coverage.json): per family the counts of each route, the largest error, and a row for every model
that did not import with parity by every route it ran."""

from __future__ import annotations

import sys
import time

def _reason(source: str, message: str) -> str:
    """A refusal without the source's name in front (the table's row names it)."""
    for prefix in (f"{source} ", f"{source}: "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message.replace("|", "\\|")


def _counts(rows: list, route) -> dict:
    """{outcome: how many} of one route (``route(r)``: the outcome dict, or None where it was not run)."""
    counts = {}
    for _, r in rows:
        if route(r) is not None:
            status = route(r)["status"]
            counts[status] = counts.get(status, 0) + 1
    return counts


ROUTES = (("state dict", lambda r: r), ("ONNX file", lambda r: r.get("onnx")))


def _said(s: str, r) -> str:
    if r is None:
        return ""
    msg = _reason(s, r.get("message", ""))
    return msg or (f"max rel {r['max_rel']:.3g}" if r.get("max_rel") is not None else "")


def family_section(title: str, rows: list) -> list:
    """Markdown lines for one family: the counts per route, the largest error, then one row per model that
    did not import with parity by every route it ran."""
    out = [f"## {title}", ""]
    for label, route in ROUTES:
        counts = _counts(rows, route)
        if counts:
            rels = [(route(r)["max_rel"], s) for s, r in rows if route(r) and route(r).get("max_rel") is not None
                    and route(r)["status"] == "parity"]
            worst = f"; largest max rel {max(rels)[0]:.2g} (`{max(rels)[1].split(':', 1)[1]}`)" if rels else ""
            out.append(f"- {label}: {sum(counts.values())} models: " + ", ".join(
                f"{n} {st}" for st, n in sorted(counts.items(), key=lambda kv: -kv[1])) + worst + ".")
    out.append("")

    def ok(r):
        return all(route(r) is None or route(r)["status"] == "parity" for _, route in ROUTES)

    good = [s.split(":", 1)[1] for s, r in rows if ok(r)]
    if good:
        out += ["Imported with parity by every route: " + ", ".join(f"`{m}`" for m in good) + ".", ""]
    rest = [(s, r) for s, r in rows if not ok(r)]
    if rest:
        out += ["| model | state dict | ONNX file | what it lacks / the message |", "|---|---|---|---|"]
        for s, r in rest:
            onnx = r.get("onnx")
            msg = _said(s, r) if r["status"] != "parity" else _said(s, onnx)
            if r["status"] != "parity" and onnx and onnx["status"] != "parity" and _said(s, onnx) != msg:
                msg += f" (ONNX file: {_said(s, onnx)})"
            out.append(f"| `{s.split(':', 1)[1]}` | {r['status']} | {onnx['status'] if onnx else '—'} | {msg} |")
        out.append("")
    return out


def _summary_row(title: str, rows: list) -> str:
    cells = [title, str(len(rows))]
    for _, route in ROUTES:
        counts = _counts(rows, route)
        if not counts:
            cells += ["—"] * 3
            continue
        n_ok, n_ref = counts.get("parity", 0), counts.get("refused", 0)
        cells += [str(n_ok), str(n_ref), str(sum(counts.values()) - n_ok - n_ref)]
    return "| " + " | ".join(cells) + " |"


def run_record(args, seconds: float, only=None) -> dict:
    """What one run of the script was: its command, date, length, settings, machine and versions."""
    import platform
    from importlib import metadata

    from _machine import cores, cpu_model

    versions = []
    for mod in ("torch", "timm", "torchvision", "keras", "tensorflow", "onnx", "onnxruntime"):
        try:
            versions.append(f"{mod} {metadata.version(mod)}")
        except metadata.PackageNotFoundError:
            pass
    return {"command": " ".join(["python benchmarks/family_coverage.py"] + sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
            "minutes": round(seconds / 60, 1), "input_size": args.input_size, "timeout": args.timeout,
            "limit": args.limit, "only": only, "machine": f"{cpu_model()}, {cores()} cores, Python "
            f"{platform.python_version()}", "versions": ", ".join(versions)}


def _runs_text(runs: list) -> str:
    def one(r):
        what = f"{', '.join(r['only'])} re-run" if r.get("only") else "the whole run"
        limit = f", --limit {r['limit']} per family" if r.get("limit") else ""
        return (f"{what} on {r['date']} (`{r['command']}`: {r['minutes']} min{limit}, at most {r['timeout']:.0f} s "
                f"a model; {r['machine']}; {r['versions']})")
    return "Runs: " + "; ".join(one(r) for r in runs) + "."


def report(results: dict, titles: dict, runs: list) -> str:
    """docs/family_coverage.md from ``results`` ({family key: [(source, outcome)]}), ``titles`` ({family key:
    title}) and ``runs`` (:func:`run_record` of each run whose outcomes it holds)."""
    size = runs[0]["input_size"] if runs else 64
    lines = ["# Import coverage of the ResNet family", "",
             "Written by `benchmarks/family_coverage.py`: every model name of each family, imported at "
             f"{size} px with **randomized weights** (every BN statistic and affine parameter, every "
             "conv and linear weight redrawn, so no zero-initialised branch hides a missing op; each block's last "
             "norm scale divided by sqrt(blocks), so that float32 runs stay comparable) by two routes: its **state "
             "dict** (`resnet-spec import timm:NAME`), proven against the library's own model, and its **ONNX "
             "file** (the same randomized model through `torch.onnx.export`, TorchScript exporter, opset 17; "
             "`resnet-spec import FILE.onnx --max-onnx-params N`, N four times the model's parameters or the default if "
             "larger), proven against "
             "ONNX Runtime running the file, with the library's parameter count. Both hold max rel <= 1e-4. "
             "keras.applications models are imported from their weights (the ONNX route is PyTorch's exporter: "
             "`—`). A refusal is the one `error:` line `resnet-spec import` prints: it names the building block "
             "the spec language or the ONNX reader lacks. Outcomes are kept in docs/family_coverage.json; "
             "`--only NAME,...` re-runs some models into it.", "", _runs_text(runs), "",
             "| family | models | state dict: parity | refused | other | ONNX file: parity | refused | other |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_summary_row(titles[key], rows) for key, rows in results.items()] + [""]
    for key, rows in results.items():
        lines += family_section(titles[key], rows)
    return "\n".join(lines)
