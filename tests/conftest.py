"""Shared test fixtures.

Framework isolation: this process may import torch, torchvision, timm and onnxruntime, but never
TensorFlow. Everything TensorFlow/Keras runs through ``resnet_spec.isolate.run_isolated`` in a fresh
process (see tests/tf_checks.py), so no test depends on import order.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One compute thread per framework per process. `make test` runs two test processes on two cores, each
# with its own framework workers (TensorFlow, JAX, ONNX Runtime): thread pools sized to the machine
# oversubscribe it, and OpenMP's and Eigen's idle threads spin. Set before torch, TensorFlow or JAX is
# imported here or in any worker (they inherit the environment); an outer setting wins. The numbers a
# test checks do not depend on it: every comparison has a float32 margin (README, "Parity").
for _var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

# Property tests explore new examples on every local run; in CI (CI=true) they replay a fixed
# sequence, so that a submission's result does not depend on which examples a run happened to draw.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    _hsettings.load_profile("ci")

sys.path.insert(0, os.path.dirname(__file__))
from cpu_times import pytest_runtest_protocol  # noqa: E402,F401 -- RESNET_SPEC_CPU_TIMES=FILE: CPU per test
# benchmarks/ (family_coverage, ...) is on the path from the start, so that the tests that import from it
# do not change sys.path midway, which would start fresh worker processes (isolate.keep_workers)
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


@pytest.fixture(scope="session", autouse=True)
def _workers_kept_between_tests():
    """One set of worker processes per test process (``isolate.keep_workers``): each ``parity``,
    ``parity --train`` and ``verify`` reuses the previous one's TensorFlow, JAX, Keras and ONNX Runtime
    workers instead of importing them again (a few seconds of each test's time before)."""
    from resnet_spec.isolate import keep_workers

    # each of the two test processes keeps at most 6 GiB of idle workers (a run that kept every TensorFlow
    # and JAX process of one or two gigabytes could exhaust the 24 GiB machine: the whole suite peaked at
    # 12.2 GB used with these limits) and up to 16 of them, so that the small ONNX Runtime, OpenVINO and LiteRT
    # processes are not stopped for their number (the suite uses about 14 labels)
    with keep_workers(ignore_env=("PYTEST_CURRENT_TEST",), max_bytes=6 << 30, max_processes=16):
        yield


@pytest.fixture(autouse=True)
def _no_tensorflow_in_main_process():
    yield
    assert "tensorflow" not in sys.modules, "a test imported TensorFlow in the pytest process; use run_isolated"


def randomize_bn(state_dict, seed: int = 0):
    """Give a torch state_dict non-trivial BN statistics and affine parameters, in place."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for k, v in state_dict.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) * 1.5 + 0.5)
        elif k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith(("bn1.bias", "bn2.bias", "bn3.bias")) or ".bias" in k and "bn" in k:
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
    return state_dict


from resnet_spec.parity import rel_error as rel_err  # noqa: E402  (the one metric; tests import it from here)


def small(name: str, size: int | None = None):
    """Zoo entry ``name`` resolved at a small input size (32 px for CIFAR nets, 64 px otherwise)."""
    import resnet_spec

    net = resnet_spec.load(name)
    size = size or (32 if net.input_shape[1] <= 32 else 64)
    return resnet_spec.load(f"extends: {name}\ninput: {{size: {size}}}\n")


def tiny(name: str, blocks: int = 2, size: int | None = None):
    """:func:`tiny_text` loaded."""
    import resnet_spec

    return resnet_spec.load(tiny_text(name, blocks, size))


def tiny_zoo() -> list:
    """The zoo's entries at :func:`tiny_text` depth, one per distinct network: cut to two blocks per
    stage, resnet50/101/152 are one network, as are the six CIFAR resnet20..1202, keras_resnet50/101/152,
    regnetx_032 and torchvision's regnet_x_3_2gf, ... (18 networks of 34 entries when written). A sweep
    of ops and wiring runs each once, named by its first entry in zoo order; depth is the business of the
    few full-depth cases each sweep keeps."""
    return list(_tiny_groups())


def _tiny_groups() -> dict:
    import dataclasses

    import resnet_spec
    from resnet_spec.spec import zoo_names

    if "groups" not in _TINY_CACHE:
        seen: dict = {}
        for name in zoo_names():
            net = resnet_spec.load(tiny_text(name))
            seen.setdefault(repr(dataclasses.replace(net, name="", description="", spec_yaml="")), []).append(name)
        _TINY_CACHE["groups"] = {names[0]: names for names in seen.values()}
    return _TINY_CACHE["groups"]


_TINY_CACHE: dict = {}


def tiny_text(name: str, blocks: int = 2, size: int | None = None) -> str:
    """Zoo entry ``name`` with every stage cut to at most ``blocks`` blocks, at the small size of
    :func:`small`: the same stem, block, shortcut and head definitions, widths and strides (so every
    op and every wiring the entry uses), a fraction of the layers. For tests about a family's ops and
    wiring, not about depth."""
    import yaml

    import resnet_spec

    net = resnet_spec.load(name)
    spec = yaml.safe_load(net.spec_yaml)
    per_stage: dict = {}
    for block in net.blocks:
        stage = block.name.split(".")[0]
        per_stage[stage] = per_stage.get(stage, 0) + 1
    spec.pop("depth", None)
    if "stages" not in spec and spec.get("regnet") is not None:  # RegNet: the stages its parameters give
        from resnet_spec.regnet import stages_of

        spec["stages"] = stages_of(spec)
        del spec["regnet"]
    for stage, n in zip(spec["stages"], per_stage.values()):
        stage["blocks"] = min(n, blocks)
        if "widths" in stage:  # per-block widths (a pruned model): the first blocks' ones
            stage["widths"] = stage["widths"][:stage["blocks"]]
    spec.setdefault("input", {})["size"] = size or (32 if net.input_shape[1] <= 32 else 64)
    return yaml.safe_dump(spec, sort_keys=False)


#: a pre-activation bottleneck net of three blocks: the base the norm tests (GroupNorm, FRN, EvoNorm-S0)
#: add their ``norm:``/``conv:`` lines to
TINY_PREACT = """\
name: tiny
input: {size: 32}
stem: {channels: 8, kernel: 3, stride: 2}
block: {type: bottleneck, preact: true}
stages:
- {blocks: 1, channels: 4}
- {blocks: 2, channels: 8, stride: 2}
head: {classes: 5}
"""


# Two small nets that between them contain every IR op and every exact-semantics corner: deep stem,
# ceil-mode max-pool (-inf extension), grouped convs with bias, SE, DropPath, ResNet-D average-pool
# shortcuts over odd sizes (partial windows), head dropout, BN eps 1e-6 (tiny_a); zero-padded max-pool
# on negative inputs, pre-activation, option-A subsample + channel padding, dilation (tiny_b).
TINY_A = """\
name: tiny_a
input: {channels: 3, size: 39}
conv_bias: true
norm: {eps: 1.0e-6, momentum: 0.03}
stem: {type: deep, channels: [8, 8, 16], kernel: 3, stride: 2,
       pool: {kernel: 3, stride: 2, padding: 1, ceil_mode: true}}
block: {type: bottleneck, groups: 4, width_per_group: 8, se: {reduction: 4, divisor: 4}, drop_path_rate: 0.1}
shortcut: {type: B, projection: avgpool_conv}
stages: [{blocks: 2, channels: 16}, {blocks: 2, channels: 32, stride: 2}, {blocks: 1, channels: 32, stride: 2}]
head: {classes: 7, dropout: 0.2}
"""
TINY_B = """\
name: tiny_b
input: {channels: 3, size: 33}
stem: {channels: 8, kernel: 5, stride: 2, pool: {kernel: 3, stride: 2, padding: 1, pad_value: zero}}
block: {type: basic, preact: true}
shortcut: {type: A}
stages: [{blocks: 2, channels: 8}, {blocks: 2, channels: 16, stride: 2}, {blocks: 2, channels: 32, stride: 2, dilate: true}]
head: {classes: 5}
"""

def one_line_error(code, output, *needles) -> str:
    """The one ``error:`` line of a CLI run that must fail with exit 1 and no traceback, containing each
    of ``needles``."""
    assert code == 1, output
    assert "Traceback" not in output
    err = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, output
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def cli(*args):
    """``resnet-spec ARGS`` in this process (click's runner), every argument as a string; never a traceback."""
    from click.testing import CliRunner

    from resnet_spec.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def last_line_error(res, *words) -> None:
    """``res`` (of :func:`cli`) failed with exit 1 and its last line is its only ``error:`` line, containing
    each of ``words``."""
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and res.output.strip().splitlines()[-1] == lines[0], res.output
    assert all(w in lines[0] for w in words), lines[0]


TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"]
TIMM = ["resnet50d", "seresnet50"]
KERAS = {"keras_resnet50": "ResNet50", "keras_resnet101": "ResNet101", "keras_resnet152": "ResNet152",
         "keras_resnet50v2": "ResNet50V2", "keras_resnet101v2": "ResNet101V2", "keras_resnet152v2": "ResNet152V2"}


class KerasApps:
    """The six keras.applications ResNets (:data:`KERAS`), random weights and BN statistics (seed: the
    model's place in :data:`KERAS`), 64 px, each saved as .keras and .weights.h5 on first use and kept
    for the test process: ``apps[name]`` is :func:`keras_sources.save_both`'s dict (paths, ``ref`` logits
    on :attr:`x`, counts). Several test modules import these files, check them or take their weights;
    building and saving a ResNet152 took each of them seconds."""

    SIZE = 64

    def __init__(self, folder):
        self.folder, self._made = folder, {}
        self.x = np.random.default_rng(0).standard_normal((1, 3, self.SIZE, self.SIZE)).astype(np.float32)

    def __getitem__(self, name: str) -> dict:
        if name not in self._made:
            from resnet_spec.isolate import run_isolated

            import keras_sources

            seed = list(KERAS.values()).index(name)
            self._made[name] = run_isolated(keras_sources.save_both, name, self.SIZE, str(self.folder), self.x, seed)
        return self._made[name]


@pytest.fixture(scope="session")
def keras_apps(tmp_path_factory) -> KerasApps:
    """:class:`KerasApps`; its tests form one xdist group, so each file is written once per run."""
    return KerasApps(tmp_path_factory.mktemp("keras_apps"))



# -- one worker per expensive shared fixture ---------------------------------------------------------
# A module-scoped fixture (a TensorFlow worker over the zoo, a set of converted files, a pool of
# worker processes) is built once per xdist worker that runs a test needing it. Under ``--dist
# loadgroup`` (pyproject's addopts) the tests of a module that share such a fixture form one group and
# run on one worker, so the fixture is built once per run.

#: session fixtures whose tests, in whatever module, form one group named after the fixture
SHARED_GROUPS = ("keras_apps",)


def _shared_fixture_group(item) -> str | None:
    info = getattr(item, "_fixtureinfo", None)
    names = info.names_closure if info else ()
    for name in SHARED_GROUPS:
        if name in names:
            return name
    for name in names:
        for fixture in info.name2fixturedefs.get(name, ()):
            if fixture.scope in ("module", "session") and getattr(fixture, "baseid", "").startswith("tests/"):
                return item.module.__name__
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """xdist's scheduler reads a test's group from an ``@group`` suffix of its id. pytest-xdist 3.8
    adds it by assigning ``item._nodeid``, which pytest 9.2 no longer reads (the id is ``item._id``),
    so the suffix is set here (in each xdist worker, where ``config.option.loadgroup`` is set)."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodes import coerce_node_id
    except ImportError:  # pytest before 9.2: xdist's own assignment works
        coerce_node_id = None
    for item in items:
        group = _shared_fixture_group(item)
        if group and "@" not in item.nodeid:
            if coerce_node_id is None:
                item._nodeid = f"{item.nodeid}@{group}"
            else:
                item._id = coerce_node_id(f"{item.nodeid}@{group}")
