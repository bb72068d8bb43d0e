"""Emit a standalone, readable PyTorch source file for a network, in the style of torchvision's
``resnet.py``: one block class, a ``_make_layer`` loop over repeated blocks, literal stage settings.
The file needs torch (and safetensors for its ``load_model``); its ``state_dict`` names are the
canonical names.

Nothing from the spec reaches the code as code: the model name becomes an identifier only after
sanitising, and free text (the description, the spec itself) is written with ``repr`` or inside a
docstring whose quotes and backslashes are escaped. Tests compile and run every zoo model's source.
"""

from __future__ import annotations

import keyword
import re

from .. import __version__, ir


# Module-level names of the emitted file; a model class must not shadow them (a model named "F" would
# otherwise replace torch.nn.functional).
_RESERVED = frozenset({"os", "torch", "nn", "F", "BN_EPS", "BN_MOMENTUM", "norm", "load_model", "BasicBlock",
                       "Bottleneck", "SqueezeExcite", "DropPath", "ZeroPadShortcut", "ZeroPadMaxPool"})


def class_name(name: str) -> str:
    """A safe Python identifier from a model name (``resnet50_caffe`` -> ``Resnet50Caffe``), never a
    keyword, a builtin or a name the emitted module defines itself."""
    import builtins

    parts = re.split(r"[^0-9A-Za-z]+", name)
    ident = "".join(p[:1].upper() + p[1:] for p in parts if p) or "Model"
    if not ident[0].isalpha():
        ident = "Model" + ident
    if keyword.iskeyword(ident) or ident in _RESERVED or hasattr(builtins, ident):
        ident += "Net"
    return ident


def _doc_text(text: str) -> str:
    """Text safe inside a triple-quoted docstring: no backslash escapes, no closing quotes, printable."""
    # Every quote escaped: a docstring ending in '"' would otherwise close the literal early.
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if (c.isprintable() or c == "\n") else "?" for c in text)


class _Features:
    """The facts that decide which code paths the emitted source needs, read off the IR: the block
    template (``kind``, ``preact``, ``stride_index``), each block's ``shortcut_kind``, the ops."""

    def __init__(self, net: ir.Network):
        b0 = net.blocks[0]
        self.kind = b0.kind
        self.preact = b0.preact
        self.convs = b0.convs
        self.se = next((op for op in b0.main if isinstance(op, ir.SqueezeExcite)), None)
        self.drop_path = any(isinstance(op, ir.DropPath) for b in net.blocks for op in b.main)
        self.rates = [next((op.rate for op in b.main if isinstance(op, ir.DropPath)), 0.0) for b in net.blocks]
        self.stride_on_1x1 = self.kind == "bottleneck" and any(b.stride_index == 0 for b in net.blocks)
        kinds = {b.shortcut_kind for b in net.blocks}
        self.proj = next((b for b in net.blocks if b.shortcut_kind.endswith("projection")), None)
        self.option_a = self.proj is None and "option_a" in kinds
        self.avg_down = "avgpool_projection" in kinds
        self.sc_pool = next((op for b in net.blocks for op in b.shortcut if isinstance(op, ir.Pool)), None)
        self.sc_norm = self.proj is not None and any(isinstance(op, ir.BatchNorm) for op in self.proj.shortcut)
        self.sc_bias = self.proj is not None and [op for op in self.proj.shortcut if isinstance(op, ir.Conv)][0].bias
        self.always_project = kinds <= {"projection", "avgpool_projection"}
        # 'split' puts extra // 2 zero channels first; where every pad is consistent with that the two
        # policies agree (an extra of 1 gives before == 0 either way), so only a contradiction means 'end'.
        self.pad_split = all(op.before == (op.before + op.after) // 2
                             for b in net.blocks for op in b.shortcut if isinstance(op, ir.ChannelPad))
        self.stride_last = any(b.index > 0 and b.index == _last_index(net, b.stage) and b.downsamples
                               for b in net.blocks)
        self.strided_identity = self.proj is not None and "option_a" in kinds
        self.dilated = any(op.dilation > 1 for b in net.blocks for op in b.convs)


