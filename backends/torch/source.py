"""Emit a standalone, readable PyTorch source file for a network (``<name>.py``).

The emitter is a lowering like the other backends: :func:`common.walk` visits every IR op and
:data:`OPS` turns each one into the constructor of the module that computes it -- the module, with the
settings, that ``backends.torch.backend`` builds for it. Nothing is inferred: every block's modules, and the
order its ``forward`` applies them in, are read off that block's IR (``pre``, ``main``, ``shortcut``,
``post``, ``shortcut_from``), so blocks may differ in any way within a stage. Blocks whose ``forward``
is the same share one class (``Bottleneck``, ``BottleneckProjection``, ...); consecutive blocks built
from the same modules are written once, as a list comprehension. Helper modules (``SqueezeExcite``,
``PaddedMaxPool``, ...) are copied from ``backends.torch.backend``'s source, so both compute the same numbers.

Names: modules sit at their canonical names (``layer2.0.conv1``); ops named ``<attr>.<k>``
(``downsample.1``, a deep stem's ``conv1.3``) become item ``k`` of an ``nn.Sequential`` at ``<attr>``,
which also takes the parameter-free ops between two of its items (the deep stem's ReLUs) and an
``nn.Identity()`` in any slot nothing fills. Parameter-free helpers are named as in ``backends.torch.backend``
(``relu``, one per block, shared; ``shortcut_subsample``).

The file needs torch (and safetensors for its ``load_model``); its ``state_dict`` names are the
canonical names. Nothing from the spec reaches the code as code: the model name becomes an identifier
only after sanitising, and free text (the description, the spec itself) is written inside a docstring
whose quotes and backslashes are escaped. tests/test_torch_backend.py runs every zoo entry's source in a
fresh process against the torch backend.
"""

from __future__ import annotations

import ast
import keyword
import os
import re
import textwrap
from dataclasses import dataclass

from ... import __version__, ir
from .. import common

#: The helper modules an emitted file may need, copied from backends/torch/backend.py's source.
HELPER_CLASSES = ("Subsample", "ChannelPad", "PaddedMaxPool", "SqueezeExcite", "ECA", "DropPath", "GlobalAvgPool",
                  "StdConv2d")
#: The modules of backends/torch/ whose classes HELPER_CLASSES names.
HELPER_MODULES = ("backend.py", "norm.py")
_KINDS = {"bottleneck": "Bottleneck", "basic": "BasicBlock"}
#: ir.Block.shortcut_kind -> (block class name suffix, words for its docstring)
_SHORTCUTS = {"identity": ("", "identity"), "projection": ("Projection", "projection"),
              "avgpool_projection": ("AvgPoolProjection", "average-pool projection"),
              "option_a": ("OptionA", "option-A (subsample, zero channels)")}
_BLOCK_NAMES = {pre + kind + sc for pre in ("", "PreAct") for kind in (*_KINDS.values(), "Block")
                for sc, _ in _SHORTCUTS.values()}
# Module-level names of the emitted file; a model class must not shadow them (a model named "F" would
# otherwise replace torch.nn.functional). Block classes named twice get a "_2" suffix, which
# class_name never produces.
_RESERVED = frozenset({"os", "torch", "nn", "F", "BN_EPS", "BN_MOMENTUM", "norm", "load_model", "Residual",
                       "INPUT_LAYOUT", *HELPER_CLASSES, *_BLOCK_NAMES})
#: The variable each branch's value lives in, in the emitted forward methods.
_VAR = {common.STEM: "x", common.HEAD: "x", "pre": "pre", "main": "out", "shortcut": "shortcut", "post": "out"}


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


# -- the op table: IR op -> the constructor expression of its module (backends.torch.backend.OPS's modules) --


def _conv(op: ir.Conv, lw) -> str:
    args = [str(op.in_channels), str(op.out_channels), str(op.kernel)]
    settings = (("stride", op.stride, 1), ("padding", op.padding, 0), ("dilation", op.dilation, 1),
                ("groups", op.groups, 1))
    args += [f"{key}={value}" for key, value, default in settings if value != default]
    return f"nn.Conv2d({', '.join(args + [f'bias={op.bias}'])})"


def _batchnorm(op: ir.BatchNorm, lw) -> str:
    if (op.eps, op.momentum) == lw.norm:
        return f"norm({op.channels})"
    return f"nn.BatchNorm2d({op.channels}, eps={op.eps!r}, momentum={op.momentum!r})"


