"""``resnet-spec`` commands about specs as text and about files: resolve, diff, verify, import, diagram,
inspect. :data:`COMMANDS` lists them; :mod:`resnet_spec.cli` adds them to its group ``main``, whose
exit-code rules they follow (0 success, 1 the user's input, 2 usage). The option helpers are
:mod:`resnet_spec.cli_options`'.
"""

from __future__ import annotations

import json
import sys

import click

from .cli_options import _SEED, _ckpt, _load, _load_spec, _not_empty, _weights, checkpoint_options, limit_options
from .errors import ResNetSpecError


@click.command("resolve")
@click.argument("spec")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing -o file.")
def resolve_cmd(spec, out_file, force):
    """Print SPEC fully resolved: every default filled in, extends merged, each set value's origin noted."""
    from .resolved import to_yaml, write_output

    loaded = _load_spec(spec)
    text = to_yaml(loaded)
    if out_file:
        from .fileio import check_writable

        check_writable(out_file, force)
        write_output(out_file, text.encode("utf-8"))
        click.echo(f"wrote {out_file}", err=True)
    else:
        click.echo(text, nl=False)


@click.command("diff")
@click.argument("spec_a")
@click.argument("spec_b")
def diff_cmd(spec_a, spec_b):
    """What differs between two specs' resolved forms, field by field, and the params/MACs difference."""
    from .resolve import resolve
    from .resolved import diff, format_diff

    a, b = _load_spec(spec_a), _load_spec(spec_b)
    na, nb = resolve(a), resolve(b)
    click.echo(format_diff(spec_a, spec_b, diff(a, b), na, nb))


@click.command("verify")
@click.argument("spec")
@click.argument("files", nargs=-1, required=True)
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=_not_empty,
              help="Weights of the reference, as for convert and parity (safetensors, a torch checkpoint, or "
                   "any source 'import' reads), checked against SPEC. Default: <name>.safetensors beside each file.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="ONNX Runtime's provider for .onnx files (cuda: CUDAExecutionProvider, TF32 off).")
@click.option("--batch", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option("--seed", type=_SEED, default=0, show_default=True,
              help="Seed of the input, and of a --new-head classifier (as convert's --seed).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), callback=_not_empty,
              help="Also write the report as JSON to this file ('-' for stdout).")
@checkpoint_options
@limit_options
def verify_cmd(spec, files, weights_file, device, batch, seed, json_file, weights_key, ema, new_head, max_params,
               max_activation_gib):
    """Run deployable FILES (.onnx, .tflite, .keras, SavedModel, .pt2, .py) in their runtimes; compare
    with SPEC's torch reference (float64) on the same weights. Exit 0 when every run is within
    tolerance, 1 otherwise."""
    from . import verify as V

    net = _load(spec, max_params, max_activation_gib)
    V.require_reference()
    if json_file and json_file != "-":
        from .fileio import check_file_writable

        check_file_writable(json_file)
    for f in files:  # a missing or unknown file is refused before any weights are read
        V.file_kind(f)
    # --weights goes through convert's and parity's loader (checkpoints, import sources, --new-head)
    weights = (_weights(net, weights_file, seed, allow_nonfinite=True, ckpt=_ckpt(weights_key, ema, new_head))
               if weights_file or any((weights_key, ema, new_head)) else None)
    report = V.run(net, files, weights_file=weights_file, weights=weights, batch=batch, seed=seed, device=device,
                   progress=lambda t: click.echo(f"  {t}", err=True))
    if json_file == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(V.format_report(report))
        if json_file:
            from .fileio import write_text

            write_text(json_file, json.dumps(report.to_json(), indent=2) + "\n")
    sys.exit(0 if report.passed else 1)


@click.command("import")
@click.argument("source")
@click.option("-o", "--out", "out_dir", default=".", show_default=True, help="Output folder.")
@click.option("--name", default=None, help="Spec name (default: from SOURCE).")
@click.option("--input-size", default=None, help="H or H,W of the spec's input (default: the source's, else 224).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--keep", is_flag=True, help="Keep the files even when parity fails.")
def import_cmd(source, out_dir, name, input_size, force, keep):
    """Import an existing model: write OUT/NAME.yaml and OUT/NAME.safetensors, then prove them equal.

    SOURCE: an .onnx file, a .keras file, keras:NAME (keras.applications) or keras:NAME=FILE.weights.h5,
    a .pth/.pt/.safetensors state dict with torchvision/timm names, torchvision:NAME or timm:NAME.
    Exit 0 only when the generated PyTorch model reproduces the source within the float32 tolerance.
    """
    from .importers.write import import_to_dir, parse_input_size

    try:
        size = parse_input_size(input_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--input-size") from None
    import_to_dir(source, out_dir, name, size, force, keep, echo=click.echo)


@click.command()
@click.argument("spec")
@click.option("-o", "--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="The picture: .svg, .png or .pdf.")
@click.option("--force", is_flag=True, help="Overwrite an existing picture.")
@limit_options
def diagram(spec, out_file, force, max_params, max_activation_gib):
    """Draw SPEC: stem, stages (block count, type, widths, strides, shortcut) and head."""
    from .diagram import figure_format, write_diagram
    from .extras import require
    from .fileio import check_writable
    from .resolved import check_output_place

    require("diagram", "matplotlib")
    figure_format(out_file)
    check_writable(out_file, force)
    check_output_place(out_file)
    net = _load(spec, max_params, max_activation_gib)
    write_diagram(net, out_file, force=True)
    click.echo(f"wrote {out_file}")


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(path, as_json):
    """Show what a file written by resnet-spec holds: .onnx (spec, opset, inputs/outputs, node counts),
    .safetensors and torch checkpoints (tensors, parameters, embedded spec), .pt2 (embedded spec), .keras
    (layers, inputs/outputs, weights, embedded spec) or .tflite (operators, inputs/outputs, constants,
    embedded spec)."""
    from . import inspect_files as F
    from .fileio import check_regular_file
    from .weightfile import TORCH_SUFFIXES

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
        from .backends.onnx import backend as onnx_backend

        info, fmt = onnx_backend.inspect(path), onnx_backend.format_inspect
    click.echo(json.dumps(info, indent=2) if as_json else fmt(info))


#: Added to :data:`resnet_spec.cli.main` by that module.
COMMANDS = (resolve_cmd, diff_cmd, verify_cmd, import_cmd, diagram, inspect)
