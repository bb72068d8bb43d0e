"""CPU seconds per test, for finding what makes the suite slow on a shared or loaded machine.

Wall-clock durations (``--durations``) of two xdist workers sharing two cores with their framework
workers say little about cost: a test waiting for a kept worker is charged for the other worker's
load. With ``RESNET_SPEC_CPU_TIMES=FILE`` each test process appends ``<cpu seconds> <test id>`` lines to
``FILE.<xdist worker>``: the user + system time of the test process and of every process below it (live
ones from /proc, ended ones through their parents), from the start of the test's setup to the end of its
teardown. Linux only; off unless the variable is set. ``python tests/cpu_times.py FILE`` sums the files
by test and by test function."""

from __future__ import annotations

import os
import resource
import sys

import pytest

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _below(root: int) -> list:
    """Live processes below ``root`` (children, their children, ...)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parent[int(entry)] = (int(fields[1]), fields)
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, (pp, _) in parent.items() if pp == pid]
        out += [parent[k][1] for k in kids]
        todo += kids
    return out


def cpu_seconds() -> float:
    """This process's CPU time, its ended children's, and the live descendants' (with their ended ones)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    # /proc/PID/stat after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15), in ticks
    live = sum(sum(int(f) for f in fields[11:15]) for fields in _below(os.getpid())) / _TICK
    return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime + live


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("RESNET_SPEC_CPU_TIMES")
    if not path or not os.path.isdir("/proc"):
        yield
        return
    start = cpu_seconds()
    yield
    with open(f"{path}.{os.environ.get('PYTEST_XDIST_WORKER', 'main')}", "a") as f:
        f.write(f"{cpu_seconds() - start:.2f} {item.nodeid}\n")


def _report(path: str) -> None:
    import glob
    import re

    tests = {}
    for name in glob.glob(f"{path}.*"):
        for line in open(name):
            sec, test = line.split(" ", 1)
            tests[test.strip()] = tests.get(test.strip(), 0.0) + float(sec)
    funcs = {}
    for test, sec in tests.items():
        key = re.sub(r"\[.*\]", "", test.split("@")[0])
        funcs[key] = funcs.get(key, 0.0) + sec
    print(f"{sum(tests.values()):.0f} CPU seconds in {len(tests)} tests; by test function:")
    for key, sec in sorted(funcs.items(), key=lambda kv: -kv[1])[:40]:
        print(f"{sec:8.1f}  {key}")


if __name__ == "__main__":
    _report(sys.argv[1])
