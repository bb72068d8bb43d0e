"""A command whose optional library is missing says which extra to install, in one line, exit 1.

The library is hidden from a real ``python -m resnet_spec`` process: a ``sitecustomize`` on
``PYTHONPATH`` puts a ``sys.meta_path`` finder in place of the path finder that refuses the names in
``RESNET_SPEC_TEST_HIDE`` (``import`` raises ModuleNotFoundError and ``importlib.util.find_spec``
returns None, as when the library is not installed). ``PYTHONPATH`` reaches the worker processes the
CLI spawns, so the library is missing there too.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from resnet_spec.cli import main
from resnet_spec.extras import EXTRAS, install_hint, missing_module_message

SITECUSTOMIZE = '''
import importlib.machinery
import os
import sys

HIDDEN = set(filter(None, os.environ.get("RESNET_SPEC_TEST_HIDE", "").split(",")))


class _Refuse:
    """The path finder, except for the hidden top-level names."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()


if HIDDEN:
    sys.meta_path[:] = [_Refuse if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


@pytest.fixture(scope="module")
def hide_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hide")
    (d / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return d


def _cli(hide_dir, cwd, hidden: str, *args):
    env = dict(os.environ, RESNET_SPEC_TEST_HIDE=hidden,
               PYTHONPATH=os.pathsep.join([str(hide_dir)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-m", "resnet_spec", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_error_line(res, expected: str):
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.stderr.strip().splitlines() == [expected], res.stderr


def test_the_hiding_works(hide_dir, tmp_path):
    env = dict(os.environ, RESNET_SPEC_TEST_HIDE="matplotlib,torch", PYTHONPATH=str(hide_dir))
    code = ("import importlib.util\n"
            "assert importlib.util.find_spec('matplotlib') is None and importlib.util.find_spec('torch') is None\n"
            "try:\n    import matplotlib\nexcept ModuleNotFoundError:\n    print('hidden')\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "hidden", res.stderr


def test_diagram_without_matplotlib(hide_dir, tmp_path):
    res = _cli(hide_dir, tmp_path, "matplotlib", "diagram", "resnet20", "-o", "a.svg")
    _one_error_line(res, "error: diagram needs matplotlib (pip install 'resnet-spec[plot]')")
    assert not (tmp_path / "a.svg").exists()


def test_parity_plot_without_matplotlib_refuses_before_running(hide_dir, tmp_path):
    res = _cli(hide_dir, tmp_path, "matplotlib", "parity", "resnet20", "--backends", "torch,onnx", "--plot", "p.svg")
    _one_error_line(res, "error: parity --plot needs matplotlib (pip install 'resnet-spec[plot]')")  # no leg ran


def test_verify_without_torch(hide_dir, tmp_path):
    res = _cli(hide_dir, tmp_path, "torch", "verify", "resnet20", "model.onnx")
    _one_error_line(res, "error: verify (its float64 reference) needs torch (pip install 'resnet-spec[torch]')")


def test_import_without_torch(hide_dir, tmp_path):
    res = _cli(hide_dir, tmp_path, "torch", "import", "model.onnx")
    _one_error_line(res, "error: import (it proves the result in PyTorch) needs torch "
                         "(pip install 'resnet-spec[torch]')")


def _pth(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # torch.save's container
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


#: (file, its bytes or a writer, hidden libraries, command, the one error line)
FILE_CASES = {
    "import .keras": ("m.keras", b"not read", "keras,tensorflow", "import",
                      "error: reading m.keras needs keras (pip install 'resnet-spec[tensorflow]')"),
    "import .onnx": ("m.onnx", b"not read", "onnx", "import",
                     "error: m.onnx: reading ONNX files needs the onnx package (pip install 'resnet-spec[onnx]')"),
    "inspect .pth": ("w.pth", _pth, "torch", "inspect",
                     "error: w.pth: reading .pth/.pt files needs PyTorch (pip install 'resnet-spec[torch]'), "
                     "or convert the file to safetensors"),
    "inspect .onnx": ("m.onnx", b"not read", "onnx,onnxruntime", "inspect",
                      "error: onnx is not installed (pip install 'resnet-spec[onnx]')"),
    "inspect .tflite": ("m.tflite", b"\x1c\x00\x00\x00TFL3" + bytes(64), "ai_edge_litert,tensorflow", "inspect",
                        "error: m.tflite: reading .tflite files needs the LiteRT package "
                        "(pip install 'resnet-spec[tflite]') or TensorFlow"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_reading_a_file_without_its_library(hide_dir, tmp_path, case):
    name, content, hidden, command, expected = FILE_CASES[case]
    if callable(content):
        content(tmp_path / name)
    else:
        (tmp_path / name).write_bytes(content)  # for a .tflite: the identifier only
    _one_error_line(_cli(hide_dir, tmp_path, hidden, command, name), expected)


@pytest.mark.parametrize("target, hidden, expected", [
    ("torch", "torch", "error: torch: PyTorch is not installed (pip install 'resnet-spec[torch]')"),
    ("onnx", "onnx", "error: onnx: onnx is not installed (pip install 'resnet-spec[onnx]')"),
    ("tensorflow", "tensorflow",
     "error: tensorflow: tensorflow is not installed (pip install 'resnet-spec[tensorflow]')"),
])
def test_convert_without_the_framework(hide_dir, tmp_path, target, hidden, expected):
    res = _cli(hide_dir, tmp_path, hidden, "convert", "resnet20", "--to", target, "-o", "out")
    _one_error_line(res, expected)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_missing_library_found_only_on_import_is_one_line(monkeypatch):
    """The CLI's safety net: a ModuleNotFoundError that no check caught still becomes one line."""
    import resnet_spec.summary as S

    def boom(net):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(S, "summarize", boom)
    res = CliRunner().invoke(main, ["summary", "resnet20"])
    assert res.exit_code == 1
    assert res.output.strip() == "error: summary needs onnxruntime (pip install 'resnet-spec[onnx]')"


def test_a_missing_module_of_the_package_itself_is_a_bug_not_a_missing_extra():
    assert missing_module_message(ModuleNotFoundError("x", name="resnet_spec.nope"), "summary") is None
    assert missing_module_message(ModuleNotFoundError("x", name="timm.models"), "import") == \
        "import needs timm (pip install timm)"


def test_every_extra_exists_in_pyproject():
    text = (pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    for module, extra in EXTRAS.items():
        assert f"\n{extra} = [" in text, (module, extra)
        assert install_hint(module) == f"pip install 'resnet-spec[{extra}]'"
