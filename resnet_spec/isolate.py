"""Run framework code in a fresh worker process.

TensorFlow, PyTorch/torchvision and ONNX Runtime each load native libraries that do not always
coexist in one process (on our reference machine importing torchvision after TensorFlow has run a
model segfaults). Anything that needs two frameworks therefore runs each in its own spawned process
and exchanges numpy arrays; a crash in a worker becomes an error message, never a dead caller.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
import threading
from contextlib import contextmanager
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
    """Worker start-up: quiet frameworks, leave Ctrl-C and SIGTERM to the parent, die with it.

    A terminal's Ctrl-C (and a container stop's SIGTERM) can reach the whole process group. A worker
    interrupted at an arbitrary point (inside a framework's import or its atexit handlers) prints a
    traceback of its own. So workers ignore SIGINT and SIGTERM: the parent takes the signal, kills its
    workers (:func:`_kill_pool`) and removes their temporary output. A worker whose parent is killed
    outright (SIGKILL) is killed by the kernel too (Linux PR_SET_PDEATHSIG), so none keeps running.
    """
    _quiet_env()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()


def _die_with_parent():
    parent = multiprocessing.parent_process()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup still kills us
        return
    if parent is not None and os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def _signals_ignored_by_new_workers():
    """Workers started inside this block begin with SIGINT and SIGTERM ignored: an ignored disposition
    survives ``exec`` (and Python installs no KeyboardInterrupt handler over it), so a Ctrl-C that reaches
    the process group while a worker is still importing cannot make that worker print a traceback.

    The parent holds (blocks) the two signals meanwhile and gets its own handlers back before it unblocks
    them, so a signal that came during the start is delivered to the parent then, not lost (Linux keeps
    a blocked signal pending even while its disposition is 'ignore')."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    old = {s: signal.getsignal(s) for s in sigs}
    try:
        for s in sigs:
            if old[s] is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(s, signal.SIG_IGN)
        yield
    finally:
        for s in sigs:
            if old[s] is not None:
                signal.signal(s, old[s])
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _submit(pool, fn, *args, **kwargs):
    """``pool.submit``, which starts the pool's worker process on first use, with the worker ignoring
    SIGINT and SIGTERM from its first instruction (:func:`_signals_ignored_by_new_workers`)."""
    with _signals_ignored_by_new_workers():
        return pool.submit(fn, *args, **kwargs)


def _kill_pool(pool) -> None:
    """Stop a pool's workers now (SIGKILL) and reap them; used when the parent is interrupted (Ctrl-C,
    SIGTERM), when every worker of this process is to stop. A worker that was being started when the
    signal came is not in the pool's table yet (the pool registers it after ``start`` returns) but is a
    child all the same, so every live multiprocessing child is killed too: one left running would keep
    ``shutdown`` waiting for its work."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    procs += [p for p in multiprocessing.active_children() if p not in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join()
    pool.shutdown(wait=False, cancel_futures=True)


def _new_pool() -> ProcessPoolExecutor:
    """A one-process pool whose worker is spawned (never forked) and starts with :func:`_worker_init`."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)


def run_isolated(fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)`` in a new spawned process and return its (picklable) result.

    Exceptions raised by ``fn`` are re-raised here; a worker that dies raises :class:`WorkerCrashed`.
    ``fn`` must be importable by module path (a module-level function). Inside :func:`keep_workers`, a
    function whose module names its frameworks' worker (a module-level ``KEPT_WORKER = "label"``: every
    function of the module runs in that label's kind of process) runs in a kept :class:`Worker`.
    """
    label = getattr(sys.modules.get(fn.__module__), "KEPT_WORKER", None)
    if label and _KEPT is not None:
        worker = Worker(label)
        try:
            return worker.call(fn, *args, **kwargs)
        finally:
            worker.close()
    _quiet_env()
    with _new_pool() as pool:
        try:  # submit inside: Ctrl-C while it starts the worker must kill it, not wait for its work
            return _submit(pool, fn, *args, **kwargs).result()
        except BrokenProcessPool:
            raise WorkerCrashed(f"the worker running {fn.__module__}.{fn.__qualname__} crashed "
                                "(killed by a signal or out of memory)") from None
        except BaseException as exc:  # Ctrl-C or SIGTERM in the parent: stop the worker, then unwind
            if not isinstance(exc, Exception):
                _kill_pool(pool)
            raise


def run_concurrently(calls, parallel: int):
    """Run each ``(fn, args)`` of ``calls`` in its own new spawned process, at most ``parallel`` at once.

    Yields ``(index, get)`` as each finishes; ``get()`` returns that call's result or raises what it
    raised (:class:`WorkerCrashed` for a worker that died). Each call has a process of its own, so two
    frameworks never share one. When the caller stops early (an error, Ctrl-C, SIGTERM) or the generator
    is closed, every worker still running is killed and reaped before the exception goes on. A call
    given as ``(fn, args, label)`` runs, inside :func:`keep_workers`, in a kept process of that label
    (and leaves it kept); outside it, in a new process as the others.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    _quiet_env()
    pending, running = list(enumerate(calls)), {}
    try:
        while pending or running:
            while pending and len(running) < max(1, parallel):
                i, (fn, args, *label) = pending.pop(0)
                key = _kept_key(label[0]) if label and _KEPT is not None else None
                pool = (_take_kept(key) if key else None) or _new_pool()
                running[_submit(pool, fn, *args)] = (i, pool, fn, key)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i, pool, fn, key = running.pop(fut)
                if not (key and _keep(key, pool)):
                    pool.shutdown(wait=True)
                yield i, _getter(fut, fn)
    finally:
        for _, pool, _, _ in running.values():
            _kill_pool(pool)


def _getter(fut, fn):
    def get():
        try:
            return fut.result()
        except BrokenProcessPool:
            raise WorkerCrashed(f"the worker running {fn.__module__}.{fn.__qualname__} crashed "
                                "(killed by a signal or out of memory)") from None
    return get


class Worker:
    """One long-lived spawned process, reused across calls (TensorFlow takes seconds to import).

    A crash is reported as :class:`WorkerCrashed` and the next call starts a fresh process.
    Use as a context manager, or call :meth:`close`. Inside :func:`keep_workers` a closed worker's
    process is kept for the next worker of the same label instead of stopped.
    """

    def __init__(self, label: str = "worker"):
        self.label = label
        self._pool = None
        self._key = None

    def call(self, fn, *args, **kwargs):
        _quiet_env()
        if self._pool is None:
            self._key = _kept_key(self.label)
            self._pool = _take_kept(self._key) or _new_pool()
        try:  # submit inside: Ctrl-C while it starts the worker must kill it, not wait for its work
            return _submit(self._pool, fn, *args, **kwargs).result()
        except BrokenProcessPool:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            raise WorkerCrashed(f"the {self.label} worker process crashed (killed by a signal or out of "
                                "memory)") from None
        except BaseException as exc:  # Ctrl-C or SIGTERM in the parent: stop the worker, then unwind
            if not isinstance(exc, Exception):
                _kill_pool(self._pool)
                self._pool = None
            raise

    def close(self):
        if self._pool is not None:
            if not _keep(self._key, self._pool):
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- processes kept between workers (keep_workers) ---------------------------------------------------
_KEPT: dict | None = None  # (label, environment, sys.path) -> an idle worker's pool, inside keep_workers()
_IGNORED_ENV: frozenset = frozenset()
#: variables a library sets in the caller's own environment, midway, to values that mean nothing to a
#: new process: torch's inductor writes its default cache folder (the first time it runs: a
#: ``torch.onnx.export(dynamo=True)``, ``torch.compile``) and a pointer of its own into ``os.environ``.
#: Counted in the key, one such write would leave every process kept before it unused (each backend's
#: worker started again, seconds each).
SELF_SET_ENV = frozenset({"TORCHINDUCTOR_CACHE_DIR", "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"})
DEFAULT_MAX_KEPT = 8  # keep_workers' max_processes; an idle TensorFlow worker holds about a gigabyte
_MAX_KEPT = DEFAULT_MAX_KEPT  # keep_workers(max_processes=...)
_MAX_KEPT_BYTES: int | None = None  # keep_workers(max_bytes=...): the idle processes' memory, all together


@contextmanager
def keep_workers(ignore_env=(), max_bytes: int | None = None, max_processes: int = DEFAULT_MAX_KEPT):
    """Within this block, the process of a closed :class:`Worker` is kept and handed to the next
    :class:`Worker` of the same label started with the same environment variables and ``sys.path`` entries,
    instead of a new process importing its frameworks again (seconds each: TensorFlow, JAX, Keras).
    For a session that runs many checks in one Python process (a notebook, a test run): every
    ``parity``, ``parity --train`` and ``verify`` call then reuses the processes of the one before.
    Two labels never share a process, so frameworks stay apart as without it; a worker that crashed is
    never kept. At most the ``max_processes`` most recently used idle processes are kept; all stop when
    the block ends (nested blocks share the outermost one's processes). ``ignore_env`` names environment
    variables that change between calls without mattering to a worker (a test runner's
    ``PYTEST_CURRENT_TEST``; :data:`SELF_SET_ENV` always). Entries a library adds to ``sys.path`` inside
    site-packages (onnxruntime's ``transformers``, setuptools' vendored packages) do not count either.
    ``max_bytes`` also bounds the idle processes' resident memory, all together (Linux; the least
    recently used go first): several kept TensorFlow and JAX processes hold gigabytes."""
    global _KEPT, _IGNORED_ENV, _MAX_KEPT_BYTES, _MAX_KEPT
    if _KEPT is not None:
        yield
        return
    _KEPT, _IGNORED_ENV, _MAX_KEPT_BYTES, _MAX_KEPT = {}, frozenset(ignore_env), max_bytes, max_processes
    try:
        yield
    finally:
        kept, _KEPT, _IGNORED_ENV, _MAX_KEPT_BYTES, _MAX_KEPT = _KEPT, None, frozenset(), None, DEFAULT_MAX_KEPT
        for pool in kept.values():
            pool.shutdown(wait=True, cancel_futures=True)


def _kept_key(label: str) -> tuple:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k not in _IGNORED_ENV and k not in SELF_SET_ENV))
    return label, env, frozenset(p for p in sys.path if not _inside_site_packages(p))


