"""One convert run's output set: staged in a private folder, moved in together, or not at all.

Every backend writes into a hidden staging folder inside the output folder
(``<out>/.resnet-spec-XXXX.partial``). Only when all of them have succeeded are the files moved to
their final names, under an exclusive lock on the output folder, after checking once more (under the
lock) that nothing another run wrote meanwhile would be overwritten without ``--force``. So, whatever
the timing of two runs into one folder, the folder never holds outputs of both, and a failed or
interrupted run leaves nothing: the staging folder is removed on every exit path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile

from .errors import ResNetSpecError
from .fileio import check_folder, describe_os_error

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock, the re-check still runs
    fcntl = None


class OutputSet:
    """``with OutputSet(out_dir, finals, force) as out:`` write to ``out.staged(final)``, then
    ``out.commit()``. ``finals`` are the final paths (files, or folders such as a SavedModel)."""

    def __init__(self, out_dir: str, finals: list, force: bool):
        self.out_dir = out_dir
        self.finals = list(finals)
        self.force = force
        self.stage = None
        self._created = False

    def __enter__(self):
        check_folder(self.out_dir)
        self._created = not os.path.isdir(self.out_dir)
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            self.stage = tempfile.mkdtemp(prefix=".resnet-spec-", suffix=".partial", dir=self.out_dir)
        except OSError as exc:
            raise ResNetSpecError(describe_os_error(exc, self.out_dir)) from None
        return self

    def staged(self, final: str) -> str:
        return os.path.join(self.stage, os.path.basename(final))

    def commit(self) -> list:
        """Move every staged output to its final name; returns the final paths."""
        missing = [f for f in self.finals if not os.path.lexists(self.staged(f))]
        if missing:
            raise ResNetSpecError(f"{missing[0]}: the backend did not write it")
        # everything the backends wrote moves in (e.g. an ONNX model's external .data file too)
        moving = [os.path.join(self.out_dir, n) for n in sorted(os.listdir(self.stage))]
        # a Ctrl-C or SIGTERM arriving now waits until the set is complete (a few renames)
        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            with _locked(self.out_dir):
                if not self.force:
                    for f in moving:
                        if os.path.lexists(f):
                            raise ResNetSpecError(f"{f} already exists (written by another run meanwhile); "
                                                  "pass --force to overwrite it")
                for f in moving:
                    self._move_in(self.staged(f), f)
        except OSError as exc:
            raise ResNetSpecError(describe_os_error(exc, self.out_dir)) from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return moving

    def _move_in(self, src: str, dst: str) -> None:
        if os.path.isdir(src) and os.path.lexists(dst):  # a folder cannot be renamed over a folder
            os.rename(dst, tempfile.mkdtemp(prefix=".replaced-", dir=self.stage) + "/x")
        os.replace(src, dst)

    def __exit__(self, *exc):
        if self.stage:
            shutil.rmtree(self.stage, ignore_errors=True)
        if self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self.out_dir)  # only if it stayed empty (a failed first run)
        return False


@contextlib.contextmanager
def _locked(folder: str):
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def diagnose_write_failure(backend: str, out: OutputSet, exc: BaseException, needed: int) -> ResNetSpecError | None:
    """A backend failed while writing into the staging folder: if the cause is the file system (full,
    read-only, a file size limit), say so in one line naming the output folder; else None."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return ResNetSpecError(f"cannot write the {backend} output: " + describe_os_error(exc, out.out_dir))
    try:
        free = shutil.disk_usage(out.stage).free
    except OSError:
        free = None
    if free is not None and free < needed:
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return ResNetSpecError(f"cannot write the {backend} output: " + describe_os_error(err, out.out_dir)
                               + f" ({free / 2**20:.1f} MiB free, about {needed / 2**20:.0f} MiB needed)")
    probe = os.path.join(out.stage, ".probe")
    try:  # a write of 1 MiB shows a full disk, a read-only mount or a file size limit
        with open(probe, "wb") as fh:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        return ResNetSpecError(f"cannot write the {backend} output: " + describe_os_error(err, out.out_dir))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None
