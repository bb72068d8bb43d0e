"""Zip archives someone else made (``.keras``, ``.pt2``): the checks on what an archive declares, made
before a member is inflated or the file is handed to Keras, and the bounded reading of its members.

A ``.keras`` file is a zip of ``config.json`` (the layers), ``metadata.json`` and ``model.weights.h5``.
It is opened once (:func:`~.fileio.open_regular`) and every check reads that open file, never the path
again. Before anything reads it (``inspect``; ``import`` and ``--weights`` before the Keras worker loads
it; the worker, and ``verify``'s, again before Keras loads it):

* the end-of-directory record is read first: at most :data:`~.budgets.KERAS_MAX_ENTRIES` entries, so
  parsing the directory is cheap;
* every member's declared size is checked against its cap (``config.json``, ``metadata.json``: fixed;
  any other member: 100 times its compressed size, 64 MiB at least), and their sum: Python's zipfile,
  which Keras uses too, never inflates more than a member declares;
* ``config.json`` is read (bounded) and its layer list checked: mappings with string names and
  classes, at most :data:`~.budgets.KERAS_MAX_LAYERS` layers (nested models counted), an input side at
  most :data:`~.budgets.MAX_DECLARED_SIDE` (Keras builds the layers for the declared size);
* the weights' HDF5 file (the member, or ``keras:NAME=FILE.weights.h5``) is opened for its metadata
  only (h5py): its datasets may declare at most what the same ratio allows for the bytes the file
  stores (a dataset left unwritten reads as its fill value, a compressed one inflates; Keras reads each
  whole before it compares shapes), and keep their data in the file (no external or virtual storage);
* what Keras would deserialize and build is checked last (:mod:`resnet_spec.trust_keras`): the classes
  config.json names (an allow-list) and the variables its layers declare (a budget, and no more than
  the weights file declares).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import zipfile

from . import budgets as B
from .errors import ResNetSpecError
from .fileio import open_regular, shown

KERAS_CONFIG, KERAS_META, KERAS_WEIGHTS = "config.json", "metadata.json", "model.weights.h5"
_FIXED_CAPS = {KERAS_CONFIG: B.KERAS_CONFIG_BYTES, KERAS_META: B.KERAS_META_BYTES}


def read_member(z: zipfile.ZipFile, name: str, cap: int = 8 << 20) -> bytes:
    """Archive member ``name``, read only when it expands to at most ``cap`` bytes (a zip bomb's
    declared size is refused, and never more than ``cap`` + 1 bytes are inflated whatever it declares)."""
    size = z.getinfo(name).file_size
    if size > cap:
        raise ValueError(f"{name} expands to {size:,} bytes; the limit is {cap:,}")
    with z.open(name) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"{name} expands to more than {cap:,} bytes")
    return data


def _opened(source):
    """``source`` as an open binary file: a file already open (used as it is, left open), or a path
    (opened here, closed at the end)."""
    return contextlib.nullcontext(source) if hasattr(source, "read") else open(source, "rb")


def end_record(source):
    """(entries, directory bytes) of the zip's end-of-central-directory record, or None when there is
    none (zipfile then says what is wrong). A zip64 archive's record holds 0xFFFF / 0xFFFFFFFF.
    ``source``: a path or an open binary file."""
    with _opened(source) as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 22 - 0xFFFF))  # the record, after at most a 64 KiB comment
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    _, _, _, _, entries, directory, _, _ = struct.unpack("<4s4H2LH", tail[at:at + 22])
    return entries, directory


def directory(path: str, max_entries: int, max_bytes: int, limit: str, what: str,
              error=ResNetSpecError, fh=None) -> list:
    """The members (``ZipInfo``) of zip ``path`` (read from ``fh`` when given), read only after its end
    record declares at most ``max_entries`` entries in a directory of at most ``max_bytes`` (``limit``
    words the refusal; ``what`` names the format in 'not a ...')."""
    source = path if fh is None else fh
    end = end_record(source)
    if end is not None and (end[0] > max_entries or end[1] > max_bytes):
        raise error(f"{shown(path)}: the archive declares {end[0]:,} entries in a {end[1]:,}-byte directory; "
                    f"{limit}")
    try:
        with zipfile.ZipFile(source) as z:
            return z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise error(f"{shown(path)}: not {what} ({type(exc).__name__}: {exc})") from None


def check_archive(path: str, error=ResNetSpecError, fh=None) -> None:
    """Refuse a ``.keras`` archive (read from ``fh`` when given) whose directory or members declare more
    than their budgets, before zipfile parses the directory or anything is inflated."""
    label = shown(path)
    infos = directory(path, B.KERAS_MAX_ENTRIES, B.KERAS_MAX_DIRECTORY_BYTES,
                      f"a .keras file has at most {B.KERAS_MAX_ENTRIES:,} entries and a "
                      f"{B.KERAS_MAX_DIRECTORY_BYTES:,}-byte directory", "a Keras .keras archive", error, fh)
    total = 0
    for info in infos:
        cap = _FIXED_CAPS.get(info.filename) or B.member_cap(info.compress_size)
        if info.file_size > cap:
            why = "its limit" if info.filename in _FIXED_CAPS else \
                f"{B.KERAS_MEMBER_RATIO} times its compressed size, {B.KERAS_MEMBER_MIN_BYTES >> 20} MiB at least"
            raise error(f"{label}: {shown(info.filename)} expands to {info.file_size:,} bytes from "
                        f"{info.compress_size:,}; the limit is {cap:,} ({why}): a zip bomb?")
        total += info.file_size
    if total > B.KERAS_MAX_EXPANDED_BYTES:
        raise error(f"{label}: the members expand to {total:,} bytes together; the limit is "
                    f"{B.KERAS_MAX_EXPANDED_BYTES:,}")


def read_keras_archive(path: str, error=ResNetSpecError, weights: bool = True, fh=None) -> tuple:
    """(config.json, metadata.json, model.weights.h5 bytes or None) of a ``.keras`` file, after
    :func:`check_archive`; the weights only when asked for (``inspect`` reads their shapes). The file
    is opened once (:func:`~.fileio.open_regular`), unless ``fh`` is the file already opened so."""
    if fh is None:
        with open_regular(path, error=error) as fh:
            return read_keras_archive(path, error, weights, fh)
    check_archive(path, error, fh)
    label = shown(path)
    try:
        with zipfile.ZipFile(fh) as z:
            names = z.namelist()
            cfg = json.loads(read_member(z, KERAS_CONFIG, B.KERAS_CONFIG_BYTES))
            meta = json.loads(read_member(z, KERAS_META, B.KERAS_META_BYTES)) if KERAS_META in names else {}
            h5 = None
            if weights and KERAS_WEIGHTS in names:
                h5 = read_member(z, KERAS_WEIGHTS, B.member_cap(z.getinfo(KERAS_WEIGHTS).compress_size))
    except RecursionError:  # json's decoder, on [[[[...]]]]
        raise error(f"{label}: not a Keras .keras archive (its JSON is nested too deeply)") from None
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, NotImplementedError) as exc:
        raise error(f"{label}: not a Keras .keras archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise error(f"{label}: not a Keras .keras archive ({KERAS_META} is not a JSON object)")
    return cfg, meta, h5


def keras_layers(path: str, cfg, error=ResNetSpecError) -> tuple:
    """(the model's config, its layer list), every layer a mapping with a string name and class_name."""
    def refuse(why):
        return error(f"{shown(path)}: not a Keras .keras archive (config.json: {why})")

    model = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("layers"), list):
        raise refuse("no config.layers list")
    for i, layer in enumerate(model["layers"]):
        if not isinstance(layer, dict):
            what = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
            raise refuse(f"layer {i} is {what.get(type(layer), 'null')}, not a mapping")
        for key in ("name", "class_name"):
            if not isinstance(layer.get(key), str):
                raise refuse(f"layer {i} has no {key} string")
    return model, model["layers"]


