"""PyTorch backend: IR + canonical weights -> ``torch.nn.Module``.

Modules are registered at their canonical names (``layer1.0.conv1``, ``layer2.0.downsample.0``), so
the model's ``state_dict`` keys are the canonical names and a torchvision or timm ``state_dict`` loads
unchanged where the structure matches. The forward pass interprets the IR's op lists; all ResNet
decisions were taken by the resolver.
"""

from __future__ import annotations

import os

import numpy as np

from ... import ir
from .. import DTYPES, common
from ..legs import parse_device
from . import res2net
from . import sknet
from .blur import blur_pool_args
from ...errors import BackendUnavailable
from .resnest import split_attention_args

NAME = "torch"

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None


def available() -> str | None:
    return None if torch is not None else "PyTorch is not installed (pip install 'resnet-spec[torch]')"


def _require():
    if torch is None:
        raise BackendUnavailable(available())


if torch is not None:
    from .resnest import SplitAttention  # ResNeSt's module (its own file; the .py copies it)

    class Subsample(nn.Module):
        """x[:, :, ::s, ::s]: a strided identity."""

        def __init__(self, stride: int):
            super().__init__()
            self.stride = stride

        def forward(self, x):
            return x[:, :, :: self.stride, :: self.stride]

        def extra_repr(self):
            return f"stride={self.stride}"

    class ChannelPad(nn.Module):
        """Zero channels before and after (option-A shortcut)."""

        def __init__(self, before: int, after: int):
            super().__init__()
            self.before, self.after = before, after

        def forward(self, x):
            return F.pad(x, (0, 0, 0, 0, self.before, self.after))

        def extra_repr(self):
            return f"before={self.before}, after={self.after}"

    class PaddedMaxPool(nn.Module):
        """Max-pool over explicitly padded input. ``pad_split`` is ``(counted, (top, left, bottom,
        right))``: the symmetric padding that counts, made of ``value`` (0 for Keras-style zero
        padding), then the rest (the ceil-mode extension) as -inf so that it never wins."""

        def __init__(self, kernel, stride, pad_split, value):
            super().__init__()
            self.kernel, self.stride, self.value = kernel, stride, value
            self.counted, self.rest = pad_split[0], tuple(pad_split[1])

        def forward(self, x):
            p, (t, l, b, r) = self.counted, self.rest
            if p:
                x = F.pad(x, (p, p, p, p), value=self.value)
            if any(self.rest):
                x = F.pad(x, (l, r, t, b), value=float("-inf"))
            return F.max_pool2d(x, self.kernel, self.stride)

        def extra_repr(self):
            return (f"kernel_size={self.kernel}, stride={self.stride}, padding={self.counted}, rest={self.rest}, "
                    f"value={self.value}")

    class SqueezeExcite(nn.Module):
        """x * sigmoid(fc2(relu(fc1(mean_hw(x))))) -- timm's SEModule, same parameter names."""

        def __init__(self, channels: int, reduced: int):
            super().__init__()
            self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
            self.act = nn.ReLU()  # a module, as timm's, so that parity --train sees every ReLU call
            self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)

        def forward(self, x):
            s = x.mean((2, 3), keepdim=True)
            return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))

    class ECA(nn.Module):
        """x * sigmoid(conv1d(mean_hw(x))) across the channels -- timm's EcaModule, same parameter name."""

        def __init__(self, kernel: int, padding: int):
            super().__init__()
            self.conv = nn.Conv1d(1, 1, kernel, padding=padding, bias=False)

        def forward(self, x):
            s = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
            return x * torch.sigmoid(s).view(x.shape[0], -1, 1, 1)

    class DropPath(nn.Module):
        """Stochastic depth: drop the whole residual branch per sample (training only)."""

        def __init__(self, rate: float):
            super().__init__()
            self.rate = rate

        def forward(self, x):
            if not self.training or self.rate == 0.0:
                return x
            keep = 1.0 - self.rate
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

        def extra_repr(self):
            return f"rate={self.rate:.4f}"

    class GlobalAvgPool(nn.Module):
        """Mean over height and width, flattened to (batch, channels)."""

        def forward(self, x):
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)



# -- the op table: IR op -> nn.Module (the exact-semantics choices are documented on resnet_spec.ir) --


def _conv(op: ir.Conv):
    return nn.Conv2d(op.in_channels, op.out_channels, op.kernel, op.stride, op.padding, op.dilation, op.groups,
                     op.bias)


def _pool(op: ir.Pool):
    if op.kind == "avg":
        return nn.AvgPool2d(op.kernel, op.stride, op.padding, op.ceil_mode, op.count_include_pad)
    counted, _ = op.pad_split
    if not counted:  # torch's max-pool never lets its (-inf) padding win
        return nn.MaxPool2d(op.kernel, op.stride, op.padding, ceil_mode=op.ceil_mode)
    return PaddedMaxPool(op.kernel, op.stride, op.pad_split, 0.0)