def _pool(op: ir.Pool, lw) -> str:
    if op.kind == "avg":
        return (f"nn.AvgPool2d({op.kernel}, stride={op.stride}, padding={op.padding}, ceil_mode={op.ceil_mode}, "
                f"count_include_pad={op.count_include_pad})")
    counted, rest = op.pad_split
    if not counted:  # torch's max-pool never lets its (-inf) padding win
        ceil = ", ceil_mode=True" if op.ceil_mode else ""
        return f"nn.MaxPool2d({op.kernel}, stride={op.stride}, padding={op.padding}{ceil})"
    return f"PaddedMaxPool({op.kernel}, {op.stride}, {(counted, tuple(rest))!r}, 0.0)"


#: How each IR op becomes a module constructor in the source (the conformance test checks it is complete).
OPS = {
    ir.Conv: _conv,
    ir.BatchNorm: _batchnorm,
    ir.ReLU: lambda op, lw: "nn.ReLU(inplace=True)",
    ir.Pool: _pool,
    ir.Subsample: lambda op, lw: f"Subsample({op.stride})",
    ir.ChannelPad: lambda op, lw: f"ChannelPad({op.before}, {op.after})",
    ir.SqueezeExcite: lambda op, lw: f"SqueezeExcite({op.channels}, {op.reduced})",
    ir.ECA: lambda op, lw: f"ECA({op.kernel}, {op.padding})",
    ir.DropPath: lambda op, lw: f"DropPath({op.rate!r})",
    ir.GlobalAvgPool: lambda op, lw: "GlobalAvgPool()",
    ir.Dropout: lambda op, lw: f"nn.Dropout({op.rate!r})",
    ir.Linear: lambda op, lw: f"nn.Linear({op.in_features}, {op.out_features}, bias={op.bias})",
    ir.GroupNorm: lambda op, lw: f"nn.GroupNorm({op.groups}, {op.channels}, eps={op.eps!r})",
    ir.StdConv: lambda op, lw: _conv(op, lw).replace("nn.Conv2d(", "StdConv2d(", 1)[:-1] + f", eps={op.eps!r})",
}


@dataclass
class _Step:
    """One lowered op: its attribute path relative to its owner (``conv1``, ``downsample.1``), its
    module's constructor, the variable it reads and whether it is a parameter-free helper."""

    branch: str
    attr: str
    expr: str
    src: str
    helper: bool


class _Emitter(common.Lowering):
    """Walks the network, collecting each section's steps: the stem, every block, the head."""

    table, backend, shortcut_prefix = OPS, "torch source", "shortcut_"  # names as backends.torch.backend's

    def __init__(self, net: ir.Network):
        bn = next((op for op in net.all_ops() if isinstance(op, ir.BatchNorm)), None)
        self.norm = None if bn is None else (bn.eps, bn.momentum)
        self.steps, self.sections, self.where = [], {}, ("", common.STEM)

    def name(self, op, owner, branch):
        self.where = (owner, branch)  # lower_ops names each op just before lowering it
        return super().name(op, owner, branch)

    def op(self, op, x, name, tap):
        owner, branch = self.where
        if owner and not name.startswith(owner + "."):
            raise ValueError(f"torch source: op {name} is not inside its block {owner}")
        attr = name[len(owner) + 1:] if owner else name
        self.steps.append(_Step(branch, attr, self.lowering_of(op)(op, self), x, not getattr(op, "name", None)))
        return _VAR[branch]

    def add(self, y, s, block, tap):
        self.steps.append(f"out = {y} + {s}")
        return "out"

    def tap(self, x, name):
        self.sections[name], self.steps = self.steps, []
        return "x"


def _slot(attr: str):
    """``('downsample', 1)`` for ``downsample.1``; None for a plain attribute."""
    if "." not in attr:
        return None
    container, _, index = attr.partition(".")
    if not index.isdigit():
        raise ValueError(f"torch source: cannot place a module named {attr!r}")
    return container, int(index)


def _fill_gaps(steps: list) -> None:
    """A helper between two items of the same container (a deep stem's ReLU) becomes the item between."""
    for i, step in enumerate(steps):
        if not isinstance(step, _Step) or not step.helper or i == 0 or i + 1 == len(steps):
            continue
        before, after = steps[i - 1], steps[i + 1]
        if not (isinstance(before, _Step) and isinstance(after, _Step)):
            continue
        a, b = _slot(before.attr), _slot(after.attr)
        if a and b and a[0] == b[0] and a[1] + 1 < b[1]:
            step.attr, step.helper = f"{a[0]}.{a[1] + 1}", False


