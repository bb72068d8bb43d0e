"""Weight files, read with bounded time and memory (the header is checked before any data is read), and
written as safetensors.

A weight file is only trusted as far as its own size: a safetensors header must describe tensors
that lie inside the file, a PyTorch zip must hold only uncompressed entries whose declared sizes add
up to no more than the file (a 2 MB zip bomb cannot declare 2 GiB), and with the spec known, the
names and shapes are checked against it and the file size against what the spec can need before a
byte of tensor data is read. bf16/fp16/fp64 tensors are upcast/cast to float32 with a note (a
:class:`WeightsNote` warning); integer, bool, complex, sparse or quantized tensors are refused.

:func:`read_checkpoint` reads a training script's torch checkpoint (``torch.load(weights_only=True)``:
nothing pickled is ever executed), finds the dictionary of tensors inside its containers and strips
the wrapper prefixes; checking the result against a spec is :mod:`.loader`'s. :func:`read_weights` reads
either kind of file, :func:`save_weights` writes the canonical safetensors file.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile

import numpy as np

from .. import ir
from ..errors import WeightsError
from ..fileio import atomic_path, not_regular, os_reason
from .check import IGNORED_SUFFIXES, Weights, check_declared, check_f32_range

MAX_HEADER = 16 << 20  # a safetensors header for a ResNet is a few tens of KB
# safetensors dtype -> (numpy dtype to read, item size)
ST_DTYPES = {"F32": ("<f4", 4), "F64": ("<f8", 8), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
ST_OTHER = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2", "C64"}
#: The file names read as torch checkpoints (``torch.save`` zips; a safetensors file under such a name is
#: read as what it is). The one list: ``--weights``, ``read_weights``, ``inspect`` and ``import`` use it.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
#: The state-dict files ``import`` reads: torch checkpoints and safetensors.
STATE_DICT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)


class WeightsNote(UserWarning):
    """Something the user should know about accepted weights (e.g. bf16 upcast to float32)."""


def open_checked(path: str):
    """Open a weight file for reading: a regular file only (a FIFO or /dev/zero is refused, by kind)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise WeightsError(f"{path}: " + ("no such weight file" if exc.errno == 2 else os_reason(exc))) from None
    st = os.fstat(fd)
    refusal = not_regular(path, st.st_mode, "; weights are read from regular files only")
    if refusal:
        os.close(fd)
        raise WeightsError(refusal)
    if st.st_size == 0:
        os.close(fd)
        raise WeightsError(f"{path}: empty weight file")
    return os.fdopen(fd, "rb")


def size_cap(net) -> int:
    """The largest weight file accepted for ``net``: every tensor in float64, twice over (room for a
    checkpoint's extra state), plus 64 MiB."""
    return 16 * sum(math.prod(t.shape) for t in net.tensors()) + (64 << 20)


def check_size(path: str, size: int, net) -> None:
    if net is not None and size > size_cap(net):
        raise WeightsError(f"{path}: file is {size:,} bytes; spec {net.name!r} needs at most "
                           f"{size_cap(net):,} (refused before reading it)")


