"""``.pt2`` archives someone else made, checked before ``torch.export.load`` sees them (see
:mod:`resnet_spec.trust`). Framework-free: zipfile, json and regular expressions.

1. Structure (:func:`check_structure`, with or without ``--trust-code``): a zip whose end record
   declares at most :data:`MAX_ENTRIES` entries; unique member names under one root folder, no ``..``;
   stored or deflated, not encrypted; every member's declared size within its cap (JSON
   :data:`MAX_JSON_BYTES`, small records :data:`MAX_SMALL_BYTES`, extra files :data:`MAX_EXTRA_BYTES`, a
   deflated member at most :data:`MAX_RATIO` times its compressed size) and all of them together
   within the caller's budget (the spec's tensors in float64 twice over, plus 64 MiB). zipfile never
   inflates more than a member declares.
2. Contents (:func:`check_pt2`): only the entries ``torch.export.save`` of the installed torch (2.14)
   writes for one program named ``model`` (:data:`ENTRIES`, :data:`NUMBERED`): no AOTInductor,
   ExecuTorch or XL-weights folders, no pickled or custom-object payloads, no pre-2.7 layout; the
   records hold torch's values (``archive_format`` ``pt2``, ``archive_version`` ``0``); the weight and
   constant configs have ``use_pickle: false`` and name payloads that exist; every string of
   ``models/model.json`` is checked by the field it is in (:data:`STRING_FIELDS`): operators against
   :data:`TARGETS`, names against identifier patterns, shape expressions against :func:`check_expr`'s
   grammar; argument kinds against :data:`ARG_KINDS`; ``guards_code`` (Python source torch would
   ``exec``), custom objects and named-tuple fields must be empty.
3. :func:`clean_copy` writes the checked entries to a new archive, sample inputs empty, so what torch
   loads is what was checked (the file may change after the check).
"""

from __future__ import annotations

import json
import os
import re
import zipfile

from .archive import directory
from .errors import ResNetSpecError
from .fileio import check_regular_file, shown
from .trust import refuse

MAX_ENTRIES = 100_000
MAX_DIRECTORY_BYTES = 32 << 20
MAX_JSON_BYTES = 64 << 20
MAX_SMALL_BYTES = 4096
MAX_EXTRA_BYTES = 1 << 20
MAX_RATIO = 100
MAX_DEPTH = 64
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
MODEL_JSON = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
#: the fixed entries torch.export.save writes for one program named "model", and the value a small
#: record must hold (None: any short printable text)
ENTRIES = {"archive_format": "pt2", "archive_version": "0", "byteorder": None, ".data/version": None,
           ".data/serialization_id": None, MODEL_JSON: None, WEIGHTS_CONFIG: None, CONSTANTS_CONFIG: None,
           SAMPLE_INPUTS: None}
#: numbered payloads (raw tensor bytes) and extra files (text, read as strings)
NUMBERED = re.compile(r"(data/weights/weight_|data/constants/tensor_)\d{1,9}\Z")
EXTRA = re.compile(r"extra/[A-Za-z0-9_.\-]{1,128}\Z")
#: graph operators: those of every zoo entry's .pt2 and of conftest's TINY_A/TINY_B (convert: head dropout,
#: identity at inference), and the aten spellings other exporters
#: (torchvision's ResNet under torch.export, decomposed programs) use for the same operations; the
#: ``_operator`` ones are arithmetic on symbolic sizes
TARGETS = frozenset("torch.ops.aten." + t for t in (
    "conv2d.default", "convolution.default", "batch_norm.default", "_native_batch_norm_legit_no_training.default",
    "relu.default", "relu_.default", "sigmoid.default", "add.Tensor", "add_.Tensor", "mul.Tensor",
    "pad.default", "constant_pad_nd.default", "max_pool2d.default", "max_pool2d_with_indices.default",
    "avg_pool2d.default", "adaptive_avg_pool2d.default", "mean.dim", "flatten.using_ints", "view.default",
    "reshape.default", "linear.default", "addmm.default", "t.default", "permute.default", "slice.Tensor",
    "cat.default", "sym_size.int", "dropout.default", "contiguous.default",
    "group_norm.default", "native_group_norm.default",
    # FRN's mean square, rsqrt and TLU; EvoNorm-S0's group variance, sqrt, division (backends/torch/frn.py)
    "square.default", "rsqrt.default", "maximum.default", "var.dim", "var.correction", "sqrt.default",
    "div.Tensor")) | \
    {f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "floordiv")}
