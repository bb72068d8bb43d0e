"""Workers run side by side (``isolate.run_concurrently``, what ``convert`` uses for its targets and ``import``
for an ONNX or Keras source beside the generated model): results by index, one process each, a failure stops
the rest. A FIFO's two ends must be open at once, so two workers that meet on one prove they overlapped,
without timing anything."""

from __future__ import annotations

import multiprocessing
import os
import sys
import sysconfig

import faults
import pytest

from resnet_spec import isolate


def test_two_workers_run_at_the_same_time(tmp_path):
    fifo = str(tmp_path / "meet")
    os.mkfifo(fifo)
    calls = [(faults.fifo_open, (fifo, "r")), (faults.fifo_open, (fifo, "w"))]
    got = dict((i, get()) for i, get in isolate.run_concurrently(calls, parallel=2))
    assert sorted(got) == [0, 1] and got[0] != got[1] != os.getpid()  # each in its own process


def test_a_failure_stops_the_worker_still_running(tmp_path):
    fifo = str(tmp_path / "never")
    os.mkfifo(fifo)  # nobody opens the other end: the second worker would wait for its watchdog
    calls = [(faults.fifo_open, (fifo, "r")), (faults.fifo_open, (fifo, "w", True))]
    before = set(multiprocessing.active_children())  # the session's kept workers (conftest), if any
    with pytest.raises(ValueError, match="on purpose"):
        for _, get in isolate.run_concurrently(calls, parallel=2):
            get()
    assert set(multiprocessing.active_children()) <= before  # the blocked worker was killed and reaped


def test_kept_workers_are_reused_by_label_only_inside_the_block():
    """keep_workers: a closed Worker's process serves the next Worker of its label, never another label's;
    the Worker is also a context manager (closing it on exit)."""
    with isolate.keep_workers():  # nested in the session's block (conftest): shares its processes
        with isolate.Worker("test-a") as w:
            first = w.call(os.getpid)
        with isolate.Worker("test-a") as w:
            assert w.call(os.getpid) == first
        with isolate.Worker("test-b") as w:
            assert w.call(os.getpid) not in (first, os.getpid())


def test_a_library_setting_its_own_default_keeps_the_kept_workers(monkeypatch):
    """torch's inductor writes TORCHINDUCTOR_CACHE_DIR into the caller's environment the first time it runs,
    and libraries put their own folders inside site-packages on sys.path: the processes kept before that serve
    the calls after it (another variable's change, or another sys.path entry, starts a new one)."""
    with isolate.keep_workers():
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        with isolate.Worker("test-env") as w:
            first = w.call(os.getpid)
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_test")
        with isolate.Worker("test-env") as w:
            assert w.call(os.getpid) == first
        # a library's own folder inside site-packages put on sys.path (onnxruntime.transformers does)
        site = sysconfig.get_paths()["purelib"]
        monkeypatch.setattr(sys, "path", [*sys.path, os.path.join(site, "some_library", "vendored")])
        with isolate.Worker("test-env") as w:
            assert w.call(os.getpid) == first
        monkeypatch.setenv("RESNET_SPEC_TEST_ENV_KEY", "1")
        with isolate.Worker("test-env") as w:
            second = w.call(os.getpid)
            assert second != first
        monkeypatch.setattr(sys, "path", [*sys.path, "/a/folder/of/the/callers"])
        with isolate.Worker("test-env") as w:
            assert w.call(os.getpid) != second


_BUDGET = """
import os
import sys
import sysconfig
from resnet_spec import isolate
if __name__ == "__main__":
    for budget in (None, 1):
        with isolate.keep_workers(max_bytes=budget):
            with isolate.Worker("a") as w:
                first = w.call(os.getpid)
            with isolate.Worker("a") as w:
                print(budget, w.call(os.getpid) == first)
"""


def test_kept_workers_stay_within_their_memory_budget(tmp_path):
    """keep_workers(max_bytes=...): an idle process over the budget stops instead of being kept (in a
    fresh process: this one runs inside the session's block, which nested blocks share)."""
    import subprocess
    import sys

    (tmp_path / "budget.py").write_text(_BUDGET)
    res = subprocess.run([sys.executable, str(tmp_path / "budget.py")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["None", "True", "1", "False"], res.stdout
