"""``resnet-spec convert``: write framework models for a spec, every backend in its own worker process,
into a staging folder moved in whole (:mod:`resnet_spec.outputs`). :data:`COMMANDS` lists it."""

from __future__ import annotations

import os

import click

from ..backends import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .options import SEED, ConvertOptions, checkpoint_options, limit_options, load_network, not_empty


@click.command()
@click.argument("spec")
@click.option("--to", "targets", default="all", show_default=True,
              help="Comma-separated: torch, onnx, tensorflow, tflite; 'all' is the first three, alone or with "
                   "others (all,tflite).")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=not_empty,
              help="safetensors file, a torchvision/timm state_dict (.pth/.pt), or any source 'import' reads "
                   "(.onnx, .keras, keras:NAME[=FILE.weights.h5], torchvision:NAME, timm:NAME), checked "
                   "against SPEC layer by layer. Default: fresh He init.")
@click.option("-o", "--out", "out_dir", default=None, callback=not_empty,
              help="Output folder (default: out/<name>).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the fresh weights.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
@click.option("--no-fold-bn", is_flag=True, help="ONNX: keep BatchNormalization nodes.")
@click.option("--batch", type=click.IntRange(1), default=None, help="ONNX: fixed batch size (default: dynamic 'batch').")
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None,
              help="Input layout of every file written: nchw (N, C, H, W) or nhwc (N, H, W, C), one transpose at "
                   "the graph's entry, recorded in the file's metadata. Default: each target's own (torch, onnx: "
                   "nchw; tensorflow, tflite: nhwc).")
@click.option("--data-format", type=click.Choice(["channels_last", "channels_first"]), default=None,
              help="TensorFlow and TFLite only: their input layout in Keras' words (channels_last = nhwc, the "
                   "default; channels_first = nchw). --layout says it for every target.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "int8"]), default="float32", show_default=True,
              help="ONNX: weights and compute dtype (float16: BN folded in float64, then cast). TFLite: "
                   "float16 weights, dequantized at run time (TFLite's float16 post-training quantization; "
                   "float32 input and output). int8 (ONNX, TFLite): static quantization calibrated on "
                   "--calibration images (int8 weights and activations; float32 input and output).")
@click.option("--int8-activations", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="ONNX with --dtype int8: the activations' type. int8 (S8S8): ONNX Runtime's first choice on "
                   "CPU, exact on every x86 CPU. uint8 (U8S8): about 2x faster on CPUs with VNNI (resnet50: 0.45x "
                   "the float32 latency against 0.89x, docs/deployment.md), but may saturate on x86 CPUs without "
                   "VNNI.")
@click.option("--calibration", type=click.Path(dir_okay=False), callback=not_empty, default=None,
              help="With --dtype int8: a float32 .npy of N images, (N, C, H, W) or (N, H, W, C). Default: "
                   "32 synthetic standard-normal images (real accuracy needs real images).")
