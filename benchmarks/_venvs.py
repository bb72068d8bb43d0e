"""Small cached virtual environments holding one runtime each, made from the package registry.

Used by tests/test_deploy.py (one older onnxruntime + onnxoptimizer) and benchmarks/deploy_matrix.py
(every runtime of the matrix). A venv is ``<cache>/<name>`` with ``python -m venv`` and ``pip install``
of exact requirements; it is ready once ``.ready`` (holding the requirements) exists, so an interrupted
build is redone, and a file lock keeps two processes from building the same venv. The cache is
``$RESNET_SPEC_VENV_CACHE`` or ``~/.cache/resnet-spec/venvs``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys


class VenvUnavailable(RuntimeError):
    """The venv could not be made (registry unreachable, no wheel for this platform)."""


def cache_dir() -> str:
    return os.environ.get("RESNET_SPEC_VENV_CACHE") or os.path.expanduser("~/.cache/resnet-spec/venvs")


def ensure(name: str, requirements: list, timeout: float = 1800) -> str:
    """The python executable of venv ``name`` holding ``requirements``; built on first use."""
    root = os.path.join(cache_dir(), name)
    ready = os.path.join(root, ".ready")
    want = "\n".join(requirements) + "\n"
    py = os.path.join(root, "bin", "python")
    os.makedirs(cache_dir(), exist_ok=True)
    with open(os.path.join(cache_dir(), f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(ready) and open(ready).read() == want:
            return py
        shutil.rmtree(root, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", root], check=True, capture_output=True, timeout=300)
            proc = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                                  capture_output=True, text=True, timeout=timeout)
        except (subprocess.SubprocessError, OSError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise VenvUnavailable(f"{name}: could not create the venv ({exc})") from None
        if proc.returncode:
            shutil.rmtree(root, ignore_errors=True)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
            raise VenvUnavailable(f"{name}: pip install {' '.join(requirements)} failed: "
                                  f"{lines[-1] if lines else proc.returncode}")
        with open(ready, "w") as fh:
            fh.write(want)
    return py


def run_probe(python: str, model: str, x_path: str, out_path: str, *, levels, optimizer=False,
              outputs=None, timeout: float = 600) -> None:
    """Run backends/onnx/probe.py (self-contained) under ``python``; raises on failure."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(os.path.dirname(here), "backends", "onnx", "probe.py")
    cmd = [python, script, model, x_path, out_path, "--levels", ",".join(levels)]
    if optimizer:
        cmd.append("--onnxoptimizer")
    if outputs:
        cmd += ["--outputs", ",".join(outputs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:2])}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
