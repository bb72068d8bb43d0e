"""``parity --train``'s batch (:mod:`resnet_spec.train_batch`): 2 by default, 8 where a training-mode BatchNorm
normalizes a 1x1 map (SKNet's and ResNeSt's attention BN, any BN of a net whose maps shrink to 1x1), where 2
values per channel amplify float32 rounding past the 1e-4 tolerance (README, Parity); ``--batch`` is honoured,
with a warning when smaller. The choice is checked from the IR (no worker); one tiny SK step (slow) at the new
default."""

from __future__ import annotations

import pytest

from conftest import cli, tiny, tiny_text
from resnet_spec import parity, train_parity
from resnet_spec.errors import ResNetSpecError
from resnet_spec.train_batch import pointwise_bns, train_batch


def test_default_batch_follows_bns_over_a_1x1_map():
    sk = tiny("skresnet34", blocks=1, size=32)
    assert pointwise_bns(sk)[:2] == ("layer1.0.conv1.attn.bn", "layer2.0.conv1.attn.bn")
    batch, (note,) = train_batch(sk, None)
    assert batch == 8 and note.startswith("note: batch 8, not 2: ") and "layer1.0.conv1.attn.bn" in note
    batch, (warning,) = train_batch(sk, 2)
    assert batch == 2 and warning.startswith("warning: batch 2: ") and "--batch 8" in warning
    assert train_batch(sk, 8) == (8, ())
    assert pointwise_bns(tiny("resnest50d", blocks=1, size=64))[0] == "layer1.0.conv2.bn1"  # split attention's
    # a plain net: 8 where its last stage's maps are 1x1 (32 px), else 2 and no note
    bns = ("layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1")
    assert pointwise_bns(tiny("resnet18", blocks=1, size=32)) == bns
    assert train_batch(tiny("resnet18", blocks=1, size=64), None) == (2, ())
    assert train_batch(tiny("resnet18", blocks=1, size=64), 3) == (3, ())


def test_cli_passes_the_batch_only_when_given(monkeypatch):
    """Without --batch, --train lets run_train choose (None); inference parity keeps 2; --batch is passed as is."""
    def seen(net, weights, options, **_):
        raise ResNetSpecError(f"batch={options.batch}")

    monkeypatch.setattr(parity, "run", seen)
    monkeypatch.setattr(train_parity, "run_train", seen)
    for args, want in (([], "batch=2"), (["--train"], "batch=None"), (["--train", "--batch", "2"], "batch=2")):
        res = cli("parity", "resnet20", *args)
        assert res.exit_code == 1 and res.output.strip().endswith(f"error: {want}"), res.output


@pytest.mark.slow  # one training step in two legs' workers and PyTorch's float64 reference (~9 s)
def test_sk_train_parity_at_the_default_batch(tmp_path):
    spec = tmp_path / "sk.yaml"
    spec.write_text(tiny_text("skresnet34", 1, 32))
    res = cli("parity", spec, "--train", "--backends", "torch,keras-torch")
    assert res.exit_code == 0 and "--train: float32, batch 8," in res.output, res.output
    assert "note: batch 8, not 2: 8 training-mode BatchNorm(s) normalize a 1x1 map" in res.output
