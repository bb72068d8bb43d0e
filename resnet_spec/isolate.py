"""Run framework code in a fresh worker process.

TensorFlow, PyTorch/torchvision and ONNX Runtime each load native libraries that do not always
coexist in one process (on our reference machine importing torchvision after TensorFlow has run a
model segfaults). Anything that needs two frameworks therefore runs each in its own spawned process
and exchanges numpy arrays; a crash in a worker becomes an error message, never a dead caller.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .errors import ResNetSpecError


class WorkerCrashed(ResNetSpecError):
    """The worker process died (segfault, abort, out of memory) instead of returning."""


def _quiet_env():
    # TensorFlow's C++ logging and oneDNN notices are noise for our users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _worker_init():
    """Worker start-up: quiet frameworks, and leave Ctrl-C to the parent.

    A terminal's Ctrl-C reaches the whole process group. A worker interrupted at an arbitrary point
    (inside a framework's import or its atexit handlers) prints a traceback of its own, and one
    interrupted mid-write leaves its temporary file behind. So workers ignore SIGINT: the parent gets
    the KeyboardInterrupt, starts nothing new, and waits for the running step, whose outputs are
    written atomically, to finish.
    """
    _quiet_env()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_isolated(fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` in a new spawned process and return its (picklable) result.

    Exceptions raised by ``fn`` are re-raised here; a worker that dies raises :class:`WorkerCrashed`.
    ``fn`` must be importable by module path (a module-level function).
    """
    _quiet_env()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init) as pool:
        future = pool.submit(fn, *args, **kwargs)
        try:
            return future.result()
        except BrokenProcessPool:
            raise WorkerCrashed(f"the worker running {fn.__module__}.{fn.__qualname__} crashed "
                                "(killed by a signal or out of memory)") from None


class Worker:
    """One long-lived spawned process, reused across calls (TensorFlow takes seconds to import).

    A crash is reported as :class:`WorkerCrashed` and the next call starts a fresh process.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, label: str = "worker"):
        self.label = label
        self._pool = None

    def call(self, fn, *args, **kwargs):
        _quiet_env()
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init)
        future = self._pool.submit(fn, *args, **kwargs)
        try:
            return future.result()
        except BrokenProcessPool:
            self.close()
            raise WorkerCrashed(f"the {self.label} worker process crashed (killed by a signal or out of "
                                "memory)") from None

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
