"""Atomic output: write to a temporary file in the destination folder, then rename over the target.

A run that fails or is interrupted never leaves a half-written model or weight file, and an existing
output is only replaced when the caller says ``force``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from .errors import ResNetSpecError


def check_writable(path: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise ResNetSpecError(f"{path} already exists; pass --force to overwrite it")


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
