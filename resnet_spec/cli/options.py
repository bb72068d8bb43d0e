"""Option types, shared option groups, the option objects and the spec and weight loading of the
``resnet-spec`` commands. A bad value is a usage error (exit 2), never a traceback.

A command with many options takes them as ``**args`` and builds one frozen option object from them
(:class:`ConvertOptions`, :class:`ParityOptions`, :class:`VerifyOptions`; the weights options of each
are one :class:`WeightSource`), so that the functions below a command take that object, not a long
list of values. Building an object is where a usage error found from the options alone is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import click

from ..backends import BACKENDS, CONVERT_ONLY
from ..errors import ResNetSpecError


class FiniteFloat(click.ParamType):
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


def not_empty(ctx, param, value):
    if value == "":
        raise click.BadParameter("must not be empty", ctx, param)
    return value


SEED = click.IntRange(0, 2**63 - 1)


def _option_group(options):
    """A decorator applying ``options`` (click.option decorators) in the order listed."""

    def apply(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return apply


limit_options = _option_group([
    click.option("--max-params", type=FiniteFloat(0, 1e15), default=2e9, show_default=True,
                 help="Refuse specs with more parameters than this."),
    click.option("--max-activation-gib", type=FiniteFloat(0, 1e6), default=64.0, show_default=True,
                 help="Refuse specs whose activations for one fp32 image exceed this many GiB."),
])


def make_limits(max_params=2e9, max_activation_gib=64.0):
    """``--max-params`` and ``--max-activation-gib`` -> :class:`resnet_spec.resolve.Limits`."""
    from ..resolve import Limits

    return Limits(max_params=int(max_params), max_activation_bytes=int(max_activation_gib * 2**30))


def limits_of(args: dict):
    """The :class:`resnet_spec.resolve.Limits` of a command's parsed ``limit_options``."""
    return make_limits(args["max_params"], args["max_activation_gib"])


checkpoint_options = _option_group([
    click.option("--weights-key", "weights_key", metavar="KEY",
                 help="Entry of a torch checkpoint that holds the weights (e.g. model, or ema.module). "
                      "Default: found automatically (state_dict, model_state_dict, model, module)."),
    click.option("--ema", is_flag=True, help="Take the EMA weights of the checkpoint (model_ema, ema, ...)."),
    click.option("--new-head", is_flag=True,
                 help="Fine-tuning: load every tensor but the classifier, which gets a fresh initialisation "
                      "when its shape differs from the spec's (e.g. ImageNet weights into a 10-class spec)."),
])


def parse_targets(text: str, extra=()) -> tuple:
    """``convert --to`` text -> targets (``all``: every backend, combined with ``extra`` ones named beside
    it: ``all,tflite``), through the one registry of names."""
    from ..backends.legs import parse_names

    try:
        return tuple(parse_names(text, tuple(BACKENDS) + tuple(extra), tuple(BACKENDS))[0])
    except ResNetSpecError as exc:  # a usage error (exit 2), not an input error
        raise click.BadParameter(str(exc)) from None


# -- loading a spec and its weights, as every command does -------------------------------------------

def load_spec(spec):
    """The loaded spec (:func:`resnet_spec.spec.load`), its warnings printed."""
    from ..diagnose import spec_warnings
    from ..spec import load

    loaded = load(spec)
    for w in spec_warnings(loaded):
        click.echo(w, err=True)
    return loaded


def load_network(spec, limits=None):
    """The resolved network of ``spec`` under ``limits`` (default: the default limits)."""
    from ..resolve import resolve

    return resolve(load_spec(spec), limits if limits is not None else make_limits())


