"""The ``resnet-spec`` command line.

Exit codes: 0 success, 1 a problem with the user's input (spec, weights, an output that exists) or a
failed parity check, 2 a usage error. A user's mistake prints one located message, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys

import click

from . import __version__
from .backends import BACKENDS, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .errors import ResNetSpecError


class _Group(click.Group):
    """Turns every :class:`ResNetSpecError` into ``error: message`` and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ResNetSpecError as exc:
            click.echo(f"error: {exc}" if not _is_located(exc) else str(exc), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; no partial output was left behind", err=True)
            ctx.exit(130)


def _is_located(exc) -> bool:
    from .errors import SpecError

    return isinstance(exc, SpecError)


def _limits(max_params, max_activation_gib):
    from .resolve import Limits

    return Limits(max_params=int(max_params), max_activation_bytes=int(max_activation_gib * 2**30))


_limit_options = [
    click.option("--max-params", type=float, default=2e9, show_default=True,
                 help="Refuse specs with more parameters than this."),
    click.option("--max-activation-gib", type=float, default=64.0, show_default=True,
                 help="Refuse specs whose activations for one fp32 image exceed this many GiB."),
]


def limit_options(fn):
    for opt in reversed(_limit_options):
        fn = opt(fn)
    return fn


def _load(spec, max_params=2e9, max_activation_gib=64.0):
    from . import load

    return load(spec, _limits(max_params, max_activation_gib))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-spec")
def main():
    """Define a ResNet once in YAML; get PyTorch, TensorFlow/Keras and ONNX models with checked parity.

    SPEC is a zoo name (see 'resnet-spec list') or a path to a YAML file.
    """


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json):
    """List the bundled model zoo."""
    from .spec import load as load_spec, zoo_names

    rows = []
    for name in zoo_names():
        spec = load_spec(name)
        ref = spec.data.get("reference") or {}
        rows.append({"name": name, "description": spec.data.get("description", ""),
                     "reference": f"{ref.get('library', '')}:{ref.get('model', '')}" if ref else ""})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['description']}")


@main.command()
@click.argument("specs", nargs=-1, required=True)
@limit_options
def validate(specs, max_params, max_activation_gib):
    """Check specs against the schema and the semantic rules."""
    failed = 0
    for s in specs:
        try:
            net = _load(s, max_params, max_activation_gib)
            click.echo(f"{s}: ok ({net.name}, {net.params:,} params)")
        except ResNetSpecError as exc:
            failed += 1
            click.echo(str(exc) if _is_located(exc) else f"{s}: {exc}", err=True)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@limit_options
def summary(spec, as_json, max_params, max_activation_gib):
    """Per-stage output shapes, parameters and multiply-adds, computed from the IR alone."""
    from .summary import format_table, summarize

    info = summarize(_load(spec, max_params, max_activation_gib))
    click.echo(json.dumps(info, indent=2) if as_json else format_table(info))


def _weights(net, weights_file, seed, allow_nonfinite, random_bn=False):
    from .weights import init_weights, load_weights

    if weights_file:
        return load_weights(net, weights_file, allow_nonfinite=allow_nonfinite)
    return init_weights(net, seed=seed, random_bn=random_bn)