def _last_index(net, stage):
    return max(b.index for b in net.blocks if b.stage == stage)


def _stage_rows(net: ir.Network, f: _Features) -> list[dict]:
    """Literal per-stage settings for the emitted ``self.stages`` table."""
    rows = []
    for s in range(net.stages):
        blocks = [b for b in net.blocks if b.stage == s]
        convs0 = [op for op in blocks[0].main if isinstance(op, ir.Conv)]
        row = {"blocks": len(blocks), "width": convs0[0].out_channels, "out_ch": blocks[-1].out_shape[0],
               "stride": max(op.stride for b in blocks for op in b.main if isinstance(op, ir.Conv))}
        if f.dilated:
            dil = [op.dilation for op in blocks[-1].main if isinstance(op, ir.Conv) and op.kernel == 3]
            row["dilation"] = dil[0]
            row["first_dilation"] = [op.dilation for op in convs0 if op.kernel == 3][0]
        if f.se is not None:
            row["se_channels"] = next(op.reduced for op in blocks[0].main if isinstance(op, ir.SqueezeExcite))
        rows.append(row)
    return rows


def to_source(net: ir.Network, weights_file: str | None = None) -> str:
    f = _Features(net)
    cls = class_name(net.name)
    bn = next(op for op in net.all_ops() if isinstance(op, ir.BatchNorm))
    L: list[str] = []
    w = L.append
    spec_doc = "\n".join("    " + line if line else "" for line in _doc_text(net.spec_yaml).splitlines())
    w(f'"""{_doc_text(net.name)}: {_doc_text(net.description)}\n')
    w(f"Generated by resnet-spec {__version__}. Standalone: needs PyTorch, and safetensors for load_model().")
    w("Parameter names are the canonical resnet-spec names (torchvision's state_dict names where the")
    w("structure matches).")
    if weights_file:
        w(f"Weights: {_doc_text(weights_file)} beside this file; see load_model().")
    w("\nThe spec it was generated from:\n")
    w(spec_doc)
    w('"""\n')
    w("import os\n\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n")
    w(f"BN_EPS = {bn.eps!r}\nBN_MOMENTUM = {bn.momentum!r}\n\n")
    w("def norm(channels):\n    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)\n\n")
    if f.se is not None:
        w(_SE)
    if f.drop_path:
        w(_DROP_PATH)
    if f.option_a or f.strided_identity:
        w(_OPTION_A)
    stem_pool = next((op for op in net.stem if isinstance(op, ir.Pool)), None)
    if stem_pool is not None and stem_pool.pad_value == "zero" and stem_pool.padding > 0:
        w(_PADDED_MAXPOOL)
    w(_block_class(net, f))
    w(_net_class(net, f, cls, stem_pool))
    c, h, wd = net.input_shape
    w(_LOADER.format(cls=cls, weights=repr(weights_file or f"{net.name}.safetensors"), c=c, h=h, w=wd))
    return "\n".join(L) + "\n"


_SE = '''class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

'''

_DROP_PATH = '''class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample while training."""

    def __init__(self, rate):
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
        return x * mask / keep

'''

_OPTION_A = '''class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by the stride, zero-pad the extra channels."""

    def __init__(self, stride, before, after):
        super().__init__()
        self.stride, self.before, self.after = stride, before, after

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

'''

_PADDED_MAXPOOL = '''class ZeroPadMaxPool(nn.Module):
    """Zero padding then max-pool (Keras ZeroPadding2D + MaxPooling2D); ceil-mode rows never win."""

    def __init__(self, kernel, stride, padding, pads):
        super().__init__()
        self.kernel, self.stride, self.padding, self.pads = kernel, stride, padding, pads

    def forward(self, x):
        p = self.padding
        t, l, b, r = self.pads
        x = F.pad(x, (p, p, p, p))
        x = F.pad(x, (l - p, r - p, t - p, b - p), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)

'''