@dataclass(frozen=True)
class WeightSource:
    """``--weights`` and how to read it (``--weights-key``, ``--ema``, ``--new-head``,
    ``--allow-nonfinite``); ``seed`` seeds fresh weights and a new classifier."""

    file: str | None = None
    seed: int = 0
    key: str | None = None
    ema: bool = False
    new_head: bool = False
    allow_nonfinite: bool = False

    @classmethod
    def from_args(cls, args: dict, allow_nonfinite: bool | None = None) -> WeightSource:
        return cls(file=args["weights_file"], seed=args["seed"], key=args["weights_key"], ema=args["ema"],
                   new_head=args["new_head"],
                   allow_nonfinite=args["allow_nonfinite"] if allow_nonfinite is None else allow_nonfinite)

    @property
    def checkpoint_flags(self) -> bool:
        """Whether ``--weights-key``, ``--ema`` or ``--new-head`` was given."""
        return any((self.key, self.ema, self.new_head))

    def load(self, net, random_bn: bool = False) -> dict:
        """The checked weights of ``net``: ``--weights`` through the one loader (notes printed), else
        fresh ones from ``seed``."""
        import warnings

        from ..weights.files import WeightsNote
        from ..weights.loader import LoadOptions, load

        options = LoadOptions(key=self.key, ema=self.ema, new_head=self.new_head, seed=self.seed,
                              allow_nonfinite=self.allow_nonfinite, random_bn=random_bn)
        if not self.file:
            if self.checkpoint_flags:
                raise click.UsageError("--weights-key, --ema and --new-head need --weights")
            return load(net, None, options)[0]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weights, notes = load(net, self.file, options)
        for n in notes:
            click.echo(f"note: {self.file}: {n}", err=True)
        for n in caught:  # e.g. bf16/fp16 tensors upcast to float32; frameworks' own warnings are noise here
            if issubclass(n.category, WeightsNote):
                click.echo(f"note: {n.message}", err=True)
        return weights


# -- the option objects of the commands with many options -------------------------------------------

@dataclass(frozen=True)
class ConvertOptions:
    """``resnet-spec convert``'s options; ``targets`` parsed, the dtype options checked against them."""

    spec: str
    targets: tuple
    weights: WeightSource
    out_dir: str | None
    force: bool
    limits: object  # resolve.Limits
    opset: int
    fold_bn: bool
    batch: int | None
    dtype: str
    io_dtype: str
    layouts: dict  # target -> its input layout ('nchw', 'nhwc'): --layout, --data-format, else its default
    calibration: str | None = None  # --calibration FILE.npy (int8)
    images: object = None  # the int8 calibration images, NCHW float32 (with_images)
    int8_activations: str = "int8"  # --int8-activations (ONNX int8: S8S8 or U8S8)

    @classmethod
    def from_args(cls, args: dict) -> ConvertOptions:
        targets = parse_targets(args["targets"], extra=CONVERT_ONLY)
        _check_dtype_targets(targets, args["dtype"], args["io_dtype"])
        if args.get("calibration") is not None and args["dtype"] != "int8":
            raise click.UsageError("--calibration needs --dtype int8")
        acts = args.get("int8_activations") or "int8"
        if acts != "int8" and (args["dtype"] != "int8" or "onnx" not in targets):
            raise click.UsageError("--int8-activations needs --dtype int8 and the onnx target")
        return cls(calibration=args.get("calibration"), int8_activations=acts, spec=args["spec"], targets=targets,
                   weights=WeightSource.from_args(args), out_dir=args["out_dir"],
                   force=args["force"], limits=limits_of(args), opset=args["opset"], fold_bn=not args["no_fold_bn"],
                   batch=args["batch"], dtype=args["dtype"], io_dtype=args["io_dtype"],
                   layouts=_layouts(targets, args.get("layout"), args.get("data_format")))

    def backend_options(self, backend: str) -> dict:
        """The keyword options of ``backend``'s ``convert``."""
        int8 = {"calibration": self.images} if self.dtype == "int8" else {}
        layout = {"layout": self.layouts[backend]}
        if backend == "onnx":
            opts = {"fold_bn": self.fold_bn, "batch": self.batch, "opset": self.opset, **layout}
            if self.dtype == "int8":
                int8["activations"] = self.int8_activations
            return {**opts, "dtype": self.dtype, "io_dtype": self.io_dtype, **int8} if self.dtype != "float32" else opts
        if backend == "tflite":
            return {"dtype": self.dtype, **int8, **layout}
        return layout


def _layouts(targets, layout: str | None, data_format: str | None) -> dict:
    """Each target's input layout: ``--layout`` for every target; ``--data-format`` (Keras' words) for the
    Keras-made targets; else the target's default (:data:`resnet_spec.backends.DEFAULT_LAYOUTS`)."""
    from ..backends import DEFAULT_LAYOUTS

    keras = {"channels_last": "nhwc", "channels_first": "nchw"}.get(data_format)
    if layout is not None and keras is not None and keras != layout:
        raise click.UsageError(f"--data-format {data_format} is --layout {keras}, not {layout}; pass --layout alone")
    return {t: layout or (keras if t in ("tensorflow", "tflite") else None) or DEFAULT_LAYOUTS[t] for t in targets}