#: How each IR op becomes a module (see backends/common.py; the conformance test checks it is complete).
OPS = {
    ir.Conv: _conv,
    ir.BatchNorm: lambda op: nn.BatchNorm2d(op.channels, eps=op.eps, momentum=op.momentum),
    ir.ReLU: lambda op: nn.ReLU(inplace=True),
    ir.Pool: _pool,
    ir.Subsample: lambda op: Subsample(op.stride),
    ir.ChannelPad: lambda op: ChannelPad(op.before, op.after),
    ir.SqueezeExcite: lambda op: SqueezeExcite(op.channels, op.reduced),
    ir.ECA: lambda op: ECA(op.kernel, op.padding),
    ir.DropPath: lambda op: DropPath(op.rate),
    ir.GlobalAvgPool: lambda op: GlobalAvgPool(),
    ir.Dropout: lambda op: nn.Dropout(op.rate),
    ir.Linear: lambda op: nn.Linear(op.in_features, op.out_features, op.bias),
    ir.SplitAttention: lambda op: SplitAttention(*split_attention_args(op)),
    ir.Res2Net: res2net.modules,  # a dict: modules registered on the block itself (timm's convs.N, bns.N)
    ir.SelectiveKernel: lambda op: sknet.from_ir(op),
    ir.GroupNorm: lambda op: nn.GroupNorm(op.groups, op.channels, eps=op.eps),
    ir.StdConv: lambda op: _std_conv(op),
    ir.BlurPool: lambda op: _blur(op),
    ir.FRN: lambda op: _norm_act(op),
    ir.EvoNormS0: lambda op: _norm_act(op),
}


def _norm_act(op):
    from .frn import EvoNormS0, FilterResponseNorm2d

    if isinstance(op, ir.FRN):
        return FilterResponseNorm2d(op.channels, op.eps, op.act)
    return EvoNormS0(op.channels, op.groups, op.eps, op.act)


def _blur(op):
    from .blur import BlurPool2d

    return BlurPool2d(*blur_pool_args(op))


def _std_conv(op):
    from .norm import StdConv2d

    return StdConv2d(op.in_channels, op.out_channels, op.kernel, op.stride, op.padding, op.dilation, op.groups,
                     op.bias, eps=op.eps)


class _Builder(common.Lowering):
    """Builds: registers each op's module at its name under ``root`` (dotted names create plain
    containers: ``downsample.1`` may exist without a ``downsample.0``) and records the modules in walk
    order. Unnamed helpers are named as in torchvision (``relu``, ``avgpool``); a block's ReLU is one
    shared module, as in torchvision; shortcut helpers are ``shortcut_<what>``."""

    table, backend, shortcut_prefix = OPS, NAME, "shortcut_"

    def __init__(self, root):
        self.root, self.seq = root, []

    def op(self, op, x, name, tap):
        if not getattr(op, "name", None):
            existing = _find(self.root, name)
            if isinstance(op, ir.ReLU) and isinstance(existing, nn.ReLU):
                self.seq.append(existing)
                return x
            base, i = name, 1
            while existing is not None:
                name, i = f"{base}{i}", i + 1
                existing = _find(self.root, name)
        mod = self.lowering_of(op)(op)
        if isinstance(mod, dict):  # modules at attributes of ``name`` (a block), run together
            owner = self.root.get_submodule(name)
            for attr, child in mod.items():
                owner.add_module(attr, child)
            relu = getattr(owner, "relu", None)
            self.seq.append(res2net.Res2NetSplits(op, mod, relu if isinstance(relu, nn.ReLU) else nn.ReLU()))
            return x
        *path, leaf = name.split(".")
        parent = self.root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, mod)
        self.seq.append(mod)
        return x

    def add(self, y, s, block, tap):
        return y


def _find(root, name: str):
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


class _Runner(common.Lowering):
    """Runs: applies the modules the builder recorded, in the same walk order; records taps."""

    table, backend = OPS, NAME

    def __init__(self, modules, taps: dict | None):
        self.next, self.taps = iter(modules).__next__, taps

    def name(self, op, owner, branch):
        return ""

    def op(self, op, x, name, tap):
        return self.next()(x)

    def add(self, y, s, block, tap):
        return y + s

    def tap(self, x, name):
        if self.taps is not None:
            self.taps[name] = x if name == common.HEAD else x.clone()
        return x


if torch is not None:

    class Block(nn.Module):
        """A container for one block's modules (``layer2.0``); the network's walk runs them."""

        def __init__(self, block: ir.Block):
            super().__init__()
            self.kind = block.kind

    class ResNet(nn.Module):
        """A ResNet built from a resnet-spec IR. ``forward`` gives logits; ``forward_taps`` also gives
        the output of the stem and of every block (the parity checker's comparison points).

        Modules sit at their canonical names (``layer1.0.conv1``); ``forward`` is the shared walk of
        backends/common.py over the IR, applying them."""

        def __init__(self, net: ir.Network, layout: str = "nchw"):
            super().__init__()
            self.spec_name = net.name
            self._net = net
            # an NHWC input is permuted into the NCHW body (the shared entry transpose); None: NCHW input
            self._entry = common.entry_permutation(layout, "nchw")
            stages: dict[int, list] = {}
            for b in net.blocks:
                stages.setdefault(b.stage, []).append(Block(b))
            builder = _Builder(self)
            common.lower_ops(builder, net.stem, None, "", common.STEM)
            for s, blocks in stages.items():
                self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
            for b in net.blocks:
                common.walk_block(builder, b, None)
            common.lower_ops(builder, net.head, None, "", common.HEAD)
            self._seq = builder.seq

        def _run(self, x, taps=None, head=True):
            if self._entry is not None:
                x = x.permute(*self._entry)
            return common.walk(_Runner(self._seq, taps), self._net, x, head=head)

        def forward_features(self, x):
            return self._run(x, head=False)

        def forward(self, x):
            return self._run(x)

        def forward_taps(self, x) -> dict:
            taps = {}
            self._run(x, taps)
            return taps