def _conv_expr(op: ir.Conv, in_expr, out_expr, stride_expr) -> str:
    args = [in_expr, out_expr, str(op.kernel)]
    if stride_expr != "1":
        args.append(f"stride={stride_expr}")
    if op.kernel == 3:
        args += ["padding=dilation", "dilation=dilation"]
    elif op.padding:
        args.append(f"padding={op.padding}")
    if op.groups > 1:
        args.append("groups=groups")
    args.append(f"bias={op.bias}")
    return f"nn.Conv2d({', '.join(args)})"


def _block_class(net: ir.Network, f: _Features) -> str:
    name = "Bottleneck" if f.kind == "bottleneck" else "BasicBlock"
    pre = "Pre-activation residual" if f.preact else "Residual"
    if f.kind == "bottleneck":
        doc = "1x1 -> 3x3 -> 1x1, stride on the " + ("first 1x1" if f.stride_on_1x1 else "3x3")
    else:
        doc = "two 3x3 convolutions"
    L = [f"class {name}(nn.Module):", f'    """{pre} block: {doc}."""', ""]
    L.append("    def __init__(self, in_ch, width, out_ch, stride=1, dilation=1, groups=1, downsample=None,"
             " se_channels=0, drop_path=0.0):")
    L.append("        super().__init__()")
    c = f.convs
    if f.kind == "bottleneck":
        s1, s2 = ("stride", "1") if f.stride_on_1x1 else ("1", "stride")
        specs = [(c[0], "in_ch", "width", s1), (c[1], "width", "width", s2), (c[2], "width", "out_ch", "1")]
    else:
        specs = [(c[0], "in_ch", "out_ch", "stride"), (c[1], "out_ch", "out_ch", "1")]
    n = len(specs)
    for i, (op, a, b, s) in enumerate(specs, start=1):
        if f.preact:  # BN before the conv; bn1 is the block's pre-activation
            L.append(f"        self.bn{i} = norm({a})")
            L.append(f"        self.conv{i} = {_conv_expr(op, a, b, s)}")
        else:
            L.append(f"        self.conv{i} = {_conv_expr(op, a, b, s)}")
            L.append(f"        self.bn{i} = norm({b})")
    if f.se is not None:
        L.append("        self.se = SqueezeExcite(out_ch, se_channels)")
    if f.drop_path:
        L.append("        self.drop_path = DropPath(drop_path)")
    L.append("        self.relu = nn.ReLU(inplace=True)")
    L.append("        self.downsample = downsample")
    L.append("")
    L.append("    def forward(self, x):")
    if f.preact:
        L.append("        out = self.relu(self.bn1(x))")
        L.append("        # A projection reads the pre-activated input; identity-like shortcuts read x.")
        L.append("        if self.downsample is None:")
        L.append("            shortcut = x")
        L.append("        else:")
        L.append("            shortcut = self.downsample(out if getattr(self.downsample, 'reads_preact', False) else x)")
        for i in range(1, n + 1):
            if i > 1:
                L.append(f"        out = self.relu(self.bn{i}(out))")
            L.append(f"        out = self.conv{i}(out)")
    else:
        L.append("        shortcut = x if self.downsample is None else self.downsample(x)")
        for i in range(1, n + 1):
            src = "x" if i == 1 else "out"
            L.append(f"        out = self.bn{i}(self.conv{i}({src}))")
            if i < n:
                L.append("        out = self.relu(out)")
    if f.se is not None:
        L.append("        out = self.se(out)")
    if f.drop_path:
        L.append("        out = self.drop_path(out)")
    L.append("        out = out + shortcut")
    L.append("        return out" if f.preact else "        return self.relu(out)")
    return "\n".join(L) + "\n\n"


def _net_class(net: ir.Network, f: _Features, cls: str, stem_pool) -> str:
    L = [f"class {cls}(nn.Module):", f'    """{_doc_text(net.description or net.name)}"""', ""]
    L.append(f"    def __init__(self, num_classes={net.num_classes}, in_channels={net.input_shape[0]}):")
    L.append("        super().__init__()")
    L += _stem_init(net, stem_pool)
    L += _body_init(net, f)
    L += _make_layer(f)
    L += _shortcut_method(net, f)
    L.append("")
    L += _forward(net, stem_pool)
    return "\n".join(L) + "\n"


