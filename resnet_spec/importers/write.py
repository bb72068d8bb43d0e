"""``resnet-spec import``: import, prove, and only then write ``DIR/NAME.yaml`` + ``DIR/NAME.safetensors``.

Nothing is written until the source and the generated model agree (unless ``keep``); both files are
checked for existence up front and written atomically, so a refusal or failure leaves ``DIR`` as it was.
"""

from __future__ import annotations

import os

from ..errors import ResNetSpecError


class ParityFailed(ResNetSpecError):
    """The imported model does not reproduce the source; the message is the parity report."""


def parse_input_size(text: str | None):
    """'64' -> 64, '224,320' -> [224, 320]; None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and 0 < int(p) <= 16384 for p in parts):
        raise ValueError(f"--input-size takes H or H,W (positive integers), got {text!r}")
    return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


def import_to_dir(source: str, out_dir: str, name: str | None = None, input_size=None, force: bool = False,
                  keep: bool = False, echo=print, max_params: int | None = None) -> dict:
    """Import ``source`` into ``out_dir``; returns the paths and the parity result.

    Raises :class:`ParityFailed` (files kept only with ``keep``) when the generated model does not
    reproduce the source within the float32 tolerance.
    """
    from ..extras import require
    from ..fileio import check_writable, write_text
    from ..weights.files import save_weights
    from . import import_source
    from .run import format_result, prove

    require("import (it proves the result in PyTorch)", "torch")
    src, text, net, full, weights = import_source(source, name, input_size, max_params)
    yaml_path = os.path.join(out_dir, f"{net.name}.yaml")
    w_path = os.path.join(out_dir, f"{net.name}.safetensors")
    for p in (yaml_path, w_path):
        check_writable(p, force)
    echo(f"{src.label}: {net.name}, {len(net.blocks)} blocks, {net.params:,} params")
    for note in src.notes:
        echo(f"  note: {note}")
    result = prove(src, net, full, weights)
    report = format_result(src, result)
    if not result["passed"] and not keep:
        raise ParityFailed(report + "\n  no files were written (pass --keep to keep them)")
    made_dir = not os.path.isdir(out_dir)
    try:
        write_text(yaml_path, text, force)
        meta = {"format": "resnet-spec", "spec": net.name, "imported_from": src.label}
        if "layout" in src.facts:  # the input layout the source file took (the spec has none)
            meta["imported_layout"] = src.facts["layout"]
        save_weights(weights, w_path, metadata=meta, force=force)
    except BaseException:
        for p in (yaml_path, w_path):
            if os.path.exists(p) and not force:
                os.unlink(p)
        if made_dir and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    if not result["passed"]:
        raise ParityFailed(report + f"\n  kept (--keep): {yaml_path}, {w_path}")
    echo(report)
    return {"spec": yaml_path, "weights": w_path, "parity": result, "params": net.params}
