"""The one lowering walk every backend shares: how an IR network becomes a framework graph.

The walk (:func:`walk`) knows the network's structure and nothing about any framework::

    x = stem(x)                                   -> tap 'stem'
    for each block:
        a = pre(x)                                (pre-activation; empty for v1 blocks)
        y = main(a)                               (the residual branch)
        s = shortcut(a if shortcut_from == 'pre' else x)   (empty shortcut: the identity)
        x = post(y + s)                           -> tap '<block name>'
    x = head(x)                                   -> tap 'head'

Ops are lowered in exactly that order (pre, main, shortcut, add, post), the order of torchvision's
``state_dict``. Numbers do not depend on it: the two branches are independent and the add is
always ``main + shortcut``.

How a backend plugs in
----------------------
1. A module-level ``OPS`` dict in the backend's module (the one :func:`resnet_spec.backends.get`
   returns): every IR op type in :data:`resnet_spec.ir.OP_TYPES` -> the backend's lowering of it. The
   signature of a lowering is the backend's own (torch: ``op -> nn.Module``; ONNX: ``(graph, op,
   x, name) -> value``). ``tests/test_lowering.py`` fails when any op type lacks an entry in any
   backend's table, so a new IR op cannot be forgotten.
2. A :class:`Lowering` subclass whose :meth:`~Lowering.op` applies ``OPS`` to one op,
   :meth:`~Lowering.add` joins a block's two branches, and optionally :meth:`~Lowering.tap` marks a
   tap value and :meth:`~Lowering.name` adjusts the naming. ``walk(net, x, lowering)`` then builds
   (or runs) the whole network.

Names
-----
An op with a canonical name (``layer1.0.conv1``) is lowered under that name. A parameter-free op
has none; :meth:`Lowering.name` gives it ``<owner>.<what>`` (``layer1.0.relu``;
``relu`` in the stem and head, whose owner is ''), ``what`` coming from :data:`HELPER_NAMES`. The
walk passes the branch ('pre', 'main', 'shortcut', 'post'; 'stem', 'head') so that a backend may
set shortcut helpers apart. Repeated names are made unique by the backend with
:class:`resnet_spec.naming.UniqueNames` (deterministic: first come, first named).

Input layout
------------
Every framework computes in its own layout (torch and ONNX: NCHW; Keras: NHWC) and a file may take
its input in either (``convert --layout``). The difference is one transpose at the graph's entry,
before the walk: :func:`entry_permutation` gives its axes (ONNX: a ``Transpose`` node named
:data:`ENTRY_NAMES`; torch: ``x.permute``; Keras: a ``Permute`` layer), so the body never changes.
The layout a file takes is recorded in its metadata under :data:`META_LAYOUT`.
"""

from __future__ import annotations

from .. import ir

#: The name of each parameter-free op type, relative to its owner (torchvision's where it has one).
HELPER_NAMES = {ir.ReLU: "relu", ir.Pool: "pool", ir.Subsample: "subsample", ir.ChannelPad: "channel_pad",
                ir.DropPath: "drop_path", ir.GlobalAvgPool: "avgpool", ir.Dropout: "dropout"}

#: The taps: the stem's output, each block's output (named after the block) and the head's.
STEM, HEAD = "stem", "head"

#: The input layouts a file may take (``convert --layout``); the metadata key that records it.
LAYOUTS = ("nchw", "nhwc")
META_LAYOUT = "resnet_spec.layout"
#: The name of the entry transpose (ONNX node, Keras layer), by the compute layout it goes to.
ENTRY_NAMES = {"nchw": "to_channels_first", "nhwc": "to_channels_last"}
_AXES = {"nchw": "NCHW", "nhwc": "NHWC"}
_AXIS_WORDS = {"N": "batch", "C": "channels", "H": "height", "W": "width"}


def check_layout(layout: str, who: str = "layout") -> str:
    """``layout`` when it is one of :data:`LAYOUTS`, else a :class:`ResNetSpecError` naming them."""
    if layout not in LAYOUTS:
        from ..errors import ResNetSpecError

        raise ResNetSpecError(f"{who}: input layout {layout!r} is not supported; choose {' or '.join(LAYOUTS)}")
    return layout


def layout_text(layout: str) -> str:
    """How ``inspect`` shows the input layout a file records under :data:`META_LAYOUT`."""
    if layout in _AXES:
        axes = _AXES[layout]
        shown = f"{axes} ({', '.join(_AXIS_WORDS[a] for a in axes)})"
    else:
        shown = repr(layout)[:40]
    return f"{shown}, recorded in the metadata"


def entry_permutation(layout: str, compute: str):
    """The axes (batch first) of the transpose that turns an input in ``layout`` into the framework's
    ``compute`` layout, e.g. ``(0, 3, 1, 2)`` for an NHWC file of an NCHW framework; None when the two
    are the same (no transpose)."""
    check_layout(layout)
    check_layout(compute, "compute")
    if layout == compute:
        return None
    return tuple(_AXES[layout].index(axis) for axis in _AXES[compute])


def input_dims(shape, layout: str) -> tuple:
    """The spec's input ``shape`` (C, H, W) in ``layout``, without the batch: (C, H, W) or (H, W, C)."""
    c, h, w = shape
    return (c, h, w) if check_layout(layout) == "nchw" else (h, w, c)


