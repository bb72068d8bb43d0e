"""Real checkpoint files -> the canonical weight set.

A training script rarely saves a bare ``state_dict``: it saves ``{"model": ..., "optimizer": ...}``,
wraps the model in DDP (``module.`` prefixes) or ``torch.compile`` (``_orig_mod.``), keeps an EMA copy,
or pickles the whole model. :func:`read_checkpoint` finds the dictionary of tensors inside such a file,
strips the wrapper prefixes and says in one line what it did; :func:`load_checkpoint` also checks the
result against a spec and, with ``new_head=True``, replaces a classifier whose shape differs (the usual
fine-tuning case: ImageNet weights into a 10-class spec).

Everything is read with ``torch.load(weights_only=True)``: nothing pickled is ever executed.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

from . import ir
from .errors import WeightsError

#: Where training scripts put the model's tensors, in the order they are tried.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: The exponential-moving-average copies, taken only when asked (``ema=True`` / ``--weights-key``).
EMA_KEYS = ("model_ema", "ema", "state_dict_ema", "ema_state_dict")
#: Wrapper prefixes: DDP/DataParallel, torch.compile, Lightning-style ``self.model``.
PREFIXES = ("module.", "_orig_mod.", "model.")
IGNORED_SUFFIXES = (".num_batches_tracked",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def read_checkpoint(path: str, key: str | None = None, ema: bool = False,
                    net: ir.Network | None = None) -> tuple[dict, list]:
    """``({name: float32 array}, notes)`` from a safetensors file or a torch checkpoint.

    ``key`` names the entry holding the weights (dotted for nested entries, e.g. ``ema.module``);
    ``ema=True`` prefers an EMA copy. ``notes`` says what was unwrapped or stripped (empty if nothing).
    With ``net``, the file's size is bounded by the spec's before its data is read.
    """
    from . import weightfile

    with weightfile.open_checked(path) as fh:
        kind = weightfile.sniff(fh) if path.endswith(TORCH_SUFFIXES) else "safetensors"
        if kind == "safetensors":  # also a safetensors file under a .pth name
            if key:
                raise WeightsError(f"{path}: --weights-key applies to torch checkpoints (.pth/.pt/.ckpt); a "
                                   "safetensors file holds one flat set of tensors")
            # Size bound now; names and shapes once prefixes are stripped and the head fitted.
            weightfile.check_size(path, os.fstat(fh.fileno()).st_size, net)
            return _strip_prefixes(weightfile.read_safetensors(path, fh), path)
        if kind != "zip":
            raise WeightsError(f"{path}: refused: not a zip-format PyTorch file (a bare pickle, a file saved by "
                               "torch < 1.6, or not a weight file); save it with a current torch.save or as "
                               "safetensors")
        weightfile.check_torch_zip(path, fh, net)
    obj = _torch_load(path)
    tensors, notes = unwrap(obj, path, key, ema)
    stripped, more = _strip_prefixes(tensors, path)
    return stripped, notes + more


def _torch_load(path: str):
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading .pth/.pt files needs PyTorch (pip install torch), or convert "
                           "the file to safetensors") from None
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weight file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refusals and corrupt archives both land here
        raise WeightsError(_load_failure(path, exc)) from None


def _load_failure(path: str, exc: Exception) -> str:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        cls = found.group(1)
        what = "a whole pickled model" if "models" in cls or "nn.modules" in cls or "Module" in cls else "pickled Python objects"
        return (f"{path}: refused: the file holds {what} ({cls}), not a dictionary of tensors; weights are "
                "read with torch.load(weights_only=True), which never runs pickled code. Save the weights "
                "instead: torch.save(model.state_dict(), 'weights.pth')")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{path}: refused: not a readable torch checkpoint ({first})"


def unwrap(obj, path: str, key: str | None = None, ema: bool = False) -> tuple[dict, list]:
    """The ``{name: numpy array}`` inside a loaded checkpoint ``obj``, and notes on how it was found."""
    import torch

    notes, took_ema = [], False
    if key:
        for part in key.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise WeightsError(f"{path}: no entry {key!r}; the file holds {_describe_keys(obj)}")
            obj = obj[part]
        notes.append(f"took the weights under {key!r}")
    for _ in range(4):  # {"model": {"state_dict": ...}} and the like
        if not isinstance(obj, dict) or _is_tensor_dict(obj, torch):
            break
        order = EMA_KEYS + CONTAINER_KEYS if ema else CONTAINER_KEYS
        found = next((k for k in order if isinstance(obj.get(k), dict) and obj[k]), None)
        if found is None:
            break
        notes.append(f"took the weights under {found!r}")
        took_ema = took_ema or found in EMA_KEYS
        obj = obj[found]
    if ema and not took_ema and not key:
        raise WeightsError(f"{path}: no EMA weights (looked for {', '.join(EMA_KEYS)}); the file holds "
                           f"{_describe_keys(obj)}")
    if isinstance(obj, torch.nn.Module):  # possible only through an allow-listed global
        raise WeightsError(f"{path}: refused: a whole model, not a dictionary of tensors; save it with "
                           "torch.save(model.state_dict(), 'weights.pth')")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: refused: expected a dictionary of tensors, got {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            hint = (f"; the file holds {_describe_keys(obj)}: pick the weights with --weights-key KEY"
                    if isinstance(v, dict) or any(isinstance(x, dict) for x in obj.values()) else "")
            raise WeightsError(f"{path}: refused: entry {k!r} is a {type(v).__name__}, not a tensor{hint}")
    from .weights import _torch_arrays

    return _torch_arrays(path, obj), notes


def _is_tensor_dict(obj: dict, torch) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _describe_keys(obj) -> str:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    keys = [repr(k) for k in list(obj)[:12]]
    more = f" and {len(obj) - 12} more" if len(obj) > 12 else ""
    return "the keys " + ", ".join(keys) + more if keys else "an empty dictionary"


def _strip_prefixes(tensors: dict, path: str) -> tuple[dict, list]:
    """Strip wrapper prefixes shared by every name (repeatedly: ``module._orig_mod.``)."""
    stripped = []
    changed = True
    while changed and tensors:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p):]: v for k, v in tensors.items()}
                stripped.append(p)
                changed = True
    return tensors, ([f"stripped the prefix {''.join(stripped)!r} from every name"] if stripped else [])


# -- checking against a spec, with an optional new classifier ------------------------------------------

def head_tensors(net: ir.Network) -> dict:
    """The classifier's canonical tensors: ``{name: shape}``."""
    fc = next(op for op in net.head if isinstance(op, ir.Linear))
    return dict((n, s) for n, s, _ in fc.tensors())