@main.command()
@click.argument("spec")
@click.option("--to", "targets", default="all", show_default=True,
              help="Comma-separated backends: torch, onnx, tensorflow, or 'all'.")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False),
              help="safetensors file, or a torchvision/timm state_dict (.pth/.pt). Default: fresh He init.")
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default: out/<name>).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fresh weights.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
@click.option("--no-fold-bn", is_flag=True, help="ONNX: keep BatchNormalization nodes.")
@click.option("--batch", type=click.IntRange(1), default=None, help="ONNX: fixed batch size (default: dynamic 'batch').")
@click.option("--data-format", type=click.Choice(["channels_last", "channels_first"]), default="channels_last",
              show_default=True, help="TensorFlow: input layout.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@limit_options
def convert(spec, targets, weights_file, out_dir, seed, opset, no_fold_bn, batch, data_format, force,
            allow_nonfinite, max_params, max_activation_gib):
    """Write framework models for SPEC (PyTorch .pt2 + standalone .py, ONNX, Keras + SavedModel)."""
    import tempfile
    import time

    from . import isolate
    from .backends import output_paths
    from .fileio import check_writable
    from .weights import save_weights

    backends = _parse_backends(targets)
    net = _load(spec, max_params, max_activation_gib)
    weights = _weights(net, weights_file, seed, allow_nonfinite)
    out_dir = out_dir or os.path.join("out", net.name)
    # The canonical weights go beside the models as <name>.safetensors (the torch backend writes that
    # same file for its standalone .py). Every output is checked up front, so that a refusal costs
    # nothing and never leaves one backend's files written and the next one's refused.
    wfinal = os.path.join(out_dir, f"{net.name}.safetensors")
    for path in [wfinal] + [p for b in backends for p in output_paths(b, net.name, out_dir)]:
        check_writable(path, force)
    click.echo(f"{net.name}: {net.params:,} params, {net.macs / 1e9:.3f} GMACs, weights: "
               f"{weights_file or f'fresh He initialisation (seed {seed})'}")
    with tempfile.TemporaryDirectory(prefix="resnet-spec-") as tmp:
        # workers read the checked weights from a private file; nothing in out_dir is touched until
        # a backend has its whole output ready (each write is atomic)
        wtmp = os.path.join(tmp, "weights.safetensors")
        save_weights(weights, wtmp)
        for b in backends:
            opts = {}
            if b == "onnx":
                opts = {"fold_bn": not no_fold_bn, "batch": batch, "opset": opset}
            elif b == "tensorflow":
                opts = {"data_format": data_format}
            click.echo(f"  {b}: converting ...", nl=False)
            t0 = time.perf_counter()
            # Each framework converts in its own process: see resnet_spec.isolate.
            paths = isolate.run_isolated(_convert_worker, b, net.spec_yaml, wtmp, out_dir, force, opts)
            click.echo(f" done in {time.perf_counter() - t0:.1f} s")
            for p in paths:
                click.echo(f"    {p}")
    if "torch" not in backends:
        save_weights(weights, wfinal, metadata={"format": "resnet-spec", "spec": net.name}, force=force)
    click.echo(f"  weights: {wfinal}")


def _convert_worker(backend, spec_yaml, weights_path, out_dir, force, opts):
    from .backends import prepare
    from .weights import load_weights

    mod, net = prepare(backend, spec_yaml)
    # the parent already checked these weights (and the user's --allow-nonfinite choice)
    return mod.convert(net, load_weights(net, weights_path, allow_nonfinite=True), out_dir, force=force, **opts)


def _parse_backends(text: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["all"]:
        return list(BACKENDS)
    aliases = {"tf": "tensorflow", "keras": "tensorflow", "pytorch": "torch"}
    out = []
    for t in items:
        t = aliases.get(t, t)
        if t not in BACKENDS:
            raise click.BadParameter(f"unknown backend {t!r}; choose from {', '.join(BACKENDS)} or all")
        if t not in out:
            out.append(t)
    return out


@main.command()
@click.argument("spec")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False),
              help="safetensors or .pth weights. Default: seeded random with non-trivial BN statistics.")
@click.option("--backends", "targets", default="all", show_default=True,
              help="Comma-separated legs to compare (torch, onnx, keras-tensorflow (alias tensorflow), keras-jax, "
                   "keras-torch) or 'all' (every installed leg).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where every backend runs; one that cannot is reported and the others still run.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--batch", type=click.IntRange(1, 1024), default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the input and of random weights.")
@click.option("--layers", is_flag=True, help="Compare every stem/block output, not only the logits.")
@click.option("--allow-tf32", is_flag=True, help="Allow TF32 matmuls/convolutions on GPUs (off by default).")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False),
              help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--train", is_flag=True, help="Compare one training step (logits, loss, gradients, BN running "
                                            "stats) instead of inference; float32, legs torch and keras-*.")
@limit_options
def parity(spec, weights_file, targets, device, dtype, batch, seed, layers, allow_tf32, allow_nonfinite,
           json_file, train, max_params, max_activation_gib):
    """Run SPEC in every backend on the same weights and input; compare every pair.

    Exit 0 when every requested backend ran and every pair is within the tolerance for --dtype, 1
    otherwise (a backend that cannot run on --device is reported, the others still run, and the check
    fails: it never falls back to another device).
    """
    from . import parity as P

    try:
        backends, skipped = P.parse_legs(targets)
    except ResNetSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--backends") from None
    if len(backends) < 2:
        raise click.BadParameter("name at least two backends to compare", param_hint="--backends")
    net = _load(spec, max_params, max_activation_gib)
    weights = _weights(net, weights_file, seed, allow_nonfinite, random_bn=True)
    label = weights_file or f"seeded random (seed {seed}), non-trivial BN statistics"
    if json_file and json_file != "-":
        from .fileio import check_writable

        check_writable(json_file, force=True)
    say = lambda t: click.echo(f"  {t}", err=True)  # noqa: E731
    if train:
        from . import train_parity as T

        if dtype != "float32":
            raise click.BadParameter("--train compares float32 only", param_hint="--dtype")
        if targets == "all":  # no training step in ONNX: 'all' means every installed training leg
            backends = [b for b in backends if b != "onnx"]
        report = T.run_train(net, weights, backends=backends, device=device, batch=batch, seed=seed,
                             weights_label=label, skipped=skipped, allow_tf32=allow_tf32, progress=say)
        fmt = T.format_train_report
    else:
        report = P.run(net, weights, backends=backends, device=device, dtype=dtype, batch=batch, seed=seed,
                       layers=layers, allow_tf32=allow_tf32, weights_label=label, skipped=skipped, progress=say)
        fmt = P.format_report
    if json_file == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(fmt(report))
        if json_file:
            from .fileio import write_text

            write_text(json_file, json.dumps(report.to_json(), indent=2) + "\n")
    sys.exit(0 if report.passed else 1)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(path, as_json):
    """Show the spec, opset, inputs/outputs and node counts of an ONNX file written by resnet-spec."""
    from .backends import onnx_backend

    info = onnx_backend.inspect(path)
    click.echo(json.dumps(info, indent=2) if as_json else onnx_backend.format_inspect(info))


if __name__ == "__main__":  # pragma: no cover
    main()
