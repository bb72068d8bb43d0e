"""The float64 reference of ``parity --train``: PyTorch's training step in float64, taking its ReLU
decisions from the float32 step under test.

Why. A ReLU passes its input's gradient where the input is > 0 and blocks it elsewhere. Where an input is
within float32's resolution of zero, the side a float32 step puts it on is decided by rounding: two correct
float32 implementations, or one on two CPUs (AVX2 against AVX-512 kernels), may pass and block it
differently, and every gradient upstream then moves discretely by that entry's share (keras_resnet50v2 at
64x64: ``layer3.3.bn1.bias`` by 7.8e-2 of its own scale). A float64 step decides such an entry its own
way, so comparing a float32 leg with it mixed two things: the leg's rounding, which the check is for, and
a discrete choice no float32 computation determines. Estimating that choice's effect (flipping kinks one
by one) gave allowances that were not bounds, and verdicts that changed with the CPU.

Construction. Every leg returns its ReLU decisions (``input > 0`` per entry, in the PyTorch model's call
order: :func:`.training.pack_decisions`) from the very step whose gradients it reports. The reference
runs PyTorch's forward once in float64, unchanged, and then one backward per leg in which each ReLU passes
the gradient exactly where that leg passed it, at every entry whose float64 input is within
:data:`ADOPT_TOL` of the largest ``|input|`` of its channel in that call; everywhere else float64's own
decision stands. So at a kink the leg and its reference take the same branch by construction, and what
is left between them is continuous: rounding, which the float32 band measures. PyTorch's own float32 step,
whose error sets the band, is held to a reference built the same way from its own decisions.

Limits. A leg decision that differs from float64's farther from zero than ``ADOPT_TOL`` is not adopted
(it is no rounding effect: the leg's forward differs; a planted fault shows up that way) and is counted as
a conflict in the report. Max-pool argmax near-ties (a gradient routed to the other of two window entries
within rounding of each other) are not adopted: only ReLU decisions are.
"""

from __future__ import annotations

import itertools

import numpy as np

from .training import torch_model, torch_step, unpack_decisions

#: Adopt a leg's decision where the float64 input ``v`` has ``|v| <= ADOPT_TOL * s``, ``s`` the largest
#: ``|input|`` of its channel in that ReLU call. A float32 step's activations are within a few 1e-6 of
#: float64's on that scale (30 roundings of 2**-24 is 2e-6); 1e-4 leaves a margin of 50 over that.
ADOPT_TOL = 1e-4


def _decided_relu():
    """A ReLU whose forward is ``max(x, 0)`` and whose backward passes the gradient where ``state.masks[i]``
    says (set before each backward pass)."""
    import torch

    class DecidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, state, i):
            ctx.state, ctx.i = state, i
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.state.masks[ctx.i], None, None

    return DecidedReLU


class _State:
    def __init__(self):
        self.inputs: list = []  # every ReLU call's float64 input, call order
        self.masks: list = []  # the gradient masks of the backward pass to come


def _install(model, state: _State):
    """Every nn.ReLU of ``model`` made out of place and replaced by the decided ReLU (call order)."""
    import torch

    relu, calls = _decided_relu(), itertools.count()

    def hook(_m, inp, _out):
        state.inputs.append(inp[0].detach())
        return relu.apply(inp[0], state, next(calls))

    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
            m.register_forward_hook(hook)
    return model


def adopt(inputs: list, decisions: list) -> tuple:
    """(gradient masks, summary): a leg's decisions where float64's input is within :data:`ADOPT_TOL` of
    zero (on its channel's scale), float64's own elsewhere. Raises ValueError when the calls or their
    shapes do not match."""
    import torch

    if len(decisions) != len(inputs):
        raise ValueError(f"{len(decisions)} ReLU calls against PyTorch's {len(inputs)}")
    masks, adopted, conflicts, worst = [], 0, 0, 0.0
    for i, (a, d) in enumerate(zip(inputs, decisions)):
        if tuple(d["shape"]) != tuple(a.shape):
            raise ValueError(f"ReLU call {i}: shape {tuple(d['shape'])} against PyTorch's {tuple(a.shape)}")
        leg, own = torch.from_numpy(unpack_decisions(d)).to(a.device), a > 0
        mag = a.abs()
        scale = mag.amax(dim=[k for k in range(a.dim()) if k != 1], keepdim=True) if a.dim() > 1 else mag.max()
        of_scale = mag / scale.clamp_min(torch.finfo(a.dtype).tiny)
        differ = leg != own
        near = differ & (of_scale <= ADOPT_TOL)
        adopted, conflicts = adopted + int(near.sum()), conflicts + int((differ & ~near).sum())
        if near.any():
            worst = max(worst, float(of_scale[near].max()))
        masks.append(torch.where(near, leg, own).to(a.dtype))
    return masks, {"relu_calls": len(inputs), "adopted": adopted, "adopted_max_of_scale": worst,
                   "conflicts": conflicts, "tol": ADOPT_TOL}


def reference(net, weights, x, g, decisions: dict, *, device: str = "cpu") -> dict:
    """PyTorch's float64 step, once per set of ReLU decisions.

    ``decisions``: ``{leg: packed decisions}``. Returns ``{"own": {"float32": PyTorch's float32 step,
    "float64": {"grads"} with its decisions}, "legs": {leg: {"grads", "decisions"} or {"error"}}}``."""
    import torch

    from .torch import backend as torch_backend

    step32, _ = torch_step(net, weights, x, g, device=device, decisions=True)
    dev, _, _ = torch_backend.device_and_dtype(device, "float32", False)
    state = _State()
    model = _install(torch_model(net, weights, dtype="float64"), state).to(dev)
    x64, g64 = (torch.from_numpy(np.ascontiguousarray(a, np.float64)).to(dev) for a in (x, g))
    loss = (model(x64) * g64).sum() / x64.shape[0]
    names, params = zip(*model.named_parameters())
    done: dict = {}

    def grads_for(dec):
        masks, summary = adopt(state.inputs, dec)
        key = b"".join(m.to(torch.bool).cpu().numpy().tobytes() for m in masks)
        if key not in done:
            state.masks = masks
            gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            done[key] = {n: (torch.zeros_like(p) if gr is None else gr).detach().cpu().numpy()
                         for n, p, gr in zip(names, params, gs)}
        return {"grads": done[key], "decisions": summary}

    own = grads_for(step32["relu"])
    legs = {}
    for leg, dec in decisions.items():
        try:
            legs[leg] = grads_for(dec)
        except ValueError as exc:
            legs[leg] = {"error": f"its ReLU decisions do not match PyTorch's model: {exc}"}
    return {"own": {"float32": {"grads": step32["grads"]}, "float64": own}, "legs": legs}
