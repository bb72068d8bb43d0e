"""Weight files read with bounded time and memory: the header is checked before any data is read.

A weight file is only trusted as far as its own size: a safetensors header must describe tensors
that lie inside the file, a PyTorch zip must hold only uncompressed entries whose declared sizes add
up to no more than the file (a 2 MB zip bomb cannot declare 2 GiB), and with the spec known, the
names and shapes are checked against it and the file size against what the spec can need before a
byte of tensor data is read. bf16/fp16/fp64 tensors are upcast/cast to float32 with a note (a
:class:`WeightsNote` warning); integer, bool, complex, sparse or quantized tensors are refused.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile

import numpy as np

from .errors import WeightsError
from .fileio import file_kind, os_reason

MAX_HEADER = 16 << 20  # a safetensors header for a ResNet is a few tens of KB
F32_MAX = float(np.finfo(np.float32).max)
# safetensors dtype -> (numpy dtype to read, item size)
ST_DTYPES = {"F32": ("<f4", 4), "F64": ("<f8", 8), "F16": ("<f2", 2), "BF16": ("<u2", 2)}
ST_OTHER = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2", "C64"}


class WeightsNote(UserWarning):
    """Something the user should know about accepted weights (e.g. bf16 upcast to float32)."""


def open_checked(path: str):
    """Open a weight file for reading: a regular file only (a FIFO or /dev/zero is refused, by kind)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise WeightsError(f"{path}: " + ("no such weight file" if exc.errno == 2 else os_reason(exc))) from None
    st = os.fstat(fd)
    kind = file_kind(st.st_mode)
    if kind != "a regular file":
        os.close(fd)
        raise WeightsError(f"{path}: is {kind}, not a regular file; weights are read from regular files only")
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


def read_safetensors(path: str, fh, net=None) -> dict:
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
    from .weights import IGNORED_SUFFIXES

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


def check_f32_range(arr: np.ndarray, name: str, source: str) -> None:
    big = np.isfinite(arr) & (np.abs(arr) > F32_MAX)
    if big.any():
        raise WeightsError(f"{source}: tensor {name!r} holds {float(arr[big].flat[0]):g}, a finite value "
                           "outside the float32 range (+-3.4e38)")


def check_declared(net, declared: dict, source: str) -> None:
    """Names and shapes a file declares, checked against the spec before its data is read."""
    from .weights import _fmt, check_names

    expected, given = check_names(net, declared, source)
    for name, shape in expected.items():
        if tuple(given[name]) != shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {_fmt(given[name])}, the spec expects "
                               f"{_fmt(shape)}")


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
