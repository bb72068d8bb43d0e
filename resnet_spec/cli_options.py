"""Option types, shared option groups, option parsing and the spec and weight loading of the
``resnet-spec`` commands (:mod:`resnet_spec.cli`, :mod:`resnet_spec.cli_tools`). A bad value is a usage
error (exit 2), never a traceback."""

from __future__ import annotations

import math

import click

from .backends import BACKENDS
from .errors import ResNetSpecError


class _FiniteFloat(click.ParamType):
    """A finite number in (lo, hi]: NaN and Inf are usage errors, not tracebacks."""

    name = "number"

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x) or not self.lo < x <= self.hi:
            self.fail(f"{value!r} is not a finite number in ({self.lo:g}, {self.hi:g}]", param, ctx)
        return x


def _not_empty(ctx, param, value):
    if value == "":
        raise click.BadParameter("must not be empty", ctx, param)
    return value


_SEED = click.IntRange(0, 2**63 - 1)


def _option_group(options):
    """A decorator applying ``options`` (click.option decorators) in the order listed."""

    def apply(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return apply


limit_options = _option_group([
    click.option("--max-params", type=_FiniteFloat(0, 1e15), default=2e9, show_default=True,
                 help="Refuse specs with more parameters than this."),
    click.option("--max-activation-gib", type=_FiniteFloat(0, 1e6), default=64.0, show_default=True,
                 help="Refuse specs whose activations for one fp32 image exceed this many GiB."),
])


def _limits(max_params, max_activation_gib):
    from .resolve import Limits

    return Limits(max_params=int(max_params), max_activation_bytes=int(max_activation_gib * 2**30))


checkpoint_options = _option_group([
    click.option("--weights-key", "weights_key", metavar="KEY",
                 help="Entry of a torch checkpoint that holds the weights (e.g. model, or ema.module). "
                      "Default: found automatically (state_dict, model_state_dict, model, module)."),
    click.option("--ema", is_flag=True, help="Take the EMA weights of the checkpoint (model_ema, ema, ...)."),
    click.option("--new-head", is_flag=True,
                 help="Fine-tuning: load every tensor but the classifier, which gets a fresh initialisation "
                      "when its shape differs from the spec's (e.g. ImageNet weights into a 10-class spec)."),
])


def _ckpt(weights_key, ema, new_head) -> dict:
    return {"key": weights_key, "ema": ema, "new_head": new_head}


def _parse_backends(text: str, extra=()) -> list:
    """``convert --to`` text -> targets (``all``: every backend), through the one registry of names."""
    from .backends.legs import parse_names

    try:
        return parse_names(text, tuple(BACKENDS) + tuple(extra), tuple(BACKENDS))[0]
    except ResNetSpecError as exc:
        raise click.BadParameter(str(exc)) from None


# -- loading a spec and its weights, as every command does -------------------------------------------

def _load_spec(spec):
    from .diagnose import spec_warnings
    from .spec import load as load_spec

    loaded = load_spec(spec)
    for w in spec_warnings(loaded):
        click.echo(w, err=True)
    return loaded


def _load(spec, max_params=2e9, max_activation_gib=64.0):
    from .resolve import resolve

    return resolve(_load_spec(spec), _limits(max_params, max_activation_gib))


def _weights(net, weights_file, seed, allow_nonfinite, random_bn=False, ckpt=None):
    import warnings

    from .weightfile import WeightsNote
    from .weights import init_weights

    ckpt = ckpt or {}
    if not weights_file:
        if any(ckpt.values()):
            raise click.UsageError("--weights-key, --ema and --new-head need --weights")
        return init_weights(net, seed=seed, random_bn=random_bn)
    from .checkpoints import load_checkpoint

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weights, notes = load_checkpoint(net, weights_file, allow_nonfinite=allow_nonfinite, seed=seed, **ckpt)
    for n in notes:
        click.echo(f"note: {weights_file}: {n}", err=True)
    for n in caught:  # e.g. bf16/fp16 tensors upcast to float32; frameworks' own warnings are noise here
        if issubclass(n.category, WeightsNote):
            click.echo(f"note: {n.message}", err=True)
    return weights