def sniff(fh) -> str:
    """'zip' (torch.save), 'safetensors', 'pickle' (legacy torch.save or a bare pickle) or 'unknown'."""
    head = fh.read(9)
    fh.seek(0)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def parse_safetensors(path: str, fh, net=None) -> dict:
    """Parse and check the header, then read each tensor (as float32) from its declared slice."""
    size = os.fstat(fh.fileno()).st_size
    check_size(path, size, net)
    raw = fh.read(8)
    n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if not 2 <= n <= min(MAX_HEADER, size - 8):
        raise WeightsError(f"{path}: not a valid safetensors file (header length {n} does not fit the "
                           f"{size:,}-byte file); it may be truncated or corrupt")
    try:
        header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError):
        raise WeightsError(f"{path}: not a valid safetensors file (the header is not JSON); it may be "
                           "truncated or corrupt") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a valid safetensors file (the header is not a JSON object)")
    header.pop("__metadata__", None)
    header = {k: v for k, v in header.items() if not k.endswith(IGNORED_SUFFIXES)}
    entries = {k: _entry(path, k, v, size - 8 - n) for k, v in header.items()}
    if net is not None:
        check_declared(net, {k: e[1] for k, e in entries.items()}, path)
    out, upcast = {}, set()
    for name, (dtype, shape, begin, end) in entries.items():
        fh.seek(8 + n + begin)
        buf = fh.read(end - begin)
        if len(buf) != end - begin:
            raise WeightsError(f"{path}: tensor {name!r} is cut short; the file is truncated")
        out[name] = to_float32(np.frombuffer(buf, ST_DTYPES[dtype][0]).reshape(shape), dtype, name, path)
        if dtype in ("F16", "BF16"):
            upcast.add(dtype.lower())
    if upcast:
        warnings.warn(WeightsNote(f"{path}: {'/'.join(sorted(upcast))} tensors were upcast to float32"),
                      stacklevel=2)
    return out


def _entry(path, name, e, data_size):
    if not (isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("data_offsets"), list)
            and len(e["data_offsets"]) == 2 and all(isinstance(x, int) and x >= 0 for x in e["shape"] + e["data_offsets"])):
        raise WeightsError(f"{path}: not a valid safetensors file (bad header entry for {name!r})")
    dtype = e.get("dtype")
    if dtype not in ST_DTYPES:
        if dtype in ST_OTHER:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {dtype}; expected a float tensor "
                               "(F32, F16, BF16 or F64)")
        raise WeightsError(f"{path}: not a valid safetensors file (tensor {name!r} has unknown dtype {dtype!r})")
    begin, end = e["data_offsets"]
    if not begin <= end <= data_size or end - begin != math.prod(e["shape"]) * ST_DTYPES[dtype][1]:
        raise WeightsError(f"{path}: not a valid safetensors file (tensor {name!r} declares {e['shape']} "
                           f"{dtype} at bytes {begin}..{end} of {data_size:,}); it may be truncated or corrupt")
    return dtype, tuple(e["shape"]), begin, end


def to_float32(arr: np.ndarray, dtype: str, name: str, source: str) -> np.ndarray:
    """float32 copy of a F32/F16/BF16/F64 array; a finite value beyond float32's range is an error."""
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F64":
        check_f32_range(arr, name, source)
        with np.errstate(over="ignore", invalid="ignore"):
            return arr.astype(np.float32)
    return arr.astype(np.float32)


def check_torch_zip(path: str, fh, net=None) -> None:
    """Refuse a PyTorch zip whose entries could expand beyond the file: torch.save stores every entry
    uncompressed, so a compressed entry, or declared sizes that add up to more than the file, is a
    zip bomb or a corrupt file."""
    size = os.fstat(fh.fileno()).st_size
    check_size(path, size, net)
    try:
        infos = zipfile.ZipFile(fh).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise WeightsError(f"{path}: refused: not a readable PyTorch file ({exc})") from None
    finally:
        fh.seek(0)
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise WeightsError(f"{path}: refused: entry {info.filename!r} is compressed (torch.save never "
                               "compresses; a compressed entry can expand without bound)")
    declared = sum(i.file_size for i in infos)
    if declared > size:
        raise WeightsError(f"{path}: refused: its entries declare {declared:,} bytes in a {size:,}-byte file; "
                           "it is corrupt or a zip bomb")


def torch_tensor_problem(v) -> str | None:
    """Why a loaded torch tensor is not a usable dense float weight, or None."""
    import torch

    if v.layout != torch.strided:
        return f"is a sparse tensor ({v.layout}); expected a dense float tensor"
    if v.is_quantized:
        return f"is a quantized tensor ({v.dtype}); expected a dense float tensor"
    if not v.is_floating_point():
        return f"has dtype {str(v.dtype).replace('torch.', '')}; expected a float tensor"
    return None


