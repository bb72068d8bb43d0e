"""ReLU kinks that float32 cannot place: the part of a gradient no float32 implementation determines.

A ReLU passes its input's gradient where the input is > 0 and blocks it elsewhere. When PyTorch's
float64 step puts a ReLU input within :data:`KINK_TOL` of zero (relative to the largest input of its
channel in that ReLU call), the sign a float32 step computes for it is below float32's resolution: one
framework passes that entry's gradient and another blocks it, and every gradient upstream moves by that
entry's share. Found on keras_resnet50v2 at 64x64 (layer3.3's first ReLU: +1.1e-6 in float64 against an
input scale of 5.8, exactly 0 in a float32 step with BN's sums in float32): ``layer3.3.bn1.bias`` 7.8e-2
of its own scale and every tensor upstream about 1e-3 of the model's gradient scale, in a correct
float32 implementation.

:func:`kink_deltas` finds such entries in the float64 step (each ReLU call is scanned as it runs;
only the candidates are kept) and runs the float64 step again with ReLU derivatives flipped (forward
values unchanged): once per kink for the :data:`MAX_KINKS` closest to zero, and once more with all
the others flipped together. ``train_parity.against_reference`` allows each tensor the sum of those
changes on top of its float32 band. The joint flip stands for the kinks not examined one by one; two
of them could cancel in it, so for those it is an estimate, not a bound. ReLUs inside squeeze-excite
modules (functional) and max-pool near-ties are not examined.
"""

from __future__ import annotations

import itertools

import numpy as np

from .training import torch_step

#: A ReLU input ``v`` with ``0 < |v| <= KINK_TOL * s`` is a kink, ``s`` being the largest ``|input|`` of
#: its channel in that call (about 30 float32 roundings of the channel's scale: a float32 step's
#: activations are that close to float64's).
KINK_TOL = 4e-6
MAX_KINKS = 16


def _near_zero(x, tol: float) -> list:
    """The kinks of one ReLU call's input ``x`` (channel axis 1): ``[(index, value, |value| / scale)]``."""
    a = x.abs()
    scale = a.amax(dim=[d for d in range(a.dim()) if d != 1], keepdim=True) if a.dim() > 1 else a.max()
    near = (a > 0) & (a <= tol * scale)
    scale = scale.expand_as(a)
    return [(tuple(i), float(x[tuple(i)]), float(a[tuple(i)] / scale[tuple(i)])) for i in near.nonzero().tolist()]


def _on_relu_calls(model, hook, names=None):
    """Make every nn.ReLU of ``model`` (those in ``names`` if given) out of place and call
    ``hook(name, call, x, out)`` on each of its calls (``call`` counts that module's calls in this step);
    a hook that returns a tensor replaces the ReLU's output."""
    import torch

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ReLU) and (names is None or name in names):
            m.inplace = False
            count = itertools.count()
            m.register_forward_hook(lambda mod, inp, out, n=name, c=count: hook(n, next(c), inp[0], out))
    return model


def _record(found: list, tol: float = KINK_TOL):
    """A ``mutate`` for :func:`torch_step` that appends every nn.ReLU call's kinks to ``found`` as the call
    runs (the inputs themselves are not kept)."""
    def hook(name, call, x, out):
        found.extend({"relu": name, "call": call, "index": i, "value": v, "of_scale": f}
                     for i, v, f in _near_zero(x.detach(), tol))
    return lambda model: _on_relu_calls(model, hook)


def _flip(*kinks: dict):
    """A ``mutate`` flipping the ReLU derivative at the given entries: ``out + s * (x - x.detach())`` with
    ``s`` = +1 at a blocked entry (now passed), -1 at a passed one (now blocked), 0 elsewhere."""
    import torch

    where: dict = {}
    for k in kinks:
        where.setdefault(k["relu"], {}).setdefault(k["call"], []).append(k)

    def hook(name, call, x, out):
        mine = where[name].get(call)
        if not mine:
            return out
        s = torch.zeros_like(x)
        for k in mine:
            s[tuple(k["index"])] = -1.0 if k["value"] > 0 else 1.0
        return out + s * (x - x.detach())
    return lambda model: _on_relu_calls(model, hook, names=where)


def find_kinks(net, weights, x, g, *, device: str = "cpu", tol: float = KINK_TOL) -> tuple:
    """(PyTorch's float64 step, its description, every kink in it, closest to zero first)."""
    found: list = []
    base, desc = torch_step(net, weights, x, g, device=device, dtype="float64", mutate=_record(found, tol))
    found.sort(key=lambda k: k["of_scale"])
    return base, desc, found


def kink_deltas(net, weights, x, g, *, device: str = "cpu") -> tuple:
    """(PyTorch's float64 step, kink report). The report: ``kinks`` (examined one by one), ``found`` (in
    all), ``jointly`` (the others, flipped together in one step) and ``deltas`` = {tensor: sum over
    those flips of max |gradient with the flip - gradient|}."""
    base, desc, found = find_kinks(net, weights, x, g, device=device)
    flips = [(k,) for k in found[:MAX_KINKS]] + ([tuple(found[MAX_KINKS:])] if found[MAX_KINKS:] else [])
    deltas = {n: 0.0 for n in base["grads"]}
    for kinks in flips:
        flipped, _ = torch_step(net, weights, x, g, device=device, dtype="float64", mutate=_flip(*kinks))
        for n, v in flipped["grads"].items():
            deltas[n] += float(np.abs(np.asarray(v) - base["grads"][n]).max()) if np.size(v) else 0.0
    report = {"kinks": [dict(k, index=list(k["index"])) for k in found[:MAX_KINKS]], "found": len(found),
              "jointly": len(found[MAX_KINKS:]), "tol": KINK_TOL, "deltas": deltas}
    return (base, desc), report
