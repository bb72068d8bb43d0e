"""``resnet-spec`` commands that run models and compare them: parity (every framework on one weight set)
and verify (deployable files in their runtimes). :data:`COMMANDS` lists them; both exit 0 on a pass and
1 on a failed check."""

from __future__ import annotations

import json
import sys

import click

from ..errors import ResNetSpecError
from .options import (SEED, ParityOptions, VerifyOptions, checkpoint_options, limit_options, load_network,
                      not_empty)


def _say(text):
    click.echo(f"  {text}", err=True)


@click.command()
@click.argument("spec")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=not_empty,
              help="Weights as for convert (safetensors, .pth, or any source 'import' reads). Default: "
                   "seeded random with non-trivial BN statistics.")
@click.option("--backends", "targets", default="all", show_default=True,
              help="Comma-separated legs to compare (torch, onnx, keras-tensorflow (alias tensorflow), keras-jax, "
                   "keras-torch) and 'all' (every installed leg), alone or with others (all,keras-jax: a leg "
                   "named explicitly runs, and fails when it cannot).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where every backend runs; one that cannot is reported and the others still run.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Precision every backend computes in; the tolerance follows it (1e-4, 2e-2, 1e-1 max rel).")
@click.option("--batch", type=click.IntRange(1, 1024), default=None,
              help="Images in the random input batch (1 to 1024). Default: 2; with --train, 8 where a "
                   "training-mode BatchNorm normalizes a 1x1 map (SKNet/ResNeSt attention), with a note.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the input and of random weights.")
@click.option("--layers", is_flag=True, help="Compare every stem/block output, not only the logits.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False),
              help="Also draw the per-tap relative error of every pair to this .svg/.png (implies --layers).")
@click.option("--allow-tf32", is_flag=True, help="Allow TF32 matmuls/convolutions on GPUs (off by default).")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), callback=not_empty,
              help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--train", is_flag=True, help="Compare one training step (logits, loss, gradients, BN running "
                                            "stats) instead of inference; float32, legs torch and keras-*.")
@click.option("--strict-grads/--no-strict-grads", default=True, show_default=True,
              help="With --train: fail a leg whose gradients leave float32's measured band around PyTorch's "
                   "float64 step (docs/parity.md); --no-strict-grads reports that check without enforcing it.")
@checkpoint_options
@limit_options
def parity(**args):
    """Run SPEC in every backend on the same weights and input; compare every pair.

    Exit 0 when every requested backend ran and every pair is within the tolerance for --dtype, 1
    otherwise (a backend that cannot run on --device is reported, the others still run, and the check
    fails: it never falls back to another device).
    """
    opts = ParityOptions.from_args(args)
    net = load_network(opts.spec, opts.limits)
    weights = opts.weights.load(net, random_bn=True)
    label = opts.weights.file or f"seeded random (seed {opts.seed}), non-trivial BN statistics"
    _check_json_place(opts.json_file)
    if opts.plot_file:
        if opts.train:
            raise click.BadParameter("--plot draws inference taps; it does not apply with --train",
                                     param_hint="--plot")
        from ..diagram import figure_format
        from ..extras import require
        from ..resolved import check_output_place

        require("parity --plot", "matplotlib")
        figure_format(opts.plot_file)
        check_output_place(opts.plot_file)
    report, fmt = run_parity(net, weights, opts, label)
    _emit(report, fmt, opts.json_file)
    if opts.plot_file:
        from ..parityplot import write_plot

        write_plot(report.to_json(), opts.plot_file)
        click.echo(f"plot: {opts.plot_file}", err=opts.json_file == "-")
    sys.exit(0 if report.passed else 1)