def _check_dtype_targets(targets, dtype, io_dtype) -> None:
    from ..backends import FLOAT16_BACKENDS, FLOAT16_IO_BACKENDS, INT8_BACKENDS

    able = INT8_BACKENDS if dtype == "int8" else FLOAT16_BACKENDS
    if dtype != "float32" and any(b not in able for b in targets):
        raise click.UsageError(f"--dtype {dtype} is supported by: {', '.join(able)} "
                               f"(asked for: {', '.join(targets)}); pass --to "
                               f"{','.join(b for b in targets if b in able) or ','.join(able)}")
    if io_dtype != "float32" and dtype != "float16":
        raise click.UsageError("--io-dtype float16 needs --dtype float16")
    if io_dtype != "float32" and any(b not in FLOAT16_IO_BACKENDS for b in targets):
        raise click.UsageError(f"--io-dtype {io_dtype} is supported by: {', '.join(FLOAT16_IO_BACKENDS)} (a float16 "
                               "TFLite file keeps float32 input and output)")


@dataclass(frozen=True)
class ParityOptions:
    """``resnet-spec parity``'s options; ``--backends`` parsed into the legs to run and ``skipped`` (the
    legs of ``all`` that are not installed); ``all_legs``: onnx came in through ``all`` (``--train`` drops
    it then); ``--plot`` implies ``layers``."""

    spec: str
    limits: object  # resolve.Limits
    weights: WeightSource
    backends: tuple
    skipped: dict
    all_legs: bool
    device: str
    dtype: str
    batch: int | None  # None: 2, or with --train the batch train_batch chooses
    layers: bool
    allow_tf32: bool
    train: bool
    strict_grads: bool
    json_file: str | None
    plot_file: str | None

    @classmethod
    def from_args(cls, args: dict) -> ParityOptions:
        from ..backends.legs import named
        from ..parity import parse_legs

        try:
            backends, skipped = parse_legs(args["targets"])
        except ResNetSpecError as exc:  # a usage error (exit 2), not an input error
            raise click.BadParameter(str(exc), param_hint="--backends") from None
        if len(backends) < 2:
            raise click.BadParameter("name at least two backends to compare", param_hint="--backends")
        given = named(args["targets"])
        return cls(spec=args["spec"], limits=limits_of(args), weights=WeightSource.from_args(args),
                   backends=tuple(backends), skipped=skipped, all_legs="all" in given and "onnx" not in given,
                   device=args["device"], dtype=args["dtype"], batch=args["batch"],
                   layers=args["layers"] or bool(args["plot_file"]), allow_tf32=args["allow_tf32"],
                   train=args["train"], strict_grads=args["strict_grads"], json_file=args["json_file"],
                   plot_file=args["plot_file"])

    @property
    def seed(self) -> int:
        """The seed of the input (and of random weights)."""
        return self.weights.seed

    def leg_options(self, weights_label: str):
        """The library's options of this run: :class:`resnet_spec.train_parity.TrainOptions` with
        ``--train`` (``all``: every installed leg that trains), else :class:`resnet_spec.parity.RunOptions`."""
        common = {"device": self.device, "seed": self.seed, "allow_tf32": self.allow_tf32,
                  "weights_label": weights_label, "skipped": self.skipped}
        if self.batch is not None:  # else the options' own default (TrainOptions: train_batch decides)
            common["batch"] = self.batch
        if self.train:
            from ..train_parity import TrainOptions

            # no training step in ONNX: 'all' means every installed training leg
            legs = tuple(b for b in self.backends if b != "onnx") if self.all_legs else self.backends
            return TrainOptions(backends=legs, strict_grads=self.strict_grads, **common)
        from ..parity import RunOptions

        return RunOptions(backends=self.backends, dtype=self.dtype, layers=self.layers, **common)


@dataclass(frozen=True)
class VerifyOptions:
    """``resnet-spec verify``'s options (``--weights`` may hold NaN/Inf: verify compares files as they are)."""

    spec: str
    files: tuple
    limits: object  # resolve.Limits
    weights: WeightSource
    device: str
    batch: int
    json_file: str | None
    layout: str = "auto"

    @classmethod
    def from_args(cls, args: dict) -> VerifyOptions:
        return cls(spec=args["spec"], files=tuple(args["files"]), limits=limits_of(args),
                   weights=WeightSource.from_args(args, allow_nonfinite=True), device=args["device"],
                   batch=args["batch"], json_file=args["json_file"], layout=args.get("layout", "auto"))

    @property
    def seed(self) -> int:
        """The seed of the input (and of a ``--new-head`` classifier)."""
        return self.weights.seed
