"""How a file made anywhere takes the spec's input, read from the file itself (``verify``'s workers).

``verify`` draws one NCHW float32 batch and feeds it to every file. A file made by another tool may
want it otherwise, and says so in its input's declaration:

* **layout**: NCHW or NHWC, decided from the declared shape: the spec's (C, H, W) in positions 1-3, or
  (H, W, C) (tf2onnx's ONNX files and TFLite files are NHWC; litert-torch's TFLite and torch's ONNX are
  NCHW). A shape that fits both (every dimension dynamic, or a spec whose channels equal its sides)
  takes the layout the file records (``resnet_spec.layout``, written by ``convert --layout``), else
  is refused in one line naming ``--layout``; ``layout`` other than ``auto`` takes that layout, and
  refuses a shape that does not fit it.
* **batch**: a fixed batch (litert-torch and nobuco write 1; ``convert --batch N``) is fed in chunks of
  its own size, without resizing the input; ``--batch`` must then be a multiple of it.
* **name** and **dtype**: the input's own name and element type (float32 or float16).

Framework-free: the workers read the declaration with their framework and build a :class:`Feed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ResNetSpecError
from .fileio import shown

#: ``verify --layout``: ``auto`` decides from each file's input shape
LAYOUTS = ("auto", "nchw", "nhwc")
#: the input element types verify feeds
FLOAT_DTYPES = ("float32", "float16")


def decide_layout(path: str, dims, shape, layout: str = "auto", recorded: str | None = None) -> str:
    """'nchw' or 'nhwc': how the file's input ``dims`` (batch first; None/str/-1 for dynamic) holds the
    spec's ``shape`` (C, H, W); ``layout`` (``auto``, ``nchw``, ``nhwc``) as :data:`LAYOUTS` says;
    ``recorded``: the layout the file's metadata records, which ``auto`` takes when the shape fits it."""
    c, h, w = shape
    dims = _dims(dims)
    tail = list(dims)[1:]
    forms = {"nchw": [c, h, w], "nhwc": [h, w, c]}

    def fits(want):
        return len(tail) == 3 and all(d is None or d == v for d, v in zip(tail, want))

    fitting = [name for name in ("nchw", "nhwc") if fits(forms[name])]
    if layout != "auto":
        if layout not in fitting:
            raise ResNetSpecError(f"{shown(path)}: input shape {dims} is not {layout.upper()} of spec input "
                                  f"(C, H, W) = {tuple(shape)}")
        return layout
    if recorded in fitting:
        return recorded
    if len(fitting) == 2:
        raise ResNetSpecError(f"{shown(path)}: input shape {dims} fits both NCHW and NHWC of spec input "
                              f"(C, H, W) = {tuple(shape)}; pass --layout nchw or --layout nhwc")
    if not fitting:
        raise ResNetSpecError(f"{shown(path)}: input shape {dims} does not fit spec input (C, H, W) = "
                              f"{tuple(shape)}; is it a model of another spec?")
    return fitting[0]


def _dims(dims) -> tuple:
    """``dims`` as Python ints, None for a dynamic one (None, a symbol's name, -1)."""
    return tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None for d in dims)


@dataclass(frozen=True)
class Feed:
    """What a file's input takes: ``layout`` ('nchw' or 'nhwc'), a fixed ``batch`` (None: any), its
    ``name`` (None where the runtime feeds by position) and ``dtype`` (:data:`FLOAT_DTYPES`)."""

    layout: str
    batch: int | None = None
    name: str | None = None
    dtype: str = "float32"

    def chunks(self, path: str, x: np.ndarray) -> list:
        """``x`` (NCHW float32) in the file's layout and dtype, cut into pieces of its fixed batch (one
        piece when the batch is dynamic); a batch that is no multiple of the fixed one is refused."""
        xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if self.layout == "nhwc" else x).astype(self.dtype)
        if self.batch is None or self.batch == len(xin):
            return [xin]
        if len(xin) % self.batch:
            raise ResNetSpecError(f"{shown(path)}: its input takes a batch of exactly {self.batch}; pass --batch "
                                  f"{self.batch} (or a multiple of it)")
        return [xin[i:i + self.batch] for i in range(0, len(xin), self.batch)]

    def first(self, path: str, x: np.ndarray) -> np.ndarray:
        """The smallest piece of ``x`` the file takes: its fixed batch, else one image."""
        return self.chunks(path, x[: self.batch or 1])[0]

    def run(self, path: str, x: np.ndarray, fn) -> np.ndarray:
        """``fn(piece)`` for every piece of ``x`` (:meth:`chunks`), the results joined along the batch."""
        outs = [np.asarray(fn(piece)) for piece in self.chunks(path, x)]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


def feed_of(path: str, dims, shape, layout: str = "auto", name: str | None = None, dtype: str = "float32",
            recorded: str | None = None) -> Feed:
    """The :class:`Feed` of a file whose input declares ``dims`` (batch first), ``name`` and ``dtype``
    (and whose metadata records the layout ``recorded``), for a spec of input ``shape`` (C, H, W)."""
    if dtype not in FLOAT_DTYPES:
        raise ResNetSpecError(f"{shown(path)}: its input is {dtype} (a quantized model?); verify feeds float32 or "
                              "float16 inputs")
    dims = _dims(dims)
    batch = dims[0] if dims and dims[0] else None
    return Feed(decide_layout(path, dims, shape, layout, recorded), batch, name, dtype)