def _walk_layers(layers):
    """Every layer mapping of a layer list, the layers of nested models (``config.layers``) included."""
    stack = [layers]
    while stack:
        for layer in stack.pop():
            if isinstance(layer, dict):
                yield layer
                inner = layer.get("config")
                if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
                    stack.append(inner["layers"])


def check_keras_model(path: str, error=ResNetSpecError, fh=None) -> int:
    """What is checked of a ``.keras`` file before Keras loads it (``import`` and ``--weights`` in the
    command's process; :func:`~.backends.keras.backend.load_keras`, which ``verify`` and the import's
    worker load with, again on the file it hands Keras): the archive (:func:`read_keras_archive`), the
    weights' HDF5 metadata (:func:`check_h5`), the layer list, the layer count and the declared input
    sides, then the classes the config names and the variables it declares
    (:func:`~.trust_keras.check_config`). The file is opened once, unless ``fh`` is that file opened by
    the caller. Returns the number of layers in the model's own list."""
    if fh is None:
        with open_regular(path, error=error) as fh:
            return check_keras_model(path, error, fh)
    from .trust_keras import check_config

    cfg, _, _ = read_keras_archive(path, error, weights=False, fh=fh)
    held = _check_weights_member(path, error, fh)
    _, layers = keras_layers(path, cfg, error)
    _check_layer_count(path, layers, error)
    check_config(path, cfg, held, error)
    return len(layers)