# -- torch checkpoints: the dictionary of tensors inside, found and unwrapped ------------------------

#: Where training scripts put the model's tensors, in the order they are tried.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: The exponential-moving-average copies, taken only when asked (``ema=True`` / ``--weights-key``).
EMA_KEYS = ("model_ema", "ema", "state_dict_ema", "ema_state_dict")
#: Wrapper prefixes: DDP/DataParallel, torch.compile, Lightning-style ``self.model``.
PREFIXES = ("module.", "_orig_mod.", "model.")


def read_checkpoint(path: str, key: str | None = None, ema: bool = False,
                    net: ir.Network | None = None) -> tuple[dict, list]:
    """``({name: float32 array}, notes)`` from a safetensors file or a torch checkpoint.

    ``key`` names the entry holding the weights (dotted for nested entries, e.g. ``ema.module``);
    ``ema=True`` prefers an EMA copy. ``notes`` says what was unwrapped or stripped (empty if nothing).
    With ``net``, the file's size is bounded by the spec's before its data is read.
    """
    with open_checked(path) as fh:
        kind = sniff(fh) if path.endswith(TORCH_SUFFIXES) else "safetensors"
        if kind == "safetensors":  # also a safetensors file under a .pth name
            if key:
                raise WeightsError(f"{path}: --weights-key applies to torch checkpoints (.pth/.pt/.ckpt); a "
                                   "safetensors file holds one flat set of tensors")
            # Size bound now; names and shapes once prefixes are stripped and the head fitted.
            check_size(path, os.fstat(fh.fileno()).st_size, net)
            return _strip_prefixes(parse_safetensors(path, fh), path)
        if kind != "zip":
            raise WeightsError(f"{path}: refused: not a zip-format PyTorch file (a bare pickle, a file saved by "
                               "torch < 1.6, or not a weight file); save it with a current torch.save or as "
                               "safetensors")
        check_torch_zip(path, fh, net)
    obj = _torch_load(path)
    tensors, notes = unwrap(obj, path, key, ema)
    stripped, more = _strip_prefixes(tensors, path)
    return stripped, notes + more


def _torch_load(path: str):
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading .pth/.pt files needs PyTorch (pip install 'resnet-spec[torch]'), "
                           "or convert the file to safetensors") from None
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weight file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals and corrupt archives both land here
        raise WeightsError(_load_failure(path, exc)) from None


def _load_failure(path: str, exc: Exception) -> str:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        cls = found.group(1)
        what = "a whole pickled model" if "models" in cls or "nn.modules" in cls or "Module" in cls else "pickled Python objects"
        return (f"{path}: refused: the file holds {what} ({cls}), not a dictionary of tensors; weights are "
                "read with torch.load(weights_only=True), which never runs pickled code. Save the weights "
                "instead: torch.save(model.state_dict(), 'weights.pth')")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{path}: refused: not a readable torch checkpoint ({first})"


