"""ReLU kinks that float32 cannot place: the part of a gradient no float32 implementation determines.

A ReLU passes its input's gradient where the input is > 0 and blocks it elsewhere. When PyTorch's
float64 step puts a ReLU input within :data:`KINK_TOL` of zero (relative to the largest input of its
channel in that ReLU call), the sign a float32 step computes for it is below float32's resolution: one
framework passes that entry's gradient and another blocks it, and every gradient upstream moves by that
entry's share. Found on keras_resnet50v2 at 64x64 (layer3.3's first ReLU: +1.1e-6 in float64 against an
input scale of 5.8, exactly 0 in a float32 step with BN's sums in float32): ``layer3.3.bn1.bias`` 7.8e-2
of its own scale and every tensor upstream about 1e-3 of the model's gradient scale, in a correct
float32 implementation.

:func:`kink_deltas` finds such entries in the float64 step and, for each (at most :data:`MAX_KINKS`,
closest to zero first), runs the float64 step again with that one entry's ReLU derivative flipped (the
forward values unchanged). ``train_parity.against_reference`` allows each tensor the sum of those
changes on top of its float32 band. ReLUs inside squeeze-excite modules (functional) and max-pool
near-ties are not examined.
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


def _record(calls: list):
    """A ``mutate`` for :func:`torch_step` that keeps every nn.ReLU call's input (ReLUs made out of place)."""
    import torch

    def mutate(model):
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.ReLU):
                m.inplace = False
                count = itertools.count()
                m.register_forward_hook(lambda mod, inp, out, n=name, c=count:
                                        calls.append((n, next(c), inp[0].detach())))
        return model
    return mutate


def _flip(kink: dict):
    """A ``mutate`` flipping the ReLU derivative at one entry of one call: ``out + s * (x - x.detach())``
    with ``s`` = +1 at a blocked entry (now passed), -1 at a passed one (now blocked), 0 elsewhere."""
    import torch

    def mutate(model):
        for name, m in model.named_modules():
            if name == kink["relu"] and isinstance(m, torch.nn.ReLU):
                m.inplace = False
                count = itertools.count()

                def hook(mod, inp, out, c=count):
                    if next(c) != kink["call"]:
                        return out
                    x = inp[0]
                    s = torch.zeros_like(x)
                    s[tuple(kink["index"])] = -1.0 if kink["value"] > 0 else 1.0
                    return out + s * (x - x.detach())
                m.register_forward_hook(hook)
        return model
    return mutate


def find_kinks(calls: list, tol: float = KINK_TOL, limit: int = MAX_KINKS) -> tuple:
    """(the ``limit`` kinks closest to zero, how many there are in all) among recorded ReLU calls."""
    found = []
    for name, i, x in calls:
        a = x.abs()
        scale = a.amax(dim=[d for d in range(a.dim()) if d != 1], keepdim=True) if a.dim() > 1 else a.max()
        near = (a > 0) & (a <= tol * scale)
        scale = scale.expand_as(a)
        for idx in near.nonzero().tolist():
            v, s = float(x[tuple(idx)]), float(scale[tuple(idx)])
            found.append({"relu": name, "call": i, "index": tuple(idx), "value": v, "of_scale": abs(v) / s})
    found.sort(key=lambda k: k["of_scale"])
    return found[:limit], len(found)


def kink_deltas(net, weights, x, g, *, device: str = "cpu") -> tuple:
    """(PyTorch's float64 step, kink report). The report: ``kinks`` (examined), ``found`` (in all), and
    ``deltas`` = {tensor: sum over examined kinks of max |gradient with the kink flipped - gradient|}."""
    calls: list = []
    base, desc = torch_step(net, weights, x, g, device=device, dtype="float64", mutate=_record(calls))
    kinks, found = find_kinks(calls)
    del calls
    deltas = {n: 0.0 for n in base["grads"]}
    for k in kinks:
        flipped, _ = torch_step(net, weights, x, g, device=device, dtype="float64", mutate=_flip(k))
        for n, v in flipped["grads"].items():
            deltas[n] += float(np.abs(np.asarray(v) - base["grads"][n]).max()) if np.size(v) else 0.0
    report = {"kinks": [dict(k, index=list(k["index"])) for k in kinks], "found": found, "tol": KINK_TOL,
              "deltas": deltas}
    return (base, desc), report
