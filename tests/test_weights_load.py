"""resnet_spec.weights.load: one loader for every source (None, a mapping, a weight file), one list of
torch checkpoint suffixes. Checkpoint layouts, import sources and --new-head through the CLI are in
tests/test_workflows.py and tests/test_verify_weights.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import resnet_spec
from resnet_spec.errors import WeightsError
from resnet_spec.weights import LoadOptions, init_weights, load, save_weights

R20_100 = "extends: resnet20\nname: r20_100\nhead: {classes: 100}\n"


@pytest.fixture(scope="module")
def r20():
    return resnet_spec.load("resnet20")


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_none_is_fresh_seeded_weights(r20):
    w, notes = load(r20, None, LoadOptions(seed=3, random_bn=True))
    assert notes == [] and _same(w, init_weights(r20, seed=3, random_bn=True))
    assert _same(load(r20, None)[0], init_weights(r20))
    with pytest.raises(WeightsError, match="need weights to load"):
        load(r20, None, LoadOptions(new_head=True))


def test_a_mapping_is_checked(r20):
    given = {k: v.astype(np.float64) for k, v in init_weights(r20).items()}
    w, notes = load(r20, given)
    assert notes == [] and all(v.dtype == np.float32 for v in w.values())
    with pytest.raises(WeightsError, match="apply to torch checkpoints"):
        load(r20, given, LoadOptions(ema=True))
    with pytest.raises(WeightsError, match=r"got list \(save a Keras model as \.keras"):
        load(r20, [1, 2])


def test_a_mapping_with_a_new_head(r20):
    net = resnet_spec.load(R20_100)
    with pytest.raises(WeightsError, match=r"'fc\.weight' has shape \(10, 64\), the spec expects \(100, 64\)"):
        load(net, init_weights(r20))
    w, notes = load(net, init_weights(r20), LoadOptions(new_head=True, seed=5))
    assert w["fc.weight"].shape == (100, 64) and notes == [
        "new classifier fc.weight (100, 64) (the checkpoint's was (10, 64)), initialised U(+-1/sqrt(64)) with seed 5"]


def test_a_file_and_its_suffix(r20, tmp_path):
    w = init_weights(r20, seed=1)
    for name in ("w.safetensors", "w.pth", "w.pth.tar"):  # a safetensors file under a torch name: read as what it is
        save_weights(w, str(tmp_path / name))
        got, notes = load(r20, tmp_path / name)
        assert notes == [] and _same(got, w), name
    with pytest.raises(WeightsError, match="--weights-key applies to torch checkpoints"):
        load(r20, str(tmp_path / "w.safetensors"), LoadOptions(key="model"))


def test_one_list_of_torch_suffixes():
    from resnet_spec import importers
    from resnet_spec.weights import files

    assert importers.STATE_DICT_SUFFIXES == files.TORCH_SUFFIXES + (".safetensors",)
    assert ".tar" in files.TORCH_SUFFIXES


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoadOptions().seed = 1