def _inside_site_packages(entry: str) -> bool:
    """A folder below (not equal to) one of the interpreter's site-packages: a library's own addition."""
    path = os.path.abspath(entry or ".")
    return any(path.startswith(site + os.sep) for site in _site_packages())


@functools.lru_cache(maxsize=1)
def _site_packages() -> tuple:
    import site
    import sysconfig

    found = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    found.update(site.getsitepackages() if hasattr(site, "getsitepackages") else ())
    return tuple(os.path.abspath(p) for p in found)


def _alive(pool) -> bool:
    procs = getattr(pool, "_processes", None) or {}
    return not getattr(pool, "_broken", False) and bool(procs) and all(p.is_alive() for p in procs.values())


def _take_kept(key):
    pool = _KEPT.pop(key, None) if _KEPT is not None else None
    if pool is not None and not _alive(pool):  # killed meanwhile (an interrupted run kills every child)
        pool.shutdown(wait=True, cancel_futures=True)
        return None
    return pool


def _keep(key, pool) -> bool:
    if _KEPT is None or key in _KEPT or not _alive(pool):
        return False
    _KEPT[key] = pool
    while _KEPT and (len(_KEPT) > _MAX_KEPT or
                     (_MAX_KEPT_BYTES is not None and sum(map(_resident, _KEPT.values())) > _MAX_KEPT_BYTES)):
        _KEPT.pop(next(iter(_KEPT))).shutdown(wait=True, cancel_futures=True)
    return key in _KEPT


def _resident(pool) -> int:
    """Bytes of memory a pool's processes hold (Linux /proc; 0 where it cannot be read)."""
    return sum(resident_bytes(proc.pid) for proc in (getattr(pool, "_processes", None) or {}).values())


def resident_bytes(pid: int) -> int:
    """Bytes of memory process ``pid`` holds (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def available_bytes() -> int | None:
    """The memory the system reports available for new work (Linux MemAvailable; None where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