def _stem_init(net: ir.Network, stem_pool) -> list:
    L = []
    stem_convs = [op for op in net.stem if isinstance(op, ir.Conv)]
    if len(stem_convs) == 1:
        op = stem_convs[0]
        L.append(f"        self.conv1 = nn.Conv2d(in_channels, {op.out_channels}, {op.kernel}, stride={op.stride}, "
                 f"padding={op.padding}, bias={op.bias})")
    else:
        L.append("        # Deep stem (ResNet-C/D): 3x3 convs with BN + ReLU between them.")
        L.append("        self.conv1 = nn.Sequential(")
        prev = "in_channels"
        for i, op in enumerate(stem_convs):
            L.append(f"            nn.Conv2d({prev}, {op.out_channels}, {op.kernel}, stride={op.stride}, "
                     f"padding={op.padding}, bias={op.bias}),")
            if i < len(stem_convs) - 1:
                L += [f"            norm({op.out_channels}),", "            nn.ReLU(inplace=True),"]
            prev = str(op.out_channels)
        L.append("        )")
    stem_norm = any(isinstance(op, ir.BatchNorm) and op.name == "bn1" for op in net.stem)
    if stem_norm:
        L.append(f"        self.bn1 = norm({stem_convs[-1].out_channels})")
    L.append("        self.relu = nn.ReLU(inplace=True)")
    if stem_pool is not None:
        p = stem_pool
        if p.pad_value == "zero" and p.padding > 0:
            L.append(f"        self.maxpool = ZeroPadMaxPool({p.kernel}, {p.stride}, {p.padding}, {p.pads})")
        else:
            ceil = ", ceil_mode=True" if p.ceil_mode else ""
            L.append(f"        self.maxpool = nn.MaxPool2d({p.kernel}, stride={p.stride}, padding={p.padding}{ceil})")
    return L


def _body_init(net: ir.Network, f: _Features) -> list:
    L = []
    if f.drop_path:
        L.append(f"        self.drop_path_rates = {[round(r, 12) for r in f.rates]!r}  # linear in depth")
    L.append("        self.stages = [")
    for row in _stage_rows(net, f):
        L.append("            dict(" + ", ".join(f"{k}={v}" for k, v in row.items()) + "),")
    L.append("        ]")
    L.append(f"        in_ch, first = {net.blocks[0].in_shape[0]}, 0")
    L.append("        for i, stage in enumerate(self.stages):")
    L.append("            self.add_module(f\"layer{i + 1}\", self._make_layer(in_ch, first, **stage))")
    L.append("            in_ch, first = stage[\"out_ch\"], first + stage[\"blocks\"]")
    head_norm = any(isinstance(op, ir.BatchNorm) for op in net.head)
    if head_norm:
        L.append("        self.bn_final = norm(in_ch)")
    L.append("        self.avgpool = nn.AdaptiveAvgPool2d(1)")
    drop = next((op.rate for op in net.head if isinstance(op, ir.Dropout)), 0.0)
    if drop:
        L.append(f"        self.dropout = nn.Dropout({drop!r})")
    L.append(f"        self.fc = nn.Linear(in_ch, num_classes, bias={net.head[-1].bias})")
    L.append("")
    return L


def _make_layer(f: _Features) -> list:
    block = "Bottleneck" if f.kind == "bottleneck" else "BasicBlock"
    L = []
    where = "blocks - 1" if f.stride_last else "0"
    L.append("    def _make_layer(self, in_ch, first, blocks, width, out_ch, stride, dilation=1, first_dilation=1,"
             " se_channels=0):")
    L.append("        layers = []")
    L.append("        for i in range(blocks):")
    L.append(f"            s = stride if i == {where} else 1  # the block of the stage that carries its stride")
    L.append("            d = first_dilation if i == 0 else dilation")
    rate = "self.drop_path_rates[first + i]" if f.drop_path else "0.0"
    L.append(f"            layers.append({block}(in_ch, width, out_ch, s, d, {_groups(f)}, "
             f"self._shortcut(in_ch, out_ch, s), se_channels, {rate}))")
    L.append("            in_ch = out_ch")
    L.append("        return nn.Sequential(*layers)")
    L.append("")
    return L