class _Section:
    """The modules one owner registers (``[(attr, expr or [item exprs])]``) and its forward lines."""

    def __init__(self):
        self.modules, self.lines = [], []

    def render(self, steps: list) -> "_Section":
        _fill_gaps(steps)
        i = 0
        while i < len(steps):
            step = steps[i]
            if isinstance(step, str):
                self.lines.append(step)
                i += 1
                continue
            slot, n = _slot(step.attr), 1
            if slot is None:
                attr = self._register(step)
            else:
                while i + n < len(steps) and isinstance(steps[i + n], _Step) and \
                        steps[i + n].branch == step.branch and (_slot(steps[i + n].attr) or ("",))[0] == slot[0]:
                    n += 1
                attr = self._container(slot[0], steps[i:i + n])
            self.lines.append(f"{_VAR[step.branch]} = self.{attr}({step.src})")
            i += n
        return self

    def _register(self, step: _Step) -> str:
        """The attribute for ``step``: shared with an identical parameter-free helper of the same name
        (one ReLU per block, as in torchvision), else a fresh name (``relu1``, as backends.torch.backend names)."""
        names = dict(self.modules)
        attr, i = step.attr, 1
        while attr in names:
            if not step.helper:
                raise ValueError(f"torch source: two modules are named {attr!r}")
            if names[attr] == step.expr:
                return attr
            attr, i = f"{step.attr}{i}", i + 1
        self.modules.append((attr, step.expr))
        return attr

    def _container(self, name: str, steps: list) -> str:
        if any(attr == name for attr, _ in self.modules):
            raise ValueError(f"torch source: the items of {name!r} are not consecutive ops")
        items = {_slot(s.attr)[1]: s.expr for s in steps}
        if len(items) < len(steps):
            raise ValueError(f"torch source: two ops share a slot in {name!r}")
        self.modules.append((name, [items.get(k, "nn.Identity()") for k in range(max(items) + 1)]))
        return name


def _expr(expr, indent: int) -> str:
    """A constructor, or an ``nn.Sequential`` of item constructors over several lines."""
    if isinstance(expr, str):
        return expr
    pad = " " * (indent + 4)
    return "nn.Sequential(\n" + "".join(f"{pad}{item},\n" for item in expr) + " " * indent + ")"


def _call(cls: str, modules: list, indent: int) -> str:
    pad = " " * (indent + 4)
    args = "".join(f"{pad}{attr}={_expr(expr, indent + 4)},\n" for attr, expr in modules)
    return f"{cls}(\n{args}{' ' * indent})"


def _block_classes(net: ir.Network, blocks: dict) -> tuple:
    """``(class of each block, class definitions)``: one class per distinct forward."""
    by_forward, users, names = {}, {}, {}
    for b in net.blocks:
        lines = tuple(blocks[b.name].lines)
        if lines not in by_forward:
            suffix = _SHORTCUTS.get(b.shortcut_kind, ("", ""))[0]
            base = ("PreAct" if b.preact else "") + _KINDS.get(b.kind, "Block") + suffix
            n = sum(1 for v in by_forward.values() if v[0] == base)
            by_forward[lines] = (base, base if n == 0 else f"{base}_{n + 1}", b)
        names[b.name] = by_forward[lines][1]
        users.setdefault(lines, []).append(b.name)
    defs = []
    for lines, (_, cls, b) in by_forward.items():
        used = users[lines]
        where = ", ".join(used[:4]) + (f", ... ({len(used)} blocks)" if len(used) > 4 else "")
        doc = (f"{'Pre-activation ' + b.kind if b.preact else b.kind.capitalize()} block, "
               f"{_SHORTCUTS.get(b.shortcut_kind, ('', b.shortcut_kind))[1]} shortcut.\n\n    Used by {where}.")
        body = "".join(f"        {line}\n" for line in lines)
        defs.append(f'class {cls}(Residual):\n    """{doc}"""\n\n    def forward(self, x):\n{body}'
                    "        return out\n\n")
    return names, "\n".join(defs)


def _stages(net: ir.Network, blocks: dict, classes: dict) -> list:
    """``self.layerN = nn.Sequential(...)`` lines; a run of identical blocks is one comprehension."""
    stages: dict = {}
    for b in net.blocks:
        container, _, index = b.name.partition(".")
        stages.setdefault(container, []).append(b)
        if index != str(len(stages[container]) - 1):
            raise ValueError(f"torch source: block {b.name} is not item {len(stages[container]) - 1} of {container}")
    L = []
    for container, members in stages.items():
        L.append(f"        self.{container} = nn.Sequential(")
        runs = []
        for b in members:
            call = _call(classes[b.name], blocks[b.name].modules, 12)
            if runs and runs[-1][0] == call:
                runs[-1][1].append(b.name)
            else:
                runs.append((call, [b.name]))
        for call, names in runs:
            pad = "            "
            if len(names) == 1:
                L += [f"{pad}# {names[0]}", f"{pad}{call},"]
            else:
                L += [f"{pad}# {names[0]} to {names[-1]}", f"{pad}*[{call} for _ in range({len(names)})],"]
        L.append("        )")
    return L