#: argument kinds a node may pass (torch's schema); subgraphs, custom objects, operators are not among them
ARG_KINDS = frozenset({"as_none", "as_tensor", "as_tensors", "as_optional_tensors", "as_int", "as_ints",
                       "as_float", "as_floats", "as_bool", "as_bools", "as_string", "as_expr", "as_sym_int",
                       "as_sym_ints", "as_scalar_type", "as_memory_format", "as_layout", "as_device"})
#: mappings keyed by names (tensor and symbol names, opset names)
NAMED_MAPS = frozenset({"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values",
                        "range_constraints", "opset_version"})
MUST_BE_EMPTY = frozenset({"guards_code", "custom_obj_values", "treespec_namedtuple_fields"})
TOP_FIELDS = frozenset({"graph_module", "opset_version", "range_constraints", "schema_version", "verifiers",
                        "torch_version", "guards_code"})
META_FIELDS = frozenset({"stack_trace", "nn_module_stack", "torch_fn", "source_fn_stack"})
_FIELD = re.compile(r"[a-z_][a-z0-9_]{0,63}\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
_DOTTED = re.compile(r"([A-Za-z0-9_]{1,255}(\.[A-Za-z0-9_]{1,255}){0,63})?\Z")
_WORD = re.compile(r"[A-Za-z0-9_]{0,64}\Z")
_VERSION = re.compile(r"[A-Za-z0-9_.+\-]{1,64}\Z")


def _text(value: str, limit: int = 1 << 16) -> bool:
    """Free text torch stores and never evaluates (stack traces, tree specs): no control characters but
    newlines and tabs (a carriage return would start a line in generated source)."""
    return len(value) <= limit and all(c.isprintable() or c in "\n\t" for c in value)


STRING_FIELDS = {
    "target": TARGETS.__contains__, "name": _IDENT.match, "forward_arg_names": _IDENT.match,
    "parameter_name": _DOTTED.match, "buffer_name": _DOTTED.match, "fqn": _DOTTED.match,
    "as_string": _WORD.match, "type": _WORD.match, "verifiers": _WORD.match, "torch_version": _VERSION.match,
    "in_spec": _text, "out_spec": _text, "expr_str": lambda s: check_expr(s) is None}


# -- shape expressions -----------------------------------------------------------------------------------

#: sympy's printed form (srepr), as torch writes a dynamic dimension: Symbol('s77', positive=True,
#: integer=True), Integer(2), and arithmetic and comparisons of them
_CALLS = {"Add": (2, 16), "Mul": (2, 16), "Max": (2, 16), "Min": (2, 16), "FloorDiv": (2, 2), "Mod": (2, 2),
          "PythonMod": (2, 2), "CleanDiv": (2, 2), "CeilDiv": (2, 2), "Eq": (2, 2), "Ne": (2, 2),
          "LessThan": (2, 2), "StrictLessThan": (2, 2), "GreaterThan": (2, 2), "StrictGreaterThan": (2, 2)}
_ASSUMPTIONS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "nonzero", "integer", "real",
                          "finite"})
#: a symbol's name is torch's (s77, u0, ps1: lower case), never one of the functions' names
_TOKEN = re.compile(r"\s*(?:(?P<int>-?\d{1,19})|(?P<str>'[a-z][a-z0-9_]{0,31}')|(?P<name>[A-Za-z_]"
                    r"[A-Za-z0-9_]{0,63})|(?P<punct>[(),=]))")
MAX_EXPR_CHARS = 2048


def _tokens(text: str) -> list:
    out, at = [], 0
    while at < len(text):
        m = _TOKEN.match(text, at)
        if not m or m.end() == at:
            if text[at:].strip():
                raise ValueError(f"unexpected {text[at:at + 20]!r}")
            break
        out.append((m.lastgroup, m.group(m.lastgroup)))
        at = m.end()
    return out