def new_head(net: ir.Network, seed: int = 0) -> dict:
    """A fresh classifier as :func:`resnet_spec.weights.init_weights` makes it: U(+-1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in head_tensors(net).items():
        fan_in = shape[1] if len(shape) == 2 else next(iter(head_tensors(net).values()))[1]
        bound = 1 / math.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def apply_head(net: ir.Network, given: dict, source: str, replace: bool, seed: int = 0) -> tuple[dict, list]:
    """Handle a classifier that differs from the spec's.

    ``replace=False``: when only the classifier differs, refuse with a message naming ``--new-head``.
    ``replace=True``: give a classifier of a different shape (or a missing one) a fresh initialisation;
    every other tensor must still match (that is left to ``check_weights``).
    """
    head = head_tensors(net)
    expected = {t.name: t.shape for t in net.tensors()}
    body_ok = all(n in given and tuple(np.shape(given[n])) == tuple(s) for n, s in expected.items()
                  if n not in head) and not [n for n in given if n not in expected and n not in head
                                             and not n.endswith(IGNORED_SUFFIXES)]
    differs = [n for n, s in head.items() if n not in given or tuple(np.shape(given[n])) != tuple(s)]
    if not differs:
        return given, (["the checkpoint's classifier already matches the spec; --new-head changed nothing"]
                       if replace else [])
    w = next(iter(head))
    if not replace:
        if body_ok and w in given and tuple(np.shape(given[w])) != tuple(head[w]):
            got = f"shape {_fmt(np.shape(given[w]))}"
            raise WeightsError(f"{source}: only the classifier differs ({w!r}: the checkpoint has {got}, "
                               f"the spec expects {_fmt(head[w])}); pass --new-head (Python: new_head=True) to "
                               "load every other tensor and initialise a new classifier")
        return given, []
    if not body_ok:
        return given, []  # check_weights names the first tensor that does not fit
    fresh = new_head(net, seed)
    out = {k: v for k, v in given.items() if k not in head}
    out.update(fresh)
    was = _fmt(np.shape(given[w])) if w in given else "none"
    return out, [f"new classifier {w} {_fmt(head[w])} (the checkpoint's was {was}), initialised "
                 f"U(+-1/sqrt({head[w][1]})) with seed {seed}"]


def load_checkpoint(net: ir.Network, path: str, key: str | None = None, ema: bool = False,
                    new_head: bool = False, seed: int = 0, allow_nonfinite: bool = False) -> tuple[dict, list]:
    """Read ``path``, unwrap it, fit the classifier if asked, check everything: ``(weights, notes)``."""
    from .weights import check_weights

    from .importers import is_foreign_weights

    path = os.fspath(path)
    if is_foreign_weights(path):  # .onnx, .keras, keras:/torchvision:/timm: -- imported, checked layer by layer
        if key or ema:
            raise WeightsError(f"{path}: --weights-key and --ema apply to torch checkpoints")
        from .weights import read_foreign

        tensors, notes = read_foreign(net, path), []
    else:
        tensors, notes = read_checkpoint(path, key, ema, net)
    tensors, more = apply_head(net, tensors, path, new_head, seed)
    return check_weights(net, tensors, path, allow_nonfinite), notes + more


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
