"""Stage 1 and 2: load a spec (zoo name, path or YAML text), follow ``extends``, validate.

A :class:`Spec` is the merged, schema-valid document plus where every value came from, so that the
resolver's semantic errors can still point at ``file:line:col``.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import jsonschema

from . import yamlio
from .config import drop_other_norm_keys
from .errors import SpecError

NOT_INHERITED = ("name", "description", "reference")
MAX_EXTENDS_DEPTH = 16


@dataclass(frozen=True)
class Spec:
    """A merged, schema-valid spec document.

    ``data`` is plain JSON-like data; ``origins`` maps a key path to ``(file, line, col)``;
    ``chain`` lists the files from the most derived to the root base.
    """

    data: dict
    origins: dict = field(repr=False)
    chain: tuple = ()

    @property
    def name(self) -> str:
        return self.data["name"]

    def error(self, message: str, path=()) -> SpecError:
        """A :class:`SpecError` located at ``path`` (or its closest recorded parent)."""
        path = tuple(path)
        if not path and self.chain:  # a whole-model problem belongs to the user's file, not to a base
            return SpecError(message, self.chain[0], 1, 1, path)
        probe = path
        while probe not in self.origins and probe:
            probe = probe[:-1]
        file, line, col = self.origins.get(probe, (self.chain[0] if self.chain else None, None, None))
        dotted = _dotted(path)
        return SpecError(f"{dotted}: {message}" if dotted else message, file, line, col, path)

    def text(self) -> str:
        """The merged spec as self-contained YAML (no ``extends``)."""
        return yamlio.dump(self.data)


@lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema shipped with the package."""
    text = resources.files("resnet_spec.schemas").joinpath("resnet.schema.json").read_text("utf-8")
    return json.loads(text)


def zoo_names() -> list[str]:
    """Names of the bundled zoo specs, sorted."""
    root = resources.files("resnet_spec.zoo")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def zoo_path(name: str) -> str | None:
    """Filesystem path of zoo entry ``name``, or None."""
    ref = resources.files("resnet_spec.zoo").joinpath(f"{name}.yaml")
    return str(ref) if ref.is_file() else None


def looks_like_yaml_text(source: str) -> bool:
    return "\n" in source or (":" in source and not os.path.exists(source))


def load(source: str, *, _seen: tuple = ()) -> Spec:
    """Load ``source`` -- a zoo name, a path to a ``.yaml`` file, or YAML text -- into a :class:`Spec`."""
    if not isinstance(source, (str, os.PathLike)):
        raise SpecError(f"expected a zoo name, a path or YAML text, got {type(source).__name__}")
    source = os.fspath(source)
    if looks_like_yaml_text(source):
        doc = yamlio.parse(source, "<string>")
        base_dir = os.getcwd()
    else:
        path = zoo_path(source) if (os.sep not in source and not source.endswith((".yaml", ".yml"))) else None
        if path is None:
            if not os.path.exists(source):
                raise SpecError(_unknown_source_message(source), source)
            path = source
        doc = yamlio.parse(yamlio.read_text(path), path)
        base_dir = os.path.dirname(os.path.abspath(path))
    return _from_document(doc, base_dir, _seen)


class ExtendsRefused(SpecError):
    """An embedded spec whose ``extends`` names anything but a zoo entry (see :func:`load_embedded`)."""


def load_embedded(text: str, where: str) -> Spec:
    """A spec stored inside a model or weight file (``resnet_spec.spec`` metadata), loaded as :func:`load`
    loads YAML text, but never taken for a path or a zoo name, and with an ``extends`` that may name only
    a zoo entry: a file someone else made must not make us read a path of its choosing (``extends:
    /etc/passwd``); that is :class:`ExtendsRefused`, raised before anything else is read. ``where``
    names the spec in errors (``model.onnx (embedded spec)``). ``convert`` embeds :meth:`Spec.text`,
    the merged spec, which has no ``extends`` at all."""
    if not isinstance(text, str):
        raise SpecError(f"the embedded spec is {_type_name(text)}, not YAML text", where)
    doc = yamlio.parse(text, where)
    if isinstance(doc.data, dict) and "extends" in doc.data:
        base = doc.data["extends"]
        if not (isinstance(base, str) and base in zoo_names()):
            shown = repr(base) if len(repr(base)) <= 300 else repr(base)[:297] + "..."
            raise ExtendsRefused(f"extends: {shown} is not a zoo entry; a spec embedded in a file may "
                                 "extend only a zoo entry, never a path", where, *doc.where(("extends",)),
                                 ("extends",))
    return _from_document(doc, os.devnull, ())  # a zoo base is found by name: base_dir is never used