def _net_class(net: ir.Network, cls: str, top: _Section, stem_modules: int, blocks: dict, classes: dict,
               layout: str = "nchw") -> str:
    L = [f"class {cls}(nn.Module):", f'    """{_doc_text(net.description or net.name)}"""', "",
         "    def __init__(self):", "        super().__init__()"]
    setup = [f"        self.{attr} = {_expr(expr, 8)}" for attr, expr in top.modules]
    L += setup[:stem_modules] + _stages(net, blocks, classes) + setup[stem_modules:]
    L += ["", "    def forward(self, x):"]
    layers = list(dict.fromkeys(b.name.partition(".")[0] for b in net.blocks))
    lines = top.lines[:top.head_at] + [f"x = self.{layer}(x)" for layer in layers] + top.lines[top.head_at:]
    perm = common.entry_permutation(layout, "nchw")
    if perm is not None:  # the shared entry transpose: the input's layout -> the NCHW body
        lines.insert(0, f"x = x.permute{perm}  # {layout.upper()} input (INPUT_LAYOUT) -> NCHW")
    L += [f"        {line}" for line in lines] + ["        return x", ""]
    return "\n".join(L)


def _helpers(text: str) -> str:
    """The helper classes ``text`` constructs, as backends/torch/backend.py defines them."""
    wanted = [name for name in HELPER_CLASSES if re.search(rf"\b{name}\(", text)]
    if not wanted:
        return ""
    found = {}
    for module in HELPER_MODULES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), module), encoding="utf-8") as f:
            lines = f.read().splitlines()
        found.update({node.name: lines[node.lineno - 1:node.end_lineno]
                      for node in ast.walk(ast.parse("\n".join(lines))) if isinstance(node, ast.ClassDef)})
    return "".join(textwrap.dedent("\n".join(found[n])) + "\n\n\n" for n in wanted)


def to_source(net: ir.Network, weights_file: str | None = None, layout: str = "nchw") -> str:
    """The standalone source of ``net``; its model takes input in ``layout`` ('nchw' or 'nhwc', also
    written as the module's ``INPUT_LAYOUT``)."""
    common.check_layout(layout, "torch source")
    lw = _Emitter(net)
    common.walk(lw, net, "x")
    top = _Section().render(lw.sections[common.STEM])
    stem_modules, top.head_at = len(top.modules), len(top.lines)
    top.render(lw.sections[common.HEAD])
    blocks = {b.name: _Section().render(lw.sections[b.name]) for b in net.blocks}
    classes, block_defs = _block_classes(net, blocks)
    model = _net_class(net, class_name(net.name), top, stem_modules, blocks, classes, layout)
    loader = _LOADER.format(cls=class_name(net.name), weights=repr(weights_file or f"{net.name}.safetensors"),
                            dims=", ".join(map(str, common.input_dims(net.input_shape, layout))))
    return (_header(net, weights_file, layout) + _helpers(block_defs + model) + _RESIDUAL + block_defs + "\n"
            + model + loader)


def _header(net: ir.Network, weights_file: str | None, layout: str = "nchw") -> str:
    spec_doc = "\n".join("    " + line if line else "" for line in _doc_text(net.spec_yaml).splitlines())
    L = [f'"""{_doc_text(net.name)}: {_doc_text(net.description)}\n',
         f"Generated by resnet-spec {__version__}. Standalone: needs PyTorch, and safetensors for load_model().",
         "Parameter names are the canonical resnet-spec names (torchvision's state_dict names where the",
         "structure matches)."]
    if weights_file:
        L.append(f"Weights: {_doc_text(weights_file)} beside this file; see load_model().")
    L += ["\nThe spec it was generated from:\n", spec_doc, '"""\n',
          "import os\n\nimport torch\nimport torch.nn.functional as F\nfrom torch import nn\n",
          f"#: The layout of the model's input (resnet-spec convert --layout): {layout.upper()}\n"
          f"INPUT_LAYOUT = {layout!r}\n"]
    bn = next((op for op in net.all_ops() if isinstance(op, ir.BatchNorm)), None)
    if bn is not None:
        L += [f"BN_EPS = {bn.eps!r}\nBN_MOMENTUM = {bn.momentum!r}\n\n",
              "def norm(channels):\n    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)\n\n"]
    return "\n".join(L) + "\n"


_RESIDUAL = '''class Residual(nn.Module):
    """A residual block: the modules it is given, at their canonical names. Each subclass's forward
    applies them: out = post(main(pre(x)) + shortcut(pre(x) or x)), the block's ReLU shared."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


'''

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
        print(model(torch.randn(1, {dims})).shape)
"""