def build(net: ir.Network, weights=None, *, strict: bool = True, layout: str = "nchw"):
    """Build the model and load ``weights`` (a canonical weight set; None keeps torch's random init).
    ``layout``: the input's, 'nchw' or 'nhwc' (permuted to NCHW first); the body is NCHW either way."""
    _require()
    model = ResNet(net, common.check_layout(layout, "torch"))
    if weights is not None:
        set_torch_weights(model, weights, strict=strict)
    return model.eval()


def set_torch_weights(model, weights, strict: bool = True):
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        from ...errors import WeightsError

        raise WeightsError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def state_to_weights(state_dict) -> dict:
    """A torch ``state_dict`` (ours, torchvision's or timm's) -> canonical numpy weight set."""
    return {k: v.detach().cpu().float().numpy() for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked")}




def device_and_dtype(device: str, dtype: str, allow_tf32: bool = False):
    """Resolve a requested device/dtype, refusing (never silently falling back) what is not there."""
    _require()
    if dtype not in DTYPES:
        raise BackendUnavailable(f"torch: unsupported dtype {dtype!r}")
    index = parse_device(device, "torch")
    if index is not None:
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch: CUDA was requested but torch.cuda.is_available() is False "
                                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        dev = torch.device(device)
        desc = f"{dev} ({torch.cuda.get_device_name(dev)}), TF32 {'on' if allow_tf32 else 'off'}"
    else:
        dev, desc = torch.device("cpu"), "cpu"
    return dev, getattr(torch, dtype), desc


def infer(net: ir.Network, weights, x: np.ndarray, *, device: str = "cpu", dtype: str = "float32",
          taps: bool = False, mutate=None, allow_tf32: bool = False):
    """Run in eval mode on NCHW ``x``; returns ({'head': logits, [taps...]}, device description)."""
    dev, dt, desc = device_and_dtype(device, dtype, allow_tf32)
    model = build(net, weights)
    if mutate is not None:
        model = mutate(model) or model
    model = model.to(device=dev, dtype=dt).eval()
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=dev, dtype=dt)
        out = model.forward_taps(xt) if taps else {"head": model(xt)}
    return {k: v.float().cpu().numpy() for k, v in out.items()}, f"{desc}, torch {torch.__version__}"


def convert(net: ir.Network, weights, out_dir: str, *, force: bool = False, batch: int = 2,
            layout: str = "nchw") -> list:
    """Write ``<name>.pt2`` (torch.export), ``<name>.py`` (standalone source) and its safetensors; both
    models take their input in ``layout`` ('nchw' or 'nhwc'), which the ``.pt2`` records as an extra file
    (``resnet_spec.layout``) and the ``.py`` as ``INPUT_LAYOUT``."""
    _require()
    from ...fileio import atomic_path, check_writable, write_text
    from ...weights.files import save_weights
    from .source import to_source

    from .. import output_paths

    paths = dict(zip(("pt2", "py", "st"), output_paths("torch", net.name, out_dir)))
    for p in paths.values():
        check_writable(p, force)
    os.makedirs(out_dir, exist_ok=True)
    model = build(net, weights, layout=layout)
    example = torch.randn(batch, *common.input_dims(net.input_shape, layout))
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch_dim},))
    # no example inputs in the file: torch.save would pickle them into data/sample_inputs, and the
    # archive then holds no pickle at all (verify never reads that entry; resnet_spec.trust_pt2)
    program.example_inputs = None
    source = to_source(net, weights_file=os.path.basename(paths["st"]), layout=layout)
    with atomic_path(paths["pt2"], force) as tmp:
        try:  # torch.export.save insists on the suffix: save beside the temporary name, then move
            # the spec travels inside the program, for `resnet-spec inspect` (resnet_spec.inspect_files)
            torch.export.save(program, tmp + ".pt2",
                              extra_files={"resnet_spec.name": net.name, "resnet_spec.spec": net.spec_yaml,
                                           common.META_LAYOUT: layout})
            os.replace(tmp + ".pt2", tmp)
        finally:
            if os.path.exists(tmp + ".pt2"):
                os.unlink(tmp + ".pt2")
    write_text(paths["py"], source, force)
    save_weights(weights, paths["st"], metadata={"format": "resnet-spec", "spec": net.name}, force=force)
    return [paths["pt2"], paths["py"], paths["st"]]