def _unknown_source_message(source: str) -> str:
    names = zoo_names()
    close = difflib.get_close_matches(source, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; 'resnet-spec list' shows the zoo"
    return f"no such file, and no zoo entry named {source!r}{hint}"


def _from_document(doc: yamlio.Document, base_dir: str, seen: tuple) -> Spec:
    if not isinstance(doc.data, dict):
        raise doc.error(f"a spec must be a mapping of fields, got {_type_name(doc.data)}")
    validate(doc)
    own = {path: (doc.file,) + pos for path, pos in doc.positions.items()}
    data = doc.data
    chain = (doc.file,)
    if "extends" in data:
        key = os.path.abspath(doc.file) if doc.file != "<string>" else doc.file
        base_src = data["extends"]
        base_path = zoo_path(base_src) if (not base_src.endswith((".yaml", ".yml")) and "/" not in base_src) else None
        if base_path is None:
            base_path = os.path.normpath(os.path.join(base_dir, base_src))
            if not os.path.isfile(base_path):
                close = difflib.get_close_matches(base_src, zoo_names(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "; 'resnet-spec list' shows the zoo"
                raise doc.error(f"extends: base {base_src!r} is neither a zoo entry nor a file "
                                f"(looked for {base_path}){hint}", ("extends",))
        if os.path.abspath(base_path) in seen or os.path.abspath(base_path) == key:
            cycle = " -> ".join(os.path.basename(s) for s in seen + (key, base_path))
            raise doc.error(f"extends: cycle ({cycle})", ("extends",))
        if len(seen) >= MAX_EXTENDS_DEPTH:
            raise _ChainTooDeep(seen + (key, base_path))
        try:
            base = load(base_path, _seen=seen + (key,))
        except _ChainTooDeep as exc:
            if seen:
                raise
            raise doc.error(exc.describe(), ("extends",)) from None
        merged = {k: copy.deepcopy(v) for k, v in base.data.items() if k not in NOT_INHERITED}
        origins = {p: o for p, o in base.origins.items() if not (p and p[0] in NOT_INHERITED)}
        _merge(merged, {k: v for k, v in data.items() if k != "extends"}, (), origins, own)
        drop_other_norm_keys(merged, data, origins)  # norm.type switched: the base's other-type keys go
        data = merged
        chain = chain + base.chain
    else:
        data = copy.deepcopy(data)
        origins = own
    if "name" not in data:
        data = {"name": _default_name(doc.file), **data}
    return Spec(data=data, origins=origins, chain=chain)


class _ChainTooDeep(SpecError):
    """Raised deep in an ``extends`` chain, reported at the file the user gave (see _from_document)."""

    def __init__(self, chain):
        self.chain = tuple(chain)
        super().__init__(self.describe(), self.chain[0], 1, 1)

    def __reduce__(self):
        return (type(self), (self.chain,))

    def describe(self) -> str:
        names = [os.path.basename(c) for c in self.chain]
        shown = names if len(names) <= 6 else names[:3] + ["..."] + names[-2:]
        return (f"extends: chain deeper than {MAX_EXTENDS_DEPTH} files "
                f"({' -> '.join(shown)}; {len(names)} files)")


def _default_name(file: str) -> str:
    if file == "<string>":
        return "model"
    stem = os.path.splitext(os.path.basename(file))[0]
    # ASCII only: the name pattern (and every backend's file and class names) allow nothing else
    cleaned = "".join(c if ((c.isascii() and c.isalnum()) or c in "_.-") else "_" for c in stem)[:64] or "model"
    return cleaned if (cleaned[0].isalpha() or cleaned[0] == "_") else f"m_{cleaned}"[:64]


def _merge(dst: dict, src: dict, path: tuple, origins: dict, src_origins: dict) -> None:
    """Deep-merge ``src`` into ``dst``: mappings merge key by key, anything else replaces."""
    for key, value in src.items():
        sub = path + (key,)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            origins[sub] = src_origins.get(sub, origins.get(sub))
            _merge(dst[key], value, sub, origins, src_origins)
        else:
            for p in [p for p in origins if p[: len(sub)] == sub]:
                del origins[p]
            origins.update({p: o for p, o in src_origins.items() if p[: len(sub)] == sub})
            dst[key] = copy.deepcopy(value)


# JSON Schema counts 3.0 as an integer; a spec must not (a float kernel size or stride breaks every
# framework downstream), so "integer" means a YAML integer here.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)))


def validate(doc: yamlio.Document) -> None:
    """Check one document against the JSON Schema; raise the most relevant error, located."""
    validator = _Validator(schema())
    errors = list(validator.iter_errors(doc.data))
    if errors:
        raise _located(doc, jsonschema.exceptions.best_match(errors)) from None


def schema_errors(doc: yamlio.Document) -> list:
    """Every schema error of one document as a located :class:`SpecError`, in file order."""
    validator = _Validator(schema())
    out, seen = [], set()
    for err in validator.iter_errors(doc.data):
        err = jsonschema.exceptions.best_match([err])  # inside a oneOf, the branch of the value's type
        extra = _extra_keys(err) if err.validator == "additionalProperties" else [None]
        for key in extra:  # one error per unknown key
            e = _located(doc, err, key)
            if str(e) not in seen:
                seen.add(str(e))
                out.append((e.line or 0, e.col or 0, err.validator != "type", len(out), e))
    # where a value has the wrong type, its other checks (range, length) say nothing more
    mistyped = {(line, col) for line, col, other, _, _ in out if not other}
    return [e for line, col, other, _, e in sorted(out) if not (other and (line, col) in mistyped)]


def _located(doc: yamlio.Document, err: jsonschema.ValidationError, key=None) -> SpecError:
    # Prefer the deepest error inside a oneOf/anyOf: it names the actual offending value.
    while err.context:
        err = jsonschema.exceptions.best_match(err.context)
    path = tuple(err.absolute_path)
    where = path
    if err.validator == "additionalProperties":  # point at the unknown key itself, not its parent
        key = key if key is not None else _extra_keys(err)[0]
        where = path + (key,)
    return doc.error(_describe(err, path, key), where)


def _extra_keys(err: jsonschema.ValidationError) -> list:
    return sorted(set(err.instance) - set(err.schema.get("properties", {})), key=str)


def _describe(err: jsonschema.ValidationError, path: tuple, key=None) -> str:
    where = _dotted(path) or "spec"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        key = key if key is not None else _extra_keys(err)[0]
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
        return f"{_dotted(path + (key,))}: unknown key {key!r}{hint}"
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return f"{where}: missing required field {missing!r}"
    if err.validator == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        got = _type_name(err.instance) + ("" if err.instance is None else f" {_short(err.instance)}")
        return f"{where}: expected {want}, got {got}"
    if err.validator == "enum":
        return f"{where}: {_short(err.instance)} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "const":
        return f"{where}: expected {err.validator_value!r}, got {_short(err.instance)}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[err.validator]
        return f"{where}: {_short(err.instance)} is out of range (must be {op} {err.validator_value})"
    if err.validator in ("minItems", "maxItems"):
        op = "at least" if err.validator == "minItems" else "at most"
        return f"{where}: needs {op} {err.validator_value} item(s), got {len(err.instance)}"
    if err.validator == "pattern":
        return f"{where}: {_short(err.instance)} is not a valid name (letters, digits, '_', '.', '-'; starts with a letter or '_'; at most 64 characters)"
    if err.validator in ("minLength", "maxLength"):
        return f"{where}: string length must be {'at least' if err.validator == 'minLength' else 'at most'} {err.validator_value}"
    return f"{where}: {err.message}"


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dotted(path) -> str:
    """``stages[1].blocks``; a key that is not a plain identifier is quoted (``stem['\\r']``) so that
    user text can never break the one-line error format."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and p.isidentifier() and p.isascii():
            out += f".{p}" if out else p
        else:
            out += f"[{p!r}]"
    return out
