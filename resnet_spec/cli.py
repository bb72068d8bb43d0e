"""The ``resnet-spec`` command line.

Exit codes: 0 success, 1 a problem with the user's input (spec, weights, an output that exists) or a
failed parity check, 2 a usage error. A user's mistake prints one located message, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import click

from . import __version__
from .backends import CONVERT_ONLY, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .cli_options import (_SEED, _ckpt, _limits, _load, _not_empty, _parse_backends, _weights,
                          checkpoint_options, limit_options)
from .cli_tools import COMMANDS
from .errors import ResNetSpecError


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, schedulers, container stops), handled like Ctrl-C: workers are stopped,
    temporaries removed, exit 143."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


class _Group(click.Group):
    """Turns every :class:`ResNetSpecError` into ``error: message`` and exit code 1, an OS error into one
    line naming the path and its cause, and Ctrl-C / SIGTERM into exit 130 / 143 after cleaning up."""

    def invoke(self, ctx):
        from .fileio import describe_os_error

        main_thread = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        try:
            return super().invoke(ctx)
        except ResNetSpecError as exc:
            click.echo(f"error: {exc}" if not _is_located(exc) else str(exc), err=True)
            ctx.exit(1)
        except ModuleNotFoundError as exc:  # an optional library that no earlier check (extras.require) caught
            from .extras import missing_module_message

            message = missing_module_message(exc, ctx.invoked_subcommand or "resnet-spec")
            if message is None:
                raise
            click.echo(f"error: {message}", err=True)
            ctx.exit(1)
        except OSError as exc:  # a file system refusal that no earlier check caught
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            term = isinstance(exc, Terminated)
            click.echo(f"{'terminated' if term else 'interrupted'}; no partial output was left behind", err=True)
            ctx.exit(143 if term else 130)
        finally:
            if main_thread and old is not None:  # None: a handler set outside Python, left as it was
                signal.signal(signal.SIGTERM, old)


def _is_located(exc) -> bool:
    from .errors import SpecError

    return isinstance(exc, SpecError)


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
@click.option("--max-errors", type=click.IntRange(1), default=20, show_default=True,
              help="Report at most this many errors per spec.")
@limit_options
def validate(specs, max_errors, max_params, max_activation_gib):
    """Check specs against the schema and the semantic rules; report every error, in file order."""
    from .diagnose import all_errors, spec_warnings

    failed = 0
    for s in specs:
        errors, spec = all_errors(s, _limits(max_params, max_activation_gib))
        if spec is not None:
            for w in spec_warnings(spec):
                click.echo(w, err=True)
        if not errors:
            from .resolve import resolve

            net = resolve(spec, _limits(max_params, max_activation_gib))
            click.echo(f"{s}: ok ({net.name}, {net.params:,} params)")
            continue
        failed += 1
        for exc in errors[:max_errors]:
            click.echo(str(exc) if _is_located(exc) else f"{s}: {exc}", err=True)
        if len(errors) > max_errors:
            click.echo(f"{s}: ... and {len(errors) - max_errors} more errors (raise --max-errors)", err=True)
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


@main.command()
@click.argument("spec")
@click.option("--to", "targets", default="all", show_default=True,
              help="Comma-separated: torch, onnx, tensorflow, tflite, or 'all' (the first three).")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=_not_empty,
              help="safetensors file, a torchvision/timm state_dict (.pth/.pt), or any source 'import' reads "
                   "(.onnx, .keras, keras:NAME[=FILE.weights.h5], torchvision:NAME, timm:NAME), checked "
                   "against SPEC layer by layer. Default: fresh He init.")
@click.option("-o", "--out", "out_dir", default=None, callback=_not_empty,
              help="Output folder (default: out/<name>).")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of the fresh weights.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=DEFAULT_OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET}.")
@click.option("--no-fold-bn", is_flag=True, help="ONNX: keep BatchNormalization nodes.")
@click.option("--batch", type=click.IntRange(1), default=None, help="ONNX: fixed batch size (default: dynamic 'batch').")
@click.option("--data-format", type=click.Choice(["channels_last", "channels_first"]), default="channels_last",
              show_default=True, help="TensorFlow: input layout.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="ONNX: weights and compute dtype (float16: BN folded in float64, then cast).")
@click.option("--io-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="ONNX with --dtype float16: dtype of the input and the logits.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@checkpoint_options
@limit_options
def convert(spec, targets, weights_file, out_dir, seed, opset, no_fold_bn, batch, data_format, dtype, io_dtype,
            force, allow_nonfinite, weights_key, ema, new_head, max_params, max_activation_gib):
    """Write framework models for SPEC (PyTorch .pt2 + standalone .py, ONNX, Keras + SavedModel)."""
    from .backends import OUTPUT_SUFFIXES, output_paths
    from .fileio import check_folder, check_output

    backends = _parse_backends(targets, extra=CONVERT_ONLY)
    _check_dtype_targets(backends, dtype, io_dtype)
    net = _load(spec, max_params, max_activation_gib)
    weights = _weights(net, weights_file, seed, allow_nonfinite, ckpt=_ckpt(weights_key, ema, new_head))
    out_dir = out_dir if out_dir is not None else os.path.join("out", net.name)
    # The canonical weights go beside the models as <name>.safetensors (the torch backend writes that
    # same file for its standalone .py). Every output and the folder are checked up front, so that a
    # refusal costs nothing; the run then writes into a staging folder (resnet_spec.outputs).
    wfinal = os.path.join(out_dir, f"{net.name}.safetensors")
    finals = [wfinal] + [p for b in backends for p in output_paths(b, net.name, out_dir) if p != wfinal]
    dirs = {p for b in backends for p, suf in zip(output_paths(b, net.name, out_dir), OUTPUT_SUFFIXES[b])
            if not suf.startswith(".")}
    check_folder(out_dir)
    for path in finals:
        check_output(path, force, is_dir=path in dirs)
    click.echo(f"{net.name}: {net.params:,} params, {net.macs / 1e9:.3f} GMACs, weights: "
               f"{weights_file or f'fresh He initialisation (seed {seed})'}")
    onnx_opts = {"fold_bn": not no_fold_bn, "batch": batch, "opset": opset}
    onnx_opts.update({"dtype": dtype, "io_dtype": io_dtype} if dtype != "float32" else {})
    options = {"onnx": onnx_opts, "tensorflow": {"data_format": data_format}, "tflite": {"data_format": data_format}}
    _convert_all(net, weights, backends, options, out_dir, finals, force)
    click.echo(f"  weights: {wfinal}")


def _convert_all(net, weights, backends, options, out_dir, finals, force):
    """Each backend converts in its own process (see resnet_spec.isolate) into the staging folder;
    the whole set is moved into ``out_dir`` only when every backend has succeeded."""
    import time

    from . import isolate
    from .inspect_files import weights_metadata
    from .outputs import OutputSet, diagnose_write_failure
    from .weights import save_weights

    needed = 4 * sum(int(a.nbytes) for a in weights.values()) + (64 << 20)
    with OutputSet(out_dir, finals, force) as out:
        for b in backends:
            click.echo(f"  {b}: converting ...", nl=False)
            t0 = time.perf_counter()
            try:
                isolate.run_isolated(_convert_worker, b, net.spec_yaml, weights, out.stage, options.get(b, {}))
            except ResNetSpecError:
                raise
            except Exception as exc:  # a backend's write failed: name the folder and the cause if it is the disk
                err = diagnose_write_failure(b, out, exc, needed)
                if err is None:
                    raise
                raise err from None
            click.echo(f" done in {time.perf_counter() - t0:.1f} s")
        # written last (replacing the torch backend's copy, same tensors) so that it always carries the spec
        try:
            save_weights(weights, out.staged(finals[0]), metadata=weights_metadata(net), force=True)
        except OSError as exc:
            raise diagnose_write_failure("weights", out, exc, needed) from None
        for p in out.commit():
            click.echo(f"    {p}")


def _convert_worker(backend, spec_yaml, weights, out_dir, opts):
    from .backends import prepare

    mod, net = prepare(backend, spec_yaml)
    # the parent already checked these weights (and the user's --allow-nonfinite choice); out_dir is
    # the run's private, empty staging folder
    return mod.convert(net, weights, out_dir, force=False, **opts)


def _check_dtype_targets(backends, dtype, io_dtype) -> None:
    from .backends import FLOAT16_BACKENDS

    if dtype != "float32" and any(b not in FLOAT16_BACKENDS for b in backends):
        raise click.UsageError(f"--dtype {dtype} is supported by: {', '.join(FLOAT16_BACKENDS)} "
                               f"(asked for: {', '.join(backends)}); pass --to {','.join(FLOAT16_BACKENDS)}")
    if io_dtype != "float32" and dtype == "float32":
        raise click.UsageError("--io-dtype float16 needs --dtype float16")


@main.command()
@click.argument("spec")
@click.option("--weights", "weights_file", type=click.Path(dir_okay=False), callback=_not_empty,
              help="Weights as for convert (safetensors, .pth, or any source 'import' reads). Default: "
                   "seeded random with non-trivial BN statistics.")
@click.option("--backends", "targets", default="all", show_default=True,
              help="Comma-separated legs to compare (torch, onnx, keras-tensorflow (alias tensorflow), keras-jax, "
                   "keras-torch) or 'all' (every installed leg).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where every backend runs; one that cannot is reported and the others still run.")
@click.option("--dtype", default="float32", show_default=True,
              type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Precision every backend computes in; the tolerance follows it (1e-4, 2e-2, 1e-1 max rel).")
@click.option("--batch", type=click.IntRange(1, 1024), default=2, show_default=True,
              help="Images in the random input batch (1 to 1024).")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of the input and of random weights.")
@click.option("--layers", is_flag=True, help="Compare every stem/block output, not only the logits.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False),
              help="Also draw the per-tap relative error of every pair to this .svg/.png (implies --layers).")
@click.option("--allow-tf32", is_flag=True, help="Allow TF32 matmuls/convolutions on GPUs (off by default).")
@click.option("--allow-nonfinite", is_flag=True, help="Accept NaN/Inf values in --weights.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), callback=_not_empty,
              help="Also write the report as JSON to this file ('-' for stdout).")
@click.option("--train", is_flag=True, help="Compare one training step (logits, loss, gradients, BN running "
                                            "stats) instead of inference; float32, legs torch and keras-*.")
@click.option("--strict-grads/--no-strict-grads", default=True, show_default=True,
              help="With --train: fail a leg whose gradients leave float32's measured band around PyTorch's "
                   "float64 step (docs/parity.md); --no-strict-grads reports that check without enforcing it.")
@checkpoint_options
@limit_options
def parity(spec, weights_file, targets, device, dtype, batch, seed, layers, plot_file, allow_tf32, allow_nonfinite,
           json_file, train, strict_grads, weights_key, ema, new_head, max_params, max_activation_gib):
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
    weights = _weights(net, weights_file, seed, allow_nonfinite, random_bn=True,
                       ckpt=_ckpt(weights_key, ema, new_head))
    label = weights_file or f"seeded random (seed {seed}), non-trivial BN statistics"
    if json_file and json_file != "-":
        from .fileio import check_file_writable

        check_file_writable(json_file)
    if plot_file:
        if train:
            raise click.BadParameter("--plot draws inference taps; it does not apply with --train",
                                     param_hint="--plot")
        from .diagram import figure_format
        from .extras import require
        from .resolved import check_output_place

        require("parity --plot", "matplotlib")
        figure_format(plot_file)
        check_output_place(plot_file)
        layers = True
    report, fmt = _run_parity(net, weights, backends, skipped, train=train, all_legs=targets == "all",
                              device=device, dtype=dtype, batch=batch, seed=seed, layers=layers,
                              allow_tf32=allow_tf32, label=label, quiet_errors=json_file == "-",
                              strict_grads=strict_grads)
    if json_file == "-":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(fmt(report))
        if json_file:
            from .fileio import write_text

            write_text(json_file, json.dumps(report.to_json(), indent=2) + "\n")
    if plot_file:
        from .parityplot import write_plot

        write_plot(report.to_json(), plot_file)
        click.echo(f"plot: {plot_file}", err=json_file == "-")
    sys.exit(0 if report.passed else 1)


def _run_parity(net, weights, backends, skipped, *, train, all_legs, device, dtype, batch, seed, layers,
                allow_tf32, label, quiet_errors, strict_grads=True):
    """Run inference or training-step parity; return ``(report, formatter)``. Exits 1 with one line
    when fewer than two inference legs could run (nothing to compare)."""
    from . import parity as P

    say = lambda t: click.echo(f"  {t}", err=True)  # noqa: E731
    if train:
        from . import train_parity as T

        if dtype != "float32":
            raise click.BadParameter("--train compares float32 only", param_hint="--dtype")
        if all_legs:  # no training step in ONNX: 'all' means every installed training leg
            backends = [b for b in backends if b != "onnx"]
        report = T.run_train(net, weights, backends=backends, device=device, batch=batch, seed=seed,
                             weights_label=label, skipped=skipped, allow_tf32=allow_tf32, progress=say,
                             strict_grads=strict_grads)
        return report, T.report_text
    report = P.run(net, weights, backends=backends, device=device, dtype=dtype, batch=batch, seed=seed,
                   layers=layers, allow_tf32=allow_tf32, weights_label=label, skipped=skipped, progress=say)
    ran = [n for n, r in report.runs.items() if r.error is None]
    if len(ran) < 2 and not quiet_errors:  # nothing to compare: one line, not an empty table
        why = "; ".join(r.error for r in report.runs.values() if r.error)
        click.echo(f"error: nothing was compared: {len(ran)} of {len(report.runs)} backends could run on "
                   f"{device} ({why})", err=True)
        sys.exit(1)
    return report, P.format_report


for _command in COMMANDS:  # resolve, diff, verify, import, diagram, inspect
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