@click.option("--io-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="ONNX with --dtype float16: dtype of the input and the logits.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@checkpoint_options
@limit_options
def convert(**args):
    """Write framework models for SPEC (PyTorch .pt2 + standalone .py, ONNX, Keras + SavedModel)."""
    from ..backends import OUTPUT_SUFFIXES, output_paths
    from ..fileio import check_folder, check_output

    opts = ConvertOptions.from_args(args)
    net = load_network(opts.spec, opts.limits)
    if opts.dtype == "int8":  # the calibration file is checked before the weights load or anything runs
        from dataclasses import replace

        from ..calibration import images

        calib, notes = images(opts.calibration, net.input_shape)
        for n in notes:
            click.echo(f"note: {n}", err=True)
        opts = replace(opts, images=calib)
    weights = opts.weights.load(net)
    out_dir = opts.out_dir if opts.out_dir is not None else os.path.join("out", net.name)
    # The canonical weights go beside the models as <name>.safetensors (the torch backend writes that
    # same file for its standalone .py). Every output and the folder are checked up front, so that a
    # refusal costs nothing; the run then writes into a staging folder (resnet_spec.outputs).
    wfinal = os.path.join(out_dir, f"{net.name}.safetensors")
    finals = [wfinal] + [p for b in opts.targets for p in output_paths(b, net.name, out_dir) if p != wfinal]
    dirs = {p for b in opts.targets for p, suf in zip(output_paths(b, net.name, out_dir), OUTPUT_SUFFIXES[b])
            if not suf.startswith(".")}
    check_folder(out_dir)
    for path in finals:
        check_output(path, opts.force, is_dir=path in dirs)
    click.echo(f"{net.name}: {net.params:,} params, {net.macs / 1e9:.3f} GMACs, weights: "
               f"{opts.weights.file or f'fresh He initialisation (seed {opts.weights.seed})'}")
    _convert_all(net, weights, opts, out_dir, finals)
    click.echo(f"  weights: {wfinal}")


def _convert_all(net, weights, opts: ConvertOptions, out_dir: str, finals: list):
    """Each backend converts in its own process (see resnet_spec.isolate) into the staging folder, as
    many at once as cores and memory allow (:func:`_parallel`); the whole set is moved into ``out_dir``
    only when every backend has succeeded (the first failure stops the others)."""
    import time

    from .. import isolate
    from ..inspect_files import weights_metadata
    from ..outputs import OutputSet, diagnose_write_failure
    from ..weights.files import save_weights

    needed = 4 * sum(int(a.nbytes) for a in weights.values()) + (64 << 20)
    targets = list(opts.targets)
    parallel = _parallel(len(targets), needed)
    with OutputSet(out_dir, finals, opts.force) as out:
        calls = [(convert_worker, (b, net.spec_yaml, weights, out.stage, opts.backend_options(b)), f"convert {b}")
                 for b in targets]
        click.echo(f"  converting {', '.join(targets)}" + (f", {parallel} at a time" if parallel > 1 else "") + " ...")
        t0 = time.perf_counter()
        for i, get in isolate.run_concurrently(calls, parallel):
            _finished(targets[i], get, out, needed)
            click.echo(f"  {targets[i]}: done at {time.perf_counter() - t0:.1f} s")
        # written last (replacing the torch backend's copy, same tensors) so that it always carries the spec
        try:
            save_weights(weights, out.staged(finals[0]), metadata=weights_metadata(net), force=True)
        except OSError as exc:  # names the output folder, not the staging file the OS error names
            raise diagnose_write_failure("weights", out, exc, needed) from None
        for p in out.commit():
            click.echo(f"    {p}")


def _finished(backend: str, get, out, needed: int):
    """A backend's worker result; its failure as one line (naming the disk where that is the cause)."""
    from ..errors import ResNetSpecError
    from ..outputs import diagnose_write_failure

    try:
        return get()
    except ResNetSpecError:  # already one line; a low disk must not replace it (diagnose_write_failure)
        raise
    except Exception as exc:  # a backend's write failed: name the folder and the cause if it is the disk
        err = diagnose_write_failure(backend, out, exc, needed)
        if err is None:
            raise
        raise err from None


#: What one conversion worker is taken to need beside its weights: a framework's import and a graph.
WORKER_MEMORY = 2 << 30


def _parallel(n: int, weight_bytes: int) -> int:
    """How many backends convert at once: one per core this process may use, as many as the memory
    the system reports available holds (:data:`WORKER_MEMORY` plus the weights' copies each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    from ..isolate import available_bytes

    avail = available_bytes() or 0  # unknown: one at a time
    return max(1, min(n, cores, avail // (WORKER_MEMORY + weight_bytes)))


def convert_worker(backend, spec_yaml, weights, out_dir, opts):
    """Runs in a worker process: ``backend``'s ``convert`` of the network of ``spec_yaml`` into
    ``out_dir`` (the run's private, empty staging folder) with its keyword options ``opts``."""
    from ..backends import prepare

    mod, net = prepare(backend, spec_yaml)
    # the parent already checked these weights (and the user's --allow-nonfinite choice)
    return mod.convert(net, weights, out_dir, force=False, **opts)


#: Added to :data:`resnet_spec.cli.main` by that package.
COMMANDS = (convert,)