class _Expr:
    """A recursive-descent reader of :data:`_CALLS` over integers and symbols; raises ValueError."""

    def __init__(self, text: str):
        self.toks, self.at = _tokens(text), 0

    def take(self, kind=None, value=None):
        if self.at >= len(self.toks):
            raise ValueError("it ends early")
        tk = self.toks[self.at]
        if (kind and tk[0] != kind) or (value and tk[1] != value):
            raise ValueError(f"unexpected {tk[1]!r}")
        self.at += 1
        return tk

    def expr(self, depth: int = 0) -> None:
        if depth > 32:
            raise ValueError("nested too deeply")
        kind, value = self.take()
        if kind == "int" or (kind == "name" and value in ("true", "false")):
            return
        if kind != "name" or value not in (*_CALLS, "Integer", "Symbol"):
            raise ValueError(f"{value!r} is not an allowed function")
        self.take("punct", "(")
        if value == "Integer":
            self.take("int")
        elif value == "Symbol":
            self._symbol()
        else:
            self._args(value, depth)
        self.take("punct", ")")

    def _symbol(self) -> None:
        self.take("str")
        while self.at < len(self.toks) and self.toks[self.at][1] == ",":
            self.take()
            if self.take("name")[1] not in _ASSUMPTIONS:
                raise ValueError("an unknown symbol assumption")
            self.take("punct", "=")
            if self.take("name")[1] not in ("True", "False"):
                raise ValueError("an assumption that is not True or False")

    def _args(self, func: str, depth: int) -> None:
        lo, hi = _CALLS[func]
        n = 1
        self.expr(depth + 1)
        while self.at < len(self.toks) and self.toks[self.at][1] == ",":
            self.take()
            self.expr(depth + 1)
            n += 1
        if not lo <= n <= hi:
            raise ValueError(f"{func} takes {lo} to {hi} arguments")


def check_expr(text) -> str | None:
    """Why ``text`` is not a shape expression as torch writes one (None when it is)."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        return "not a short string"
    try:
        reader = _Expr(text)
        reader.expr()
        if reader.at != len(reader.toks):
            raise ValueError("text after the expression")
    except ValueError as exc:
        return str(exc)
    return None


# -- the archive -------------------------------------------------------------------------------------------


def _cap(rel: str, info: zipfile.ZipInfo) -> int:
    if rel.endswith(".json"):
        return MAX_JSON_BYTES
    if rel in ENTRIES and rel != SAMPLE_INPUTS:
        return MAX_SMALL_BYTES
    if rel.startswith("extra/"):
        return MAX_EXTRA_BYTES
    return (1 << 62) if info.compress_type == zipfile.ZIP_STORED else max(1 << 16, MAX_RATIO * info.compress_size)


def _relative(name: str) -> str:
    """A member's name below the archive's root folder (torch writes every entry in one)."""
    return name.partition("/")[2] or name


def check_structure(path: str, max_bytes: int) -> dict:
    """``{member name: ZipInfo}`` of a zip whose directory and declared sizes are within their limits
    (see the module docstring); ResNetSpecError otherwise, before anything is inflated."""
    check_regular_file(path)
    label = shown(path)
    infos = directory(path, MAX_ENTRIES, MAX_DIRECTORY_BYTES, f"the limit is {MAX_ENTRIES:,} entries",
                      "a torch.export archive")
    members, total = {}, 0
    for info in infos:
        if info.filename in members or info.flag_bits & 1 or \
                info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ResNetSpecError(f"{label}: not a torch.export archive (entry {shown(info.filename)}: a "
                                  "duplicate, encrypted or of an unknown compression)")
        cap = _cap(_relative(info.filename), info)
        if info.file_size > cap:
            raise ResNetSpecError(f"{label}: entry {shown(_relative(info.filename))} expands to "
                                  f"{info.file_size:,} bytes from {info.compress_size:,}; the limit is {cap:,}: "
                                  "a zip bomb?")
        members[info.filename] = info
        total += info.file_size
    if total > max_bytes:
        raise ResNetSpecError(f"{label}: the entries expand to {total:,} bytes together; the limit for this spec "
                              f"is {max_bytes:,}")
    return members


def _layout(path: str, members: dict) -> dict:
    """``{name relative to the root folder: ZipInfo}``: every entry in one root folder, torch's layout."""
    names = list(members)
    if any(n in ("version", "serialized_exported_program.json") for n in names):
        raise refuse(path, "the archive has the pre-2.7 torch.export layout, whose state torch unpickles")
    root = names[0].partition("/")[0] if names else ""
    out = {}
    for name, info in members.items():
        top, _, rel = name.partition("/")
        if top != root or not rel or ".." in name.split("/") or "\\" in name:
            raise refuse(path, f"entry {shown(name)} is outside the archive's root folder; not the layout "
                               "torch.export.save writes")
        out[rel] = info
    return out


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with z.open(info) as fh:
        return fh.read(info.file_size)


