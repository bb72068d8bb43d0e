"""``resnet-spec`` commands about specs, needing no framework: list, validate, summary, resolve, diff,
diagram. :data:`COMMANDS` lists them; :mod:`resnet_spec.cli` adds them to its group ``main``."""

from __future__ import annotations

import json
import sys

import click

from .options import limit_options, load_network, load_spec, make_limits


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_cmd(as_json):
    """List the bundled model zoo."""
    from ..spec import load as load_zoo_spec, zoo_names

    rows = []
    for name in zoo_names():
        spec = load_zoo_spec(name)
        ref = spec.data.get("reference") or {}
        rows.append({"name": name, "description": spec.data.get("description", ""),
                     "reference": f"{ref.get('library', '')}:{ref.get('model', '')}" if ref else ""})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['description']}")


@click.command()
@click.argument("specs", nargs=-1, required=True)
@click.option("--max-errors", type=click.IntRange(1), default=20, show_default=True,
              help="Report at most this many errors per spec.")
@limit_options
def validate(specs, max_errors, max_params, max_activation_gib):
    """Check specs against the schema and the semantic rules; report every error, in file order."""
    from ..diagnose import all_errors, spec_warnings
    from ..errors import SpecError

    failed = 0
    for s in specs:
        errors, spec = all_errors(s, make_limits(max_params, max_activation_gib))
        if spec is not None:
            for w in spec_warnings(spec):
                click.echo(w, err=True)
        if not errors:
            from ..resolve import resolve

            net = resolve(spec, make_limits(max_params, max_activation_gib))
            click.echo(f"{s}: ok ({net.name}, {net.params:,} params)")
            continue
        failed += 1
        for exc in errors[:max_errors]:
            click.echo(str(exc) if isinstance(exc, SpecError) else f"{s}: {exc}", err=True)
        if len(errors) > max_errors:
            click.echo(f"{s}: ... and {len(errors) - max_errors} more errors (raise --max-errors)", err=True)
    if failed:
        sys.exit(1)


@click.command()
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@limit_options
def summary(spec, as_json, max_params, max_activation_gib):
    """Per-stage output shapes, parameters and multiply-adds, computed from the IR alone."""
    from ..summary import format_table, summarize

    info = summarize(load_network(spec, make_limits(max_params, max_activation_gib)))
    click.echo(json.dumps(info, indent=2) if as_json else format_table(info))


@click.command("resolve")
@click.argument("spec")
@click.option("-o", "--out", "out_file", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing -o file.")
def resolve_cmd(spec, out_file, force):
    """Print SPEC fully resolved: every default filled in, extends merged, each set value's origin noted."""
    from ..resolved import to_yaml, write_output

    loaded = load_spec(spec)
    text = to_yaml(loaded)
    if out_file:
        from ..fileio import check_writable

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
    from ..resolve import resolve
    from ..resolved import diff, format_diff

    a, b = load_spec(spec_a), load_spec(spec_b)
    na, nb = resolve(a), resolve(b)
    click.echo(format_diff(spec_a, spec_b, diff(a, b), na, nb))


@click.command()
@click.argument("spec")
@click.option("-o", "--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="The picture: .svg, .png or .pdf.")
@click.option("--force", is_flag=True, help="Overwrite an existing picture.")
@limit_options
def diagram(spec, out_file, force, max_params, max_activation_gib):
    """Draw SPEC: stem, stages (block count, type, widths, strides, shortcut) and head."""
    from ..diagram import figure_format, write_diagram
    from ..extras import require
    from ..fileio import check_writable
    from ..resolved import check_output_place

    require("diagram", "matplotlib")
    figure_format(out_file)
    check_writable(out_file, force)
    check_output_place(out_file)
    net = load_network(spec, make_limits(max_params, max_activation_gib))
    write_diagram(net, out_file, force=True)
    click.echo(f"wrote {out_file}")


#: Added to :data:`resnet_spec.cli.main` by that package.
COMMANDS = (list_cmd, validate, summary, resolve_cmd, diff_cmd, diagram)