def _forward(net: ir.Network, stem_pool) -> list:
    stem_norm = any(isinstance(op, ir.BatchNorm) and op.name == "bn1" for op in net.stem)
    head_norm = any(isinstance(op, ir.BatchNorm) for op in net.head)
    drop = next((op.rate for op in net.head if isinstance(op, ir.Dropout)), 0.0)
    L = []
    L.append("    def forward(self, x):")
    L.append("        x = self.conv1(x)")
    if stem_norm:
        L.append("        x = self.relu(self.bn1(x))")
    if stem_pool is not None:
        L.append("        x = self.maxpool(x)")
    L.append("        for i in range(len(self.stages)):")
    L.append("            x = getattr(self, f\"layer{i + 1}\")(x)")
    if head_norm:
        L.append("        x = self.relu(self.bn_final(x))")
    L.append("        x = torch.flatten(self.avgpool(x), 1)")
    if drop:
        L.append("        x = self.dropout(x)")
    L.append("        return self.fc(x)")
    return L


def _shortcut_method(net: ir.Network, f: _Features) -> list:
    L = ["    def _shortcut(self, in_ch, out_ch, stride):"]
    if f.option_a:
        L.append('        """Option A: identity, or subsample + zero-padded channels where the shape changes."""')
        L.append("        if stride == 1 and in_ch == out_ch:")
        L.append("            return None")
        before = "(out_ch - in_ch) // 2" if f.pad_split else "0"
        L.append("        extra = out_ch - in_ch")
        L.append(f"        return ZeroPadShortcut(stride, {before.replace('out_ch - in_ch', 'extra')}, "
                 f"extra - {before.replace('out_ch - in_ch', 'extra')})")
        return L
    how = "average-pool then 1x1 conv (ResNet-D)" if f.avg_down else "strided 1x1 conv"
    if f.always_project:
        L.append(f'        """Option C: a projection ({how}) in every block."""')
    else:
        L.append(f'        """Identity, or a projection ({how}) where the shape changes."""')
        L.append("        if stride == 1 and in_ch == out_ch:")
        L.append("            return None")
    if f.strided_identity:
        L.append("        if in_ch == out_ch:  # only the stride changes: subsample (Keras ResNetV2)")
        L.append("            return ZeroPadShortcut(stride, 0, 0)")
    parts = []
    if f.avg_down:
        p = f.sc_pool
        ceil, cip = (p.ceil_mode, p.count_include_pad) if p is not None else (True, False)
        parts.append(f"nn.AvgPool2d(stride, stride, ceil_mode={ceil}, count_include_pad={cip}) "
                     "if stride > 1 else nn.Identity()")
    parts.append(f"nn.Conv2d(in_ch, out_ch, 1, stride={'1' if f.avg_down else 'stride'}, bias={f.sc_bias})")
    if f.sc_norm:
        parts.append("norm(out_ch)")
    L.append("        proj = nn.Sequential(")
    L += [f"            {p}," for p in parts]
    L.append("        )")
    if f.preact:
        L.append("        proj.reads_preact = True")
    L.append("        return proj")
    return L


def _groups(f: _Features) -> str:
    return str(f.convs[1].groups) if f.kind == "bottleneck" else "1"


_LOADER = """

def load_model(weights={weights}, device="cpu"):
    \"\"\"Build the model and load its safetensors weights (a relative path is looked up beside this file).\"\"\"
    from safetensors.torch import load_file

    if not os.path.isabs(weights):
        weights = os.path.join(os.path.dirname(os.path.abspath(__file__)), weights)
    model = {cls}()
    # The file holds no BN batch counters (torch bookkeeping); everything else must match exactly.
    missing, unexpected = model.load_state_dict(load_file(weights, device=device), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{{weights}}: missing {{missing[:3]}}, unexpected {{unexpected[:3]}}")
    return model.eval()


if __name__ == "__main__":
    model = load_model()
    with torch.no_grad():
        print(model(torch.randn(1, {c}, {h}, {w})).shape)
"""
