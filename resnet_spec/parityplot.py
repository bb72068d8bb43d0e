"""``parity --plot``: per-tap max relative error of every backend pair, drawn with matplotlib.

x: the taps in network order (stem, every block, logits); y: ``max |a-b| / max |a|`` on a log scale;
one line per pair, the tolerance as a dashed line, and each pair's first divergence marked.
An error of exactly 0 is drawn at a floor below the smallest non-zero error (log scales have no 0).
"""

from __future__ import annotations


def draw(report: dict):
    """A matplotlib Figure from :meth:`resnet_spec.parity.Report.to_json` (run with per-tap layers)."""
    from .extras import require

    require("parity --plot", "matplotlib")
    from matplotlib.figure import Figure

    pairs = [p for p in report["pairs"] if p.get("layers")]
    tol = report["tolerance_rel"]
    taps = [r["tap"] for r in pairs[0]["layers"]] if pairs else []
    fig = Figure(figsize=(11, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    values = [r["max_rel"] for p in pairs for r in p["layers"] if 0 < r["max_rel"] < float("inf")]
    floor = min(values + [tol]) / 10 if values else tol / 1e6
    marked = set()
    for p in pairs:
        ys = [min(max(r["max_rel"], floor), 1e6) for r in p["layers"]]
        xs = [taps.index(r["tap"]) for r in p["layers"]]
        line, = ax.plot(xs, ys, marker="o" if len(xs) <= 60 else None, ms=3, lw=1.4,
                        label=f"{p['a']} vs {p['b']} (logits {p['max_rel']:.1e})")
        first = p.get("first_divergence")
        if first:
            i = taps.index(first)
            ax.plot([i], [ys[xs.index(i)]], marker="X", ms=12, color="red", zorder=5)
            if first in marked:
                continue
            marked.add(first)
            ax.annotate(f"first divergence: {first}", (i, ys[xs.index(i)]), xytext=(8, 10),
                        textcoords="offset points", color="red", fontsize=9, weight="bold")
    ax.axhline(tol, ls="--", color="black", lw=1)
    ax.set_yscale("log")
    top = max([tol] + [min(v, 1e6) for v in values]) * 30
    ax.set_ylim(floor / 3, top)
    ax.text(len(taps) - 1 if taps else 0, tol * 1.3, f"tolerance {tol:.0e} ({report['dtype']})", fontsize=8.5,
            va="bottom", ha="right")
    ax.set_ylabel("max |a - b| / max |a|")
    ticks = [i for i, t in enumerate(taps) if len(taps) <= 24 or t in ("stem", "head") or t.endswith(".0")]
    ax.set_xticks(ticks, [taps[i] for i in ticks], rotation=45 if len(ticks) > 8 else 0, ha="right"
                  if len(ticks) > 8 else "center", fontsize=8.5)
    ax.set_xlabel("tap (network order)" if len(taps) <= 24 else
                  "tap (network order; ticks at the stem, each stage's first block and the logits)")
    status = "PASS" if report["passed"] else "FAIL"
    ax.set_title(f"{report['spec']}: parity per tap, {report['dtype']} on {report['device']}, "
                 f"batch {report['batch']}: {status}", fontsize=11)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    if pairs:
        ax.legend(fontsize=8.5, loc="upper left", framealpha=0.9)
    if not pairs:
        ax.text(0.5, 0.5, "no pair ran", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    return fig


def write_plot(report: dict, path: str) -> None:
    from .diagram import figure_format, render
    from .resolved import write_output

    figure_format(path)
    write_output(path, render(draw(report), path))
