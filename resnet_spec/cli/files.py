"""``resnet-spec`` commands about model files made elsewhere or by ``convert``: import (an existing
model in, proven equal) and inspect (what a file holds). :data:`COMMANDS` lists them."""

from __future__ import annotations

import json

import click

from ..errors import ResNetSpecError


@click.command("import")
@click.argument("source")
@click.option("-o", "--out", "out_dir", default=".", show_default=True, help="Output folder.")
@click.option("--name", default=None, help="Spec name (default: from SOURCE).")
@click.option("--input-size", default=None, help="H or H,W of the spec's input (default: the source's, else 224).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--keep", is_flag=True, help="Keep the files even when parity fails.")
@click.option("--max-onnx-params", "max_params", type=click.IntRange(min=1), default=None,
              help="Parameters an ONNX SOURCE may declare, checked before its weights are read "
                   "(default 268,435,456: 1 GiB of float32).")
def import_cmd(source, out_dir, name, input_size, force, keep, max_params):
    """Import an existing model: write OUT/NAME.yaml and OUT/NAME.safetensors, then prove them equal.

    SOURCE: an .onnx file, a .keras file, keras:NAME (keras.applications) or keras:NAME=FILE.weights.h5,
    a .pth/.pt/.safetensors state dict with torchvision/timm names, torchvision:NAME or timm:NAME.
    Exit 0 only when the generated PyTorch model reproduces the source within the float32 tolerance.
    """
    from ..importers.write import import_to_dir, parse_input_size

    try:
        size = parse_input_size(input_size)
    except ValueError as exc:  # a usage error (exit 2), not an input error
        raise click.BadParameter(str(exc), param_hint="--input-size") from None
    if name is not None and not name.strip():  # never a silent fall-back to the default name
        raise click.BadParameter("an empty name; leave --name out for the name from SOURCE", param_hint="--name")
    import_to_dir(source, out_dir, name, size, force, keep, echo=click.echo, max_params=max_params)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(path, as_json):
    """Show what a file written by resnet-spec holds: .onnx (spec, opset, inputs/outputs, node counts),
    .safetensors and torch checkpoints (tensors, parameters, embedded spec), .pt2 (embedded spec), .keras
    (layers, inputs/outputs, weights, embedded spec) or .tflite (operators, inputs/outputs, constants, dtype:
    float32 or float16 weights, embedded spec)."""
    from .. import inspect_files as F
    from ..fileio import check_regular_file
    from ..weights.files import TORCH_SUFFIXES

    check_regular_file(path, 2**31 - 1)  # protobuf's own limit; larger models keep external data

    readers = {".safetensors": F.inspect_safetensors, ".pt2": F.inspect_pt2, ".keras": F.inspect_keras,
               ".tflite": F.inspect_tflite, **{s: F.inspect_checkpoint for s in TORCH_SUFFIXES}}
    suffix = next((s for s in readers if path.endswith(s)), None)
    if suffix is not None:
        info, fmt = readers[suffix](path), F.format_info
    elif not path.endswith(".onnx"):
        raise ResNetSpecError(f"{path}: inspect reads .onnx, .safetensors, .pt2, .keras, .tflite and torch "
                              "checkpoints (.pth/.pt/.ckpt)")
    else:
        from ..backends.onnx import backend as onnx_backend

        info, fmt = onnx_backend.inspect(path), onnx_backend.format_inspect
    click.echo(json.dumps(info, indent=2) if as_json else fmt(info))


#: Added to :data:`resnet_spec.cli.main` by that package.
COMMANDS = (import_cmd, inspect)