def run_parity(net, weights, opts: ParityOptions, weights_label: str):
    """Run inference or training-step parity; return ``(report, formatter)``. Refuses in one line when
    fewer than two inference legs could run (nothing to compare), unless the report goes to stdout as JSON."""
    if opts.train:
        from .. import train_parity as T

        if opts.dtype != "float32":
            raise click.BadParameter("--train compares float32 only", param_hint="--dtype")
        return T.run_train(net, weights, opts.leg_options(weights_label), progress=_say), T.report_text
    from .. import parity as P

    report = P.run(net, weights, opts.leg_options(weights_label), progress=_say)
    ran = [n for n, r in report.runs.items() if r.error is None]
    if len(ran) < 2 and opts.json_file != "-":  # nothing to compare: one line, not an empty table
        why = "; ".join(r.error for r in report.runs.values() if r.error)
        raise ResNetSpecError(f"nothing was compared: {len(ran)} of {len(report.runs)} backends could run on "
                              f"{opts.device} ({why})")
    return report, P.format_report


def _check_json_place(json_file) -> None:
    """Refuse, before any work, a ``--json`` file that cannot be written."""
    if json_file and json_file != "-":
        from ..fileio import check_file_writable

        check_file_writable(json_file)


def _emit(report, fmt, json_file) -> None:
    """The report: as JSON on stdout (``--json -``), else the table, and the JSON file when asked for."""
    if json_file == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(fmt(report))
    if json_file:
        from ..fileio import write_text

        write_text(json_file, json.dumps(report.to_json(), indent=2) + "\n")


@click.command("verify")
@click.argument("spec")
@click.argument("files", nargs=-1, required=True)
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=not_empty,
              help="Weights of the reference, as for convert and parity (safetensors, a torch checkpoint, or "
                   "any source 'import' reads), checked against SPEC. Default: <name>.safetensors beside each file.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="ONNX Runtime's provider for .onnx files (cuda: CUDAExecutionProvider, TF32 off).")
@click.option("--batch", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Images in the input (1 to 256); a file with a fixed batch is fed pieces of its size, so this "
                   "must be a multiple of it.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the input, and of a --new-head classifier (as convert's --seed).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), callback=not_empty,
              help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
              help="Input layout of FILES made elsewhere: auto decides from each file's input shape (where the "
                   "channels are); nchw or nhwc for a file whose shape does not tell (every dimension dynamic).")
@click.option("--trust-code", is_flag=True,
              help="Run code the FILES carry: a .py source, and a .pt2 or SavedModel as its framework loads "
                   "it, unchecked (pickled objects, graph ops with side effects). Without it a .py is refused "
                   "and a .pt2 or SavedModel must pass verify's allow-lists (README: Security).")
@checkpoint_options
@limit_options
def verify_cmd(**args):
    """Run deployable FILES (.onnx, .tflite, .keras, SavedModel, .pt2, .py) in their runtimes; compare
    with SPEC's torch reference (float64) on the same weights. Each file gets the input as it declares
    it (NCHW or NHWC, its fixed batch, its input's name and dtype); float16 files (float16 ONNX, float16
    TFLite weights) are held to the float16 tolerance. Exit 0 when every run is within tolerance, 1
    otherwise. No code from a file runs without --trust-code."""
    from .. import verify as V

    trust_code = args.pop("trust_code")
    opts = VerifyOptions.from_args(args)
    net = load_network(opts.spec, opts.limits)
    V.require_reference()
    _check_json_place(opts.json_file)
    for f in opts.files:  # a missing, unknown or untrusted file is refused before any weights are read
        V.check_file(net, f, trust_code)
    # --weights goes through convert's and parity's loader (checkpoints, import sources, --new-head)
    weights = opts.weights.load(net) if opts.weights.file or opts.weights.checkpoint_flags else None
    report = V.run(net, opts.files, weights_file=opts.weights.file, weights=weights, batch=opts.batch,
                   seed=opts.seed, device=opts.device, progress=_say, trust_code=trust_code, layout=opts.layout)
    _emit(report, V.format_report, opts.json_file)
    sys.exit(0 if report.passed else 1)


#: Added to :data:`resnet_spec.cli.main` by that package.
COMMANDS = (parity, verify_cmd)
