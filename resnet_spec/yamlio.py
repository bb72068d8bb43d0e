"""Safe YAML loading that keeps source positions.

PyYAML's ``safe_load`` silently keeps the last of duplicate keys, expands aliases without bound and
forgets where each value came from. Specs need all three fixed: we compose the node graph (linear in
the text, aliases are shared nodes), then construct plain Python data ourselves, rejecting duplicate
keys, counting every node visited so that alias/merge bombs stop after a fixed budget, and recording
``path -> (line, col)`` (1-based) for error messages.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import yaml

from .errors import SpecError
from .fileio import file_kind, os_reason

MAX_BYTES = 1_000_000
MAX_NODES = 100_000  # after alias expansion; a real spec has a few hundred
MAX_DEPTH = 50  # nesting of lists and mappings; a real spec nests 4 deep

_MERGE = "tag:yaml.org,2002:merge"
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


@dataclass
class Document:
    """Parsed YAML: the data, its text, its file name and a position for every path."""

    data: object
    text: str
    file: str
    positions: dict = field(default_factory=dict)

    def where(self, path) -> tuple[int | None, int | None]:
        """The closest recorded position of ``path`` (walking up to its parents)."""
        path = tuple(path)
        while path not in self.positions and path:
            path = path[:-1]
        return self.positions.get(path, (None, None))

    def error(self, message: str, path=()) -> SpecError:
        line, col = self.where(path)
        return SpecError(message, self.file, line, col, path)


def read_text(path: str) -> str:
    """Read a spec file as UTF-8 text with the size, type and encoding checks of the spec format.

    Only regular files are read (a FIFO, a device such as /dev/zero or a socket is refused before
    anything is read, and the file is opened non-blocking so that a FIFO swapped in cannot hang us),
    and never more than ``MAX_BYTES + 1`` bytes whatever the file claims to be.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SpecError(os_reason(exc), path) from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind == "a directory":
            raise SpecError("is a directory, not a spec file", path)
        if kind != "a regular file":
            raise SpecError(f"is {kind}, not a regular file; specs are read from regular files only", path)
        size = os.fstat(fd).st_size
        if size > MAX_BYTES:
            raise SpecError(f"file is {size:,} bytes; specs are limited to {MAX_BYTES:,} bytes", path)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(os_reason(exc), path) from None
    finally:
        os.close(fd)
    return decode(raw, path)


def decode(raw: bytes, file: str) -> str:
    if len(raw) > MAX_BYTES:
        raise SpecError(f"spec is {len(raw):,} bytes; specs are limited to {MAX_BYTES:,} bytes", file)
    if b"\x00" in raw:
        raise SpecError("binary data (NUL byte) in a spec file; expected UTF-8 YAML text", file)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", file, line, col) from None
    return text


def parse(text: str, file: str = "<string>") -> Document:
    """Parse YAML ``text`` into a :class:`Document`; every failure is a located :class:`SpecError`."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError(f"spec is larger than {MAX_BYTES:,} bytes", file)
    try:
        nodes = _compose_all(text, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = exc.problem or str(exc)
        if "\t" in msg or "tab" in msg:
            msg += " (YAML does not allow tabs for indentation; use spaces)"
        if exc.context:
            msg = f"{msg} ({exc.context})"
        raise SpecError(f"invalid YAML: {msg}", file,
                        mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:  # a control character: PyYAML gives a character offset only
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise SpecError(f"invalid YAML: control character U+{exc.character:04X} is not allowed in YAML text",
                        file, line, col) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {str(exc).splitlines()[0]}", file) from None
    if len(nodes) > 1:
        n = nodes[1]
        raise SpecError("a spec file holds one YAML document; found a second one", file,
                        n.start_mark.line + 1, n.start_mark.column + 1)
    doc = Document(None, text, file)
    if not nodes or nodes[0] is None:
        raise SpecError("empty spec: expected a mapping such as 'stages: [...]'", file, 1, 1)
    builder = _Builder(doc)
    doc.data = builder.build(nodes[0], ())
    return doc


class _DepthLoader(yaml.SafeLoader):
    """PyYAML's composer recurses once per nesting level; stop at ``MAX_DEPTH`` before Python's own
    recursion limit turns a deeply nested spec into a RecursionError."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise SpecError(f"YAML nested more than {MAX_DEPTH} levels deep", self._file,
                                mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose_all(text: str, file: str) -> list:
    loader = _DepthLoader(text)
    loader._file = file
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.count = 0
        self.constructor = yaml.SafeLoader("")  # only its scalar constructors are used

    def _tick(self, node):
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(f"YAML expands to more than {MAX_NODES:,} nodes (alias or merge-key bomb?)",
                            self.doc.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node, path, depth=0):
        self._tick(node)
        if depth > MAX_DEPTH:
            raise SpecError(f"YAML nested more than {MAX_DEPTH} levels deep", self.doc.file,
                            node.start_mark.line + 1, node.start_mark.column + 1)
        self.doc.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node, path=()):
        """Construct one scalar; a tag that cannot build it, a non-finite number or a string that cannot
        be written as UTF-8 is a located error (nothing in a spec is NaN, infinite or a lone surrogate)."""
        where = (self.doc.file, node.start_mark.line + 1, node.start_mark.column + 1)
        try:
            value = self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise SpecError(f"invalid YAML value: {getattr(exc, 'problem', None) or exc}", *where) from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError):
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise SpecError(f"invalid YAML value: {_short(node.value)} cannot be read as {tag}", *where) from None
        if isinstance(value, float) and not math.isfinite(value):
            field = ".".join(p if isinstance(p, str) and p.isidentifier() and p.isascii() else repr(p) for p in path)
            raise SpecError(f"{field + ': ' if field else ''}{_short(node.value)} is not a finite number; every number "
                            "in a spec must be finite", *where)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise SpecError(f"text holds U+{ord(value[exc.start]):04X}, a lone surrogate that cannot be "
                                "written as UTF-8", *where) from None
        return value

    def _mapping(self, node, path, depth):
        out: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            self._tick(key_node)
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        raise SpecError("merge key '<<' needs a mapping", self.doc.file,
                                        src.start_mark.line + 1, src.start_mark.column + 1)
                    for k, v in self._mapping(src, path, depth + 1).items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("mapping keys must be plain strings", self.doc.file,
                                key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            key = self._scalar(key_node)
            if not isinstance(key, str):
                key = str(key) if not isinstance(key, bool) else key_node.value
            if key in out:
                first = self.doc.positions.get(path + (key,), (None, None))
                raise SpecError(f"duplicate key {key!r} (first defined at line {first[0]})",
                                self.doc.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                path + (key,))
            self.doc.positions[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        for k, v in merged.items():
            out.setdefault(k, v)
        return out


def _short(text) -> str:
    text = repr(text)
    return text if len(text) <= 40 else text[:37] + "..."


def dump(data) -> str:
    """Deterministic YAML text of plain data (key order kept)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
