"""Atomic output: write to a temporary file in the destination folder, then rename over the target.

A run that fails or is interrupted never leaves a half-written model or weight file, and an existing
output is only replaced when the caller says ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile

from .errors import ResNetSpecError


def file_kind(mode: int) -> str:
    """'a regular file', 'a directory', 'a FIFO (named pipe)', ... for an ``st_mode``."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def os_reason(exc: OSError) -> str:
    """The cause of an OS error in words ('no such file', 'permission denied', ...), no path."""
    words = {errno.ENOENT: "no such file", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
             errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "is a directory",
             errno.ELOOP: "too many levels of symbolic links", errno.ENAMETOOLONG: "file name too long",
             errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large"}
    return words.get(exc.errno, (exc.strerror or str(exc)).lower())


def shown(name) -> str:
    """A file or model name as every message shows it: unchanged when all its characters are printable,
    else quoted and escaped as ``repr`` does (``'a\\nerror: b'``), so a name someone else chose can never
    break a message into a second line or hide its characters."""
    text = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    return text if text.isprintable() else repr(text)


def not_regular(path: str, mode: int, why: str = "") -> str | None:
    """The refusal of anything but a regular file (``None`` for one): ``path: is a FIFO (named pipe),
    not a regular file`` plus ``why``. The one wording of the one rule every reader follows."""
    if stat.S_ISREG(mode):
        return None
    return f"{shown(path)}: is {file_kind(mode)}, not a regular file{why}"


def check_regular_file(path: str, max_bytes: int | None = None, *, error=ResNetSpecError,
                       missing: str = "no such file", why: str = "") -> os.stat_result:
    """Refuse, before it is opened, anything but a regular file (of at most ``max_bytes``): a FIFO would
    hang a reader, /dev/zero never ends, a socket or device is no model. Symbolic links are followed, so
    a link to one of them is refused too. Every reader of a file someone else made runs this first
    (``yamlio.read_text`` and ``weights.files.open_checked`` test the descriptor they opened); the error is
    ``error(message)``, ``missing`` the words for a path that is not there."""
    try:
        st = os.stat(path)
    except OSError as exc:
        reason = missing if exc.errno == errno.ENOENT else os_reason(exc)
        raise error(f"{shown(path)}: {reason}") from None
    refusal = not_regular(path, st.st_mode, why)
    if refusal:
        raise error(refusal)
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{shown(path)}: file is {st.st_size:,} bytes; the limit is {max_bytes:,}")
    return st


def open_regular(path: str, max_bytes: int | None = None, *, error=ResNetSpecError,
                 missing: str = "no such file", why: str = ""):
    """``path`` opened once for reading (a binary file), after the test of :func:`check_regular_file` made
    on the descriptor opened (``fstat``), not on the path: what is checked is what is read, even if the
    path is replaced in between. The open is non-blocking (a FIFO never blocks it) and follows links, as
    :func:`check_regular_file` does; the caller reads the returned file, never the path again."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:  # a socket cannot be opened at all (ENXIO): say what it is, as the stat does
        check_regular_file(path, error=error, missing=missing, why=why)
        raise error(describe_os_error(exc, path)) from None
    try:
        st = os.fstat(fd)
        refusal = not_regular(path, st.st_mode, why)
        if refusal:
            raise error(refusal)
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{shown(path)}: file is {st.st_size:,} bytes; the limit is {max_bytes:,}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular_tree(folder: str, max_entries: int = 10_000) -> None:
    """:func:`check_regular_file` on every file below ``folder`` (a SavedModel: its runtime reads them
    all), refusing a folder of more than ``max_entries`` entries."""
    count = 0
    for root, dirs, files in os.walk(folder):
        count += len(dirs) + len(files)
        if count > max_entries:
            raise ResNetSpecError(f"{folder}: more than {max_entries:,} files; not a model folder")
        for name in files:
            check_regular_file(os.path.join(root, name))


def describe_os_error(exc: OSError, path: str | None = None) -> str:
    """``path: cause`` for an OS error, naming ``path`` (or the error's own file name)."""
    return f"{shown(path or exc.filename or '?')}: {os_reason(exc)}"


def check_writable(path: str, force: bool) -> None:
    if os.path.lexists(path) and not force:
        raise ResNetSpecError(f"{path} already exists; pass --force to overwrite it")


def check_output(path: str, force: bool, is_dir: bool = False) -> None:
    """Refuse, before any work, an output that exists (without ``force``) or that ``force`` could not
    replace: a folder where a file goes, or a file where a folder goes."""
    check_writable(path, force)
    if os.path.lexists(path) and os.path.isdir(path) != is_dir:
        want, got = ("a folder", "a file") if is_dir else ("a file", "a folder")
        raise ResNetSpecError(f"{path}: is {got}; the output is {want}, so --force cannot replace it")


def check_folder(folder: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written: a file, a path
    below a file, a read-only or full file system. The test is a real write (permission bits alone
    say nothing for root or on a read-only mount)."""
    if folder == "":
        raise ResNetSpecError("the output folder is an empty string")
    probe = os.path.abspath(folder)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = folder if probe == os.path.abspath(folder) else f"{folder} (below {probe})"
        raise ResNetSpecError(f"{what}: {probe} is {file_kind(os.stat(probe).st_mode)}, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".resnet-spec-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ResNetSpecError(describe_os_error(exc, folder if probe == os.path.abspath(folder) else probe)) from None


def check_file_writable(path: str) -> None:
    """An output file (a report) can be written: its folder exists and takes a write, and the path
    itself is not a folder. Run before the work whose result it will hold."""
    if os.path.isdir(path):
        raise ResNetSpecError(f"{path}: is a folder, not a file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ResNetSpecError(f"{path}: its folder {parent} does not exist")
    check_folder(parent)


@contextlib.contextmanager
def atomic_path(path: str, force: bool = True, is_dir: bool = False):
    """Yield a temporary path beside ``path``; on success rename it to ``path`` (files or folders)."""
    check_writable(path, force)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    tmp = (tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent) if is_dir else
           tempfile.mktemp(prefix=f".{base}.", suffix=".tmp", dir=parent))
    if is_dir:  # mkdtemp makes 0700; an output folder gets the mode any new folder gets (0755 under umask 022)
        os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if is_dir:
            if os.path.exists(path):
                old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
                os.rename(path, os.path.join(old, "x"))
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_bytes(path: str, data: bytes, force: bool = True) -> None:
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str, text: str, force: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), force)