def _load_json(path, z, info, rel):
    try:
        return json.loads(_read(z, info))
    except RecursionError:
        raise refuse(path, f"{rel} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResNetSpecError(f"{shown(path)}: {rel} is not JSON ({exc})") from None


def _check_entries(path: str, members: dict) -> None:
    for rel in members:
        if rel not in ENTRIES and not NUMBERED.match(rel) and not EXTRA.match(rel):
            raise refuse(path, f"entry {shown(rel)} is not one torch.export.save writes for a program "
                               "(pickled objects, compiled code or another layout)")
    for rel in (MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG, "archive_version", "archive_format"):
        if rel not in members:
            raise refuse(path, f"entry {rel} is missing; not the layout torch.export.save writes")


def _check_records(path: str, z, members: dict) -> None:
    for rel, want in ENTRIES.items():
        if rel in members and rel != SAMPLE_INPUTS and not rel.endswith(".json"):
            text = _read(z, members[rel]).decode("utf-8", "replace").strip()
            if (want is not None and text != want) or not _VERSION.match(text or "0"):
                raise refuse(path, f"{rel} holds {text[:40]!r}, not what torch.export.save writes")
    for rel, info in members.items():
        if rel.startswith("extra/"):
            try:
                _read(z, info).decode("utf-8")
            except UnicodeDecodeError:
                raise ResNetSpecError(f"{shown(path)}: {rel} is not UTF-8 text") from None


def _check_payloads(path: str, cfg, folder: str, members: dict) -> None:
    """A weights/constants config: ``{"config": {fqn: {path_name, is_param, use_pickle, tensor_meta}}}``,
    nothing pickled, every payload a numbered raw tensor that exists."""
    entries = cfg.get("config") if isinstance(cfg, dict) and set(cfg) == {"config"} else None
    if not isinstance(entries, dict):
        raise refuse(path, f"{folder} config is not the layout torch.export.save writes")
    prefix = "weight_" if folder == "data/weights" else "tensor_"
    for fqn, meta in entries.items():
        if not (isinstance(fqn, str) and _DOTTED.match(fqn)) or not isinstance(meta, dict):
            raise refuse(path, f"{folder} config: entry {shown(str(fqn))} is not a tensor entry")
        if meta.get("use_pickle") is not False:
            raise refuse(path, f"{folder} entry {shown(fqn)} is pickled (use_pickle), and torch unpickles it "
                               "with weights_only=False")
        name = meta.get("path_name")
        if set(meta) - {"path_name", "is_param", "use_pickle", "tensor_meta"} or not isinstance(name, str) or \
                not re.fullmatch(prefix + r"\d{1,9}", name) or f"{folder}/{name}" not in members or \
                not isinstance(meta.get("tensor_meta"), dict):
            raise refuse(path, f"{folder} entry {shown(fqn)} is not a raw tensor payload of the archive")
        _walk(path, meta["tensor_meta"], "tensor_meta", 0)


def _refuse_string(path, field, value):
    what = {"target": "calls an operator outside verify's allow-list", "expr_str": "is a shape expression "
            "outside the grammar torch writes"}.get(field, "is not a value torch.export.save writes there")
    detail = f" ({check_expr(value)})" if field == "expr_str" else ""
    return refuse(path, f"{MODEL_JSON}: {field} {shown(value[:120])} {what}{detail}")


def _walk_dict(path: str, value: dict, field, depth: int) -> None:
    if field == "metadata":
        for k, v in value.items():
            if k not in META_FIELDS or not isinstance(v, str) or not _text(v):
                raise refuse(path, f"{MODEL_JSON}: node metadata {shown(str(k)[:60])} is not one torch writes")
        return
    for k, v in value.items():
        if field in NAMED_MAPS:
            if not _IDENT.match(k):
                raise refuse(path, f"{MODEL_JSON}: {field} key {shown(k[:60])} is not a name")
            _walk(path, v, None, depth + 1)
            continue
        if k.startswith("as_") and k not in ARG_KINDS:
            raise refuse(path, f"{MODEL_JSON}: an argument of kind {shown(k[:60])} (subgraphs, custom objects and "
                               "operators are outside verify's allow-list)")
        if not _FIELD.match(k):
            raise refuse(path, f"{MODEL_JSON}: field {shown(k[:60])} is not one torch.export.save writes")
        _walk(path, v, k, depth + 1)


def _walk(path: str, value, field, depth: int) -> None:
    """Check a parsed JSON value found under ``field``: strings by :data:`STRING_FIELDS`."""
    if depth > MAX_DEPTH:
        raise refuse(path, f"{MODEL_JSON} is nested too deeply")
    if field in MUST_BE_EMPTY and value:
        why = ("Python source that torch.export.load executes" if field == "guards_code"
               else "objects verify does not load")
        raise refuse(path, f"{MODEL_JSON}: {field} holds {why}")
    if isinstance(value, dict):
        _walk_dict(path, value, field, depth)
    elif isinstance(value, list):
        for v in value:
            _walk(path, v, field, depth + 1)
    elif isinstance(value, str):
        check = STRING_FIELDS.get(field)
        if check is None or not check(value):
            raise _refuse_string(path, field, value)


def _check_program(path: str, program) -> None:
    if not isinstance(program, dict) or not set(program) <= TOP_FIELDS or "graph_module" not in program:
        extra = sorted(set(program) - TOP_FIELDS) if isinstance(program, dict) else []
        raise refuse(path, f"{MODEL_JSON} is not the program torch.export.save writes (fields {extra[:5]})")
    _walk(path, program, None, 0)


def check_pt2(path: str, max_bytes: int) -> dict:
    """Every check of the module docstring; ``{relative name: ZipInfo}`` of the entries to load."""
    members = _layout(path, check_structure(path, max_bytes))
    _check_entries(path, members)
    try:
        with zipfile.ZipFile(path) as z:
            _check_records(path, z, members)
            for rel, folder in ((WEIGHTS_CONFIG, "data/weights"), (CONSTANTS_CONFIG, "data/constants")):
                _check_payloads(path, _load_json(path, z, members[rel], rel), folder, members)
            _check_program(path, _load_json(path, z, members[MODEL_JSON], MODEL_JSON))
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ResNetSpecError(f"{shown(path)}: not a readable torch.export archive ({type(exc).__name__}: "
                              f"{exc})") from None
    return members


def clean_copy(path: str, max_bytes: int, dest: str) -> str:
    """Check ``path`` (:func:`check_pt2`) and write the checked entries to ``dest`` (a new ``.pt2`` in a
    folder of the caller's), each read once, the sample inputs empty; returns ``dest``. The configs and
    the program are checked again on the bytes that are copied."""
    members = check_pt2(path, max_bytes)
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
            for rel, info in members.items():
                data = b"" if rel == SAMPLE_INPUTS else _read(src, info)
                if rel.endswith(".json") and rel != MODEL_JSON:
                    _check_payloads(path, json.loads(data), rel.split("/model_")[0], members)
                elif rel == MODEL_JSON:
                    _check_program(path, json.loads(data))
                out.writestr(f"archive/{rel}", data)
    except RecursionError:
        raise refuse(path, "a JSON entry is nested too deeply") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        if isinstance(exc, ResNetSpecError):
            raise
        raise ResNetSpecError(f"{shown(path)}: not a readable torch.export archive ({type(exc).__name__}: "
                              f"{exc})") from None
    return dest