def _check_layer_count(path: str, layers: list, error) -> None:
    """At most :data:`~.budgets.KERAS_MAX_LAYERS` layers (nested models counted), inputs declared at
    most :data:`~.budgets.MAX_DECLARED_SIDE` a side."""
    count, label = 0, shown(path)
    for layer in _walk_layers(layers):
        count += 1
        if count > B.KERAS_MAX_LAYERS:
            raise error(f"{label}: config.json declares more than {B.KERAS_MAX_LAYERS:,} layers; import reads "
                        f"models of at most {B.KERAS_MAX_LAYERS:,}")
        conf = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        shape = conf.get("batch_shape", conf.get("batch_input_shape"))
        if layer.get("class_name") == "InputLayer" and isinstance(shape, list) and B.side_over(shape[1:-1]):
            sides = "x".join(str(d) for d in shape[1:-1])
            raise error(f"{label}: layer {shown(layer['name'])} declares a {sides} input; import reads .keras "
                        f"models declared at most {B.MAX_DECLARED_SIDE} px a side (Keras builds the layers for "
                        "the declared size)")


class _Window(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file as a file of their own: a stored zip member,
    read in place."""

    def __init__(self, fh, start: int, size: int):
        super().__init__()
        self.fh, self.start, self.size, self.pos = fh, start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        self.pos = max(0, {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence])
        return self.pos

    def readinto(self, buf):
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(max(0, min(len(buf), self.size - self.pos)))
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)


def check_h5(label: str, fileobj, stored: int, error=ResNetSpecError) -> int | None:
    """Refuse a weights HDF5 file whose datasets declare more than :func:`~.budgets.member_cap` of the
    ``stored`` bytes, or keep data outside it; metadata is read, never a dataset. Returns the number of
    values its datasets declare together (None without h5py)."""
    try:
        import h5py
    except ImportError:  # Keras needs h5py to read the file at all
        return None
    cap, total, values = B.member_cap(stored), 0, 0

    def visit(name, obj):
        nonlocal total, values
        if isinstance(obj, h5py.Dataset):
            if obj.external or obj.is_virtual:
                return f"dataset {shown(name)} keeps its data outside the file"
            values += math.prod(obj.shape or ())
            total += math.prod(obj.shape or ()) * obj.dtype.itemsize
            if total > cap:
                return (f"its datasets declare more than {cap:,} bytes (at {shown(name)}) in {stored:,} stored; the "
                        f"limit is {B.KERAS_MEMBER_RATIO} times the bytes stored, "
                        f"{B.KERAS_MEMBER_MIN_BYTES >> 20} MiB at least")
        return None

    try:
        with h5py.File(fileobj, "r") as h:
            why = h.visititems(visit)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:  # h5py's errors on damaged files
        raise error(f"{label}: not readable HDF5 ({type(exc).__name__}: {exc})") from None
    if why:
        raise error(f"{label}: {why}")
    return values


def _check_weights_member(path: str, error, fh) -> int | None:
    """:func:`check_h5` on ``model.weights.h5`` of a checked archive (open as ``fh``): read in place when
    stored (as Keras writes it), inflated into memory when compressed (at most
    :data:`~.budgets.KERAS_MAX_INFLATED_H5`); returns the values its datasets declare. Any other member is
    refused: Keras would extract an archive of more than three to disk, and read ``model.weights.npz`` (a
    zip of its own) in place of the HDF5 file; a ResNet's archive has neither."""
    label = f"{shown(path)}: {KERAS_WEIGHTS}"
    with zipfile.ZipFile(fh) as z:
        other = [n for n in z.namelist() if n not in (KERAS_CONFIG, KERAS_META, KERAS_WEIGHTS)]
        if other or KERAS_WEIGHTS not in z.namelist():
            what = f"it holds {shown(other[0])}" if other else f"it has no {KERAS_WEIGHTS}"
            raise error(f"{shown(path)}: import reads .keras archives of {KERAS_CONFIG}, {KERAS_META} and "
                        f"{KERAS_WEIGHTS} (as Keras writes a model without assets); {what}")
        info = z.getinfo(KERAS_WEIGHTS)
        if info.compress_type != zipfile.ZIP_STORED:
            if info.file_size > B.KERAS_MAX_INFLATED_H5:
                raise error(f"{label} is compressed and expands to {info.file_size:,} bytes; the limit for a "
                            f"compressed one is {B.KERAS_MAX_INFLATED_H5:,} (Keras stores it uncompressed)")
            return check_h5(label, io.BytesIO(read_member(z, KERAS_WEIGHTS, B.KERAS_MAX_INFLATED_H5)),
                            info.compress_size, error)
    fh.seek(info.header_offset)
    head = fh.read(30)
    if len(head) < 30:
        raise error(f"{label}: truncated archive")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return check_h5(label, _Window(fh, info.header_offset + 30 + name_len + extra_len, info.file_size),
                    info.file_size, error)