def unwrap(obj, path: str, key: str | None = None, ema: bool = False) -> tuple[dict, list]:
    """The ``{name: numpy array}`` inside a loaded checkpoint ``obj``, and notes on how it was found."""
    import torch

    notes, took_ema = [], False
    if key:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise WeightsError(f"{path}: no entry {key!r}; the file holds {_describe_keys(obj)}")
            obj = obj[part]
        notes.append(f"took the weights under {key!r}")
    for _ in range(4):  # {"model": {"state_dict": ...}} and the like
        if not isinstance(obj, dict) or _is_tensor_dict(obj, torch):
            break
        order = EMA_KEYS + CONTAINER_KEYS if ema else CONTAINER_KEYS
        found = next((k for k in order if isinstance(obj.get(k), dict) and obj[k]), None)
        if found is None:
            break
        notes.append(f"took the weights under {found!r}")
        took_ema = took_ema or found in EMA_KEYS
        obj = obj[found]
    if ema and not took_ema and not key:
        raise WeightsError(f"{path}: no EMA weights (looked for {', '.join(EMA_KEYS)}); the file holds "
                           f"{_describe_keys(obj)}")
    if isinstance(obj, torch.nn.Module):  # possible only through an allow-listed global
        raise WeightsError(f"{path}: refused: a whole model, not a dictionary of tensors; save it with "
                           "torch.save(model.state_dict(), 'weights.pth')")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: refused: expected a dictionary of tensors, got {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            hint = (f"; the file holds {_describe_keys(obj)}: pick the weights with --weights-key KEY"
                    if isinstance(v, dict) or any(isinstance(x, dict) for x in obj.values()) else "")
            raise WeightsError(f"{path}: refused: entry {k!r} is a {type(v).__name__}, not a tensor{hint}")
    return torch_arrays(path, obj), notes


def _is_tensor_dict(obj: dict, torch) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe_keys(obj) -> str:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    keys = [repr(k) for k in list(obj)[:12]]
    more = f" and {len(obj) - 12} more" if len(obj) > 12 else ""
    return "the keys " + ", ".join(keys) + more if keys else "an empty dictionary"


def _strip_prefixes(tensors: dict, path: str) -> tuple[dict, list]:
    """Strip wrapper prefixes shared by every name (repeatedly: ``module._orig_mod.``)."""
    stripped = []
    changed = True
    while changed and tensors:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p):]: v for k, v in tensors.items()}
                stripped.append(p)
                changed = True
    return tensors, ([f"stripped the prefix {''.join(stripped)!r} from every name"] if stripped else [])


def torch_arrays(path: str, obj: dict) -> dict:
    """``{name: array}`` of a dictionary of dense float torch tensors: float32, float64 kept as it is
    (checked against float32's range later), bf16/fp16 upcast with a :class:`WeightsNote`."""
    import torch

    out, upcast = {}, set()
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: refused: entry {k!r} is a {type(v).__name__}, not a tensor")
        if k.endswith(IGNORED_SUFFIXES):
            continue
        problem = torch_tensor_problem(v)
        if problem:
            raise WeightsError(f"{path}: tensor {k!r} {problem}")
        if v.dtype in (torch.float16, torch.bfloat16):
            upcast.add(str(v.dtype).replace("torch.", ""))
        out[k] = v.detach().to(torch.float64 if v.dtype == torch.float64 else torch.float32).numpy()
    if upcast:
        warnings.warn(WeightsNote(f"{path}: {'/'.join(sorted(upcast))} tensors were upcast to float32"),
                      stacklevel=2)
    return out


# -- the canonical weight set as a file --------------------------------------------------------------

def read_safetensors(path: str, net: ir.Network | None = None) -> Weights:
    """A safetensors file as float32 arrays; its header (and, with ``net``, the names, shapes and file
    size) is checked before any tensor data is read."""
    with open_checked(path) as fh:
        return parse_safetensors(path, fh, net)


def read_torch(path: str, net: ir.Network | None = None) -> Weights:
    """A torch checkpoint, read with ``torch.load(weights_only=True)`` after its archive was checked
    against ``net``; containers and wrapper prefixes are handled by :func:`read_checkpoint`."""
    return read_checkpoint(path, net=net)[0]


def read_weights(path: str, net: ir.Network | None = None) -> Weights:
    """Read a weight file; with ``net``, its declared names, shapes and size are checked first."""
    if path.endswith(TORCH_SUFFIXES):
        return read_torch(path, net)
    return read_safetensors(path, net)


def save_weights(weights: Weights, path: str, metadata: dict | None = None, force: bool = True) -> None:
    """Write safetensors atomically; tensors are stored in sorted-name order (deterministic bytes)."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(weights[k]) for k in sorted(weights)}, metadata=metadata)
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
