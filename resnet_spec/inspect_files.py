"""``resnet-spec inspect`` for the files that need no framework: ``.safetensors`` and ``.pt2``.

A safetensors file is read through its header only (names, dtypes, shapes, metadata); no tensor data
is loaded. When its metadata holds the spec YAML (``resnet_spec.spec``, written by ``convert``), the
tensors are also checked against that spec by name and shape. A ``.pt2`` is a zip archive:
``torch.export.save(..., extra_files=...)`` stores extra files as ``<archive>/extra/<name>``, which is
where the spec is looked for; the archive is never unpickled or loaded.
"""

from __future__ import annotations

import math
import zipfile

from .errors import ResNetSpecError

META_NAME, META_SPEC = "resnet_spec.name", "resnet_spec.spec"
BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def weights_metadata(net) -> dict:
    """The metadata ``convert`` stores in ``<name>.safetensors``: format, spec name and spec YAML."""
    return {"format": "resnet-spec", "spec": net.name, META_NAME: net.name, META_SPEC: net.spec_yaml}


def inspect_safetensors(path: str) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            dtypes = sorted({str(fh.get_slice(k).get_dtype()) for k in fh.keys()})
    except Exception as exc:  # safetensors raises its own Rust-side error types
        raise ResNetSpecError(f"{path}: not a valid safetensors file ({type(exc).__name__}: {exc})") from None
    params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(BUFFER_SUFFIXES))
    info = {"path": path, "format": "safetensors", "tensors": len(shapes), "parameters": params,
            "buffers": sum(math.prod(s) for k, s in shapes.items() if k.endswith(BUFFER_SUFFIXES)),
            "dtypes": dtypes, "spec_name": meta.get(META_NAME) or meta.get("spec"),
            "spec_yaml": meta.get(META_SPEC), "metadata": {k: v for k, v in meta.items() if k != META_SPEC}}
    if info["spec_yaml"]:
        info["matches_spec"] = _matches(info["spec_yaml"], shapes)
    return info


def _matches(spec_yaml: str, shapes: dict) -> str:
    import resnet_spec

    try:
        net = resnet_spec.load(spec_yaml)
    except ResNetSpecError as exc:
        return f"no: the embedded spec does not load ({exc})"
    want = {t.name: tuple(t.shape) for t in net.tensors()}
    got = {k: v for k, v in shapes.items() if not k.endswith(".num_batches_tracked")}
    if want == got:
        return "yes"
    bad = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
    return f"no: {len(bad)} tensor(s) differ, first {bad[0]!r}"


def inspect_checkpoint(path: str) -> dict:
    """A torch checkpoint as ``--weights`` reads it (containers unwrapped, prefixes stripped)."""
    from .checkpoints import read_checkpoint

    tensors, notes = read_checkpoint(path)
    return {"path": path, "format": "torch checkpoint", "tensors": len(tensors),
            "parameters": sum(v.size for k, v in tensors.items() if not k.endswith(BUFFER_SUFFIXES)),
            "buffers": sum(v.size for k, v in tensors.items() if k.endswith(BUFFER_SUFFIXES)),
            "dtypes": sorted({str(v.dtype) for v in tensors.values()}), "spec_name": None, "spec_yaml": None,
            "notes": notes}


def inspect_pt2(path: str) -> dict:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            extra = {n.split("/extra/", 1)[1]: n for n in names if "/extra/" in n}
            spec_yaml = z.read(extra[META_SPEC]).decode("utf-8") if META_SPEC in extra else None
            name = z.read(extra[META_NAME]).decode("utf-8") if META_NAME in extra else None
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise ResNetSpecError(f"{path}: not a torch.export archive ({exc})") from None
    if not any("/models/" in n or n.endswith(".json") for n in names):
        raise ResNetSpecError(f"{path}: a zip archive, but not a torch.export program")
    return {"path": path, "format": "torch.export (.pt2)", "entries": len(names), "spec_name": name,
            "spec_yaml": spec_yaml, "extra_files": sorted(extra)}


def format_info(info: dict) -> str:
    lines = [f"file:       {info['path']} ({info['format']})"]
    lines.append(f"spec:       {info['spec_name'] or '(none recorded)'}")
    if "tensors" in info:
        lines.append(f"tensors:    {info['tensors']} ({', '.join(info['dtypes']) or '-'}), "
                     f"{info['parameters']:,} parameters, {info['buffers']:,} buffer values")
    for n in info.get("notes", []):
        lines.append(f"note:       {n}")
    if "matches_spec" in info:
        lines.append(f"matches:    {info['matches_spec']} (names and shapes against the embedded spec)")
    if "entries" in info:
        lines.append(f"archive:    {info['entries']} entries; extra files: {', '.join(info['extra_files']) or 'none'}")
    if info.get("spec_yaml"):
        lines += ["", "spec YAML:", info["spec_yaml"].rstrip()]
    elif info["format"].startswith("torch.export"):
        lines.append("(no spec embedded: the torch backend does not store one in the .pt2 yet)")
    return "\n".join(lines)