def join(owner: str, leaf: str) -> str:
    """``owner.leaf``, or ``leaf`` when ``owner`` is '' (stem and head ops)."""
    return f"{owner}.{leaf}" if owner else leaf


def sibling(name: str, leaf: str) -> str:
    """The name beside ``name`` in the same owner: ``sibling('layer1.0.avgpool', 'flatten')`` is
    ``layer1.0.flatten``; ``sibling('avgpool', 'flatten')`` is ``flatten``."""
    return join(name.rpartition(".")[0], leaf)


class Lowering:
    """One backend's way of lowering IR ops; :func:`walk` drives it. Subclass and override
    :meth:`op` and :meth:`add` (and :meth:`tap` / :meth:`name` where the defaults do not fit)."""

    #: The backend's ``OPS`` table (IR op type -> lowering); :meth:`lowering_of` reads it.
    table: dict = {}
    backend = "?"
    #: Prefix of the unnamed helpers of a shortcut branch (PyTorch: ``shortcut_subsample``), '' for none.
    shortcut_prefix = ""

    def lowering_of(self, op):
        """The table entry for ``op``; a clear error (never an isinstance ladder) when there is none."""
        fn = self.table.get(type(op))
        if fn is None:
            raise TypeError(f"{self.backend}: no lowering for IR op {type(op).__name__}")
        return fn

    def name(self, op, owner: str, branch: str) -> str:
        """The canonical name of a named op, else ``<owner>.<what>`` (see the module docstring)."""
        canonical = getattr(op, "name", None)
        prefix = self.shortcut_prefix if branch == "shortcut" else ""
        return canonical if canonical else join(owner, prefix + HELPER_NAMES[type(op)])

    def op(self, op, x, name: str, tap: str | None):
        """Lower ``op`` reading value ``x`` under ``name``; return the value it produces. ``tap`` is
        the tap name when this op's output is a tap value (the last op of the stem, a block or the
        head), else None."""
        raise NotImplementedError

    def add(self, y, s, block: ir.Block, tap: str | None):
        """``y + s`` (main branch + shortcut) of ``block``; ``tap`` as in :meth:`op` (set when the
        block has no ``post`` ops)."""
        raise NotImplementedError

    def tap(self, x, name: str):
        """Called with each tap value (``'stem'``, every block's name, ``'head'``); returns the value
        the walk goes on with (a backend may rename it or record it)."""
        return x


def lower_ops(lw: Lowering, ops, x, owner: str, branch: str, tap: str | None = None):
    """Lower ``ops`` in order from ``x``; the last one's output is ``tap`` (when given)."""
    last = len(ops) - 1
    for i, op in enumerate(ops):
        x = lw.op(op, x, lw.name(op, owner, branch), tap if i == last else None)
    return x


def walk_block(lw: Lowering, block: ir.Block, x):
    """``post(main(a) + shortcut(a or x))`` with ``a = pre(x)`` (see :class:`resnet_spec.ir.Block`)."""
    a = lower_ops(lw, block.pre, x, block.name, "pre")
    y = lower_ops(lw, block.main, a, block.name, "main")
    s = lower_ops(lw, block.shortcut, a if block.shortcut_from == "pre" else x, block.name, "shortcut")
    y = lw.add(y, s, block, None if block.post else block.name)
    y = lower_ops(lw, block.post, y, block.name, "post", block.name)
    return lw.tap(y, block.name)


def walk(lw: Lowering, net: ir.Network, x, *, head: bool = True):
    """Lower (or run) the whole network from input ``x``: stem, every block, head (unless
    ``head=False``), calling :meth:`Lowering.tap` at each tap. Returns the last value."""
    x = lw.tap(lower_ops(lw, net.stem, x, "", STEM, STEM if net.stem else None), STEM)
    for block in net.blocks:
        x = walk_block(lw, block, x)
    if head:
        x = lw.tap(lower_ops(lw, net.head, x, "", HEAD, HEAD), HEAD)
    return x


def res2net_parts(op: ir.Res2Net) -> list:
    """``[(conv, bn or None)]``: a Res2Net block's split conv i and its BN as plain :class:`ir.Conv` and
    :class:`ir.BatchNorm` (timm's ``convs.i``, ``bns.i``), every fact from ``op``, for a backend to lower
    (or lay out the weights of) as it does any conv and BN."""
    k, s, p, d, g, w = op.kernel, op.stride, op.padding, op.dilation, op.groups, op.width
    i_shape, o_shape = op.split_in_shape, op.split_out_shape
    return [(ir.Conv(op.conv_name(i), w, w, k, s, p, d, g, op.bias, i_shape, o_shape),
             ir.BatchNorm(op.bn_name(i), w, op.eps, op.momentum, o_shape, o_shape) if op.norm else None)
            for i in range(op.convs)]


def res2net_pool(op: ir.Res2Net) -> ir.Pool | None:
    """The average pool on a Res2Net block's last split, as an :class:`ir.Pool` every backend lowers as it
    lowers any pool (None when the split passes through): its facts, all from ``op``; floor mode."""
    if op.last != "pool":
        return None
    return ir.Pool(op.pool_name, "avg", op.pool_kernel, op.pool_stride, op.pool_padding, False,
                   op.pool_count_include_pad, "neg_inf", op.split_in_shape, op.split_out_shape)


def missing_lowerings(table) -> list:
    """The IR op types that ``table`` has no lowering for (the conformance test's check)."""
    return ir.missing_op_types(table)
