"""Charts of a `python -m benchmarks.peers --json` file: one SVG per figure.

Usage (from the project root; matplotlib comes with the `charts` extra)::

    python -m benchmarks.charts RESULTS.json OUTDIR

A figure measured as a single value (latency, map, ...) becomes bars, aioproc beside each
peer; a curve (`curves.*`, whose detail lists its points) becomes lines, one per
implementation, on log axes where the sizes span decades. Every chart names the machine
(CPU count and model), the Python version and the worker count.

The output is deterministic: the same JSON gives byte-identical files (fixed ids through
`svg.hashsalt`, no date in the metadata, text kept as text rather than glyph outlines), so the
SVGs can be committed and regenerated without noise in the diff.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SUBJECT = "aioproc"
MISSING = 'benchmarks.charts needs matplotlib, from the `charts` extra: pip install -e ".[charts]"'

_COLORS = {
    "aioproc": "#d62728",
    "ppe": "#1f77b4",
    "mp_pool": "#2ca02c",
    "anyio": "#9467bd",
    "aiomultiprocess": "#8c564b",
    "mp_ipc": "#17becf",
    "mp_pipe": "#bcbd22",
    "aioprocessing": "#e377c2",
    "raw_pipe": "#7f7f7f",
}
_OTHER = "#555555"

_RC = {
    "svg.hashsalt": "aioproc-benchmarks",  # fixed clip-path and glyph ids
    "svg.fonttype": "none",  # text as <text>: smaller, and no font-dependent paths
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_METADATA = {"Date": None, "Creator": "benchmarks.charts"}


@dataclass(frozen=True)
class Panel:
    """One plot of a curve: which point key goes on the y axis, and how."""

    y: str
    label: str
    scale: float = 1.0
    log_y: bool = False
    floor: str | None = None
    """A key of the subject's points drawn dashed as the machine's floor (or ideal)."""
    floor_label: str = ""


@dataclass(frozen=True)
class CurveChart:
    """How to draw one curve figure."""

    x_label: str
    log_x: bool
    panels: tuple[Panel, ...]
    bars: bool = False
    """Grouped bars per point instead of lines (a curve of two or three points)."""


CURVE_CHARTS: dict[str, CurveChart] = {
    "curves.workers": CurveChart(
        x_label="workers",
        log_x=False,
        panels=(
            Panel("tasks_per_s", "tasks/s (higher is better)"),
            Panel(
                "speedup",
                "speed-up over one process",
                floor="ideal",
                floor_label="ideal: min(workers, cores)",
            ),
        ),
    ),
    "curves.payload": CurveChart(
        x_label="payload size (bytes, each way)",
        log_x=True,
        panels=(
            Panel("round_trip_us", "round trip, µs (lower is better)", log_y=True),
            Panel(
                "gb_per_s",
                "GB/s, out and back (higher is better)",
                floor="memcpy_gb_per_s",
                floor_label="one memcpy, same process",
                log_y=True,
            ),
        ),
    ),
    "curves.gather": CurveChart(
        x_label="tasks gathered at once",
        log_x=True,
        panels=(
            Panel(
                "tasks_per_s",
                "tasks/s (higher is better)",
                floor="loop_floor_tasks_per_s",
                floor_label="the event loop alone (no IPC)",
                log_y=True,
            ),
            Panel("rss_per_task_bytes", "parent RSS per pending task, kB", scale=1e-3),
        ),
    ),
    "curves.stream": CurveChart(
        x_label="items",
        log_x=False,
        bars=True,
        panels=(
            Panel("items_per_s", "items/s, millions (higher is better)", scale=1e-6),
            Panel("rss_growth_bytes", "parent peak RSS growth, MiB", scale=1 / 2**20),
        ),
    ),
}


def _ok(result: dict[str, Any] | None) -> bool:
    return result is not None and result.get("status") == "ok"


def _results(document: dict[str, Any], figure: str) -> dict[str, dict[str, Any]]:
    """Implementation → its ok result for `figure`, in the JSON's (the table's) order."""
    found: dict[str, dict[str, Any]] = {}
    for impl, report in document["implementations"].items():
        result = report.get("figures", {}).get(figure)
        if report.get("installed") and _ok(result):
            found[impl] = result
    return found


def machine_line(document: dict[str, Any]) -> str:
    """E.g. "2 CPUs (AMD EPYC), CPython 3.11.7, 2 workers, full sizes; load average 0.4 at
    the start"."""
    host = document.get("machine", {})
    settings = document.get("settings", {})
    cpus = host.get("cpu_count") or "?"
    model = host.get("cpu_model") or "unknown CPU"
    python = f"{host.get('implementation', 'Python')} {host.get('python', '?')}"
    sizes = "quick sizes" if settings.get("quick") else "full sizes"
    line = f"{cpus} CPUs ({model}), {python}, {settings.get('workers', '?')} workers, {sizes}"
    if load := host.get("load_average"):
        # A shared machine's other work shows in every figure: say how busy it was.
        line += f"; load average {load[0]:.1f} at the start"
    return line


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _size_label(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def _count_label(value: float) -> str:
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _new_figure(document: dict[str, Any], name: str, panels: int) -> Figure:
    from matplotlib.figure import Figure

    meta = document["figures"][name]
    fig = Figure(figsize=(5.2 * panels + 0.8, 4.4), layout="constrained")
    about = textwrap.fill(meta.get("about", ""), width=60 * panels + 20)
    fig.suptitle(f"{name}\n{about}", fontsize=9)
    fig.supxlabel(machine_line(document), fontsize=8, color="#444444")
    return fig


def _bars(document: dict[str, Any], name: str, results: dict[str, dict[str, Any]]) -> Figure:
    meta = document["figures"][name]
    fig = _new_figure(document, name, 1)
    ax = fig.add_subplot()
    impls = list(results)
    values = [results[i]["value"] for i in impls]
    colors = [_COLORS.get(i, _OTHER) for i in impls]
    bars = ax.bar(range(len(impls)), values, color=colors)
    for bar, impl in zip(bars, impls, strict=True):
        if impl == SUBJECT:
            bar.set_edgecolor("black")
            bar.set_linewidth(1.2)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8)
    ax.set_xticks(range(len(impls)), impls, rotation=20)
    ax.set_ylabel(f"{meta['unit']} ({meta['better']} is better)")
    ax.margins(y=0.15)
    return fig


def _points(result: dict[str, Any]) -> list[dict[str, Any]]:
    return list(result["detail"].get("points", []))


def _floor_values(panel: Panel, points: list[dict[str, Any]], x: str, cores: int) -> list[float]:
    if panel.floor == "ideal":
        return [min(p[x], cores) for p in points]
    return [p[panel.floor] * panel.scale for p in points if p.get(panel.floor) is not None]


def _format_x(ax: Axes, chart: CurveChart, x: str, xs: list[float]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    if chart.log_x:
        ax.set_xscale("log", base=2 if x == "bytes" else 10)
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    label = _size_label if x == "bytes" else _count_label
    ax.set_xticks(xs, [label(v) for v in xs], rotation=30 if len(xs) > 6 else 0)
    ax.set_xlabel(chart.x_label)


def _panels(
    document: dict[str, Any], name: str, chart: CurveChart, results: dict[str, dict[str, Any]]
) -> tuple[Figure, Any, str, list[Any]]:
    """A curve's figure with one axes per panel, the key of its x values, and every x
    value any implementation measured, in order."""
    fig = _new_figure(document, name, len(chart.panels))
    axes = fig.subplots(1, len(chart.panels), squeeze=False)[0]
    x = next(iter(results.values()))["detail"]["x"]
    all_x = sorted({p[x] for r in results.values() for p in _points(r)})
    return fig, axes, x, all_x


def _lines(
    document: dict[str, Any], name: str, chart: CurveChart, results: dict[str, dict[str, Any]]
) -> Figure:
    fig, axes, x, all_x = _panels(document, name, chart, results)
    subject = results.get(SUBJECT)
    for ax, panel in zip(axes, chart.panels, strict=True):
        for impl, result in results.items():
            points = [p for p in _points(result) if p.get(panel.y) is not None]
            if not points:
                continue
            ax.plot(
                [p[x] for p in points],
                [p[panel.y] * panel.scale for p in points],
                marker="o",
                markersize=3.5,
                linewidth=2.2 if impl == SUBJECT else 1.3,
                color=_COLORS.get(impl, _OTHER),
                label=impl,
                zorder=3 if impl == SUBJECT else 2,
            )
            beyond = result["detail"].get("not_measured_beyond")
            if beyond is not None:
                last = points[-1]
                ax.annotate(
                    "…",
                    (last[x], last[panel.y] * panel.scale),
                    textcoords="offset points",
                    xytext=(6, 0),
                    color=_COLORS.get(impl, _OTHER),
                )
        if panel.floor and (subject is not None or panel.floor == "ideal"):
            source = subject if subject is not None else next(iter(results.values()))
            points = [p for p in _points(source) if panel.floor == "ideal" or panel.floor in p]
            cores = int(source["detail"].get("cores") or 1)
            ax.plot(
                [p[x] for p in points],
                _floor_values(panel, points, x, cores),
                linestyle="--",
                color="black",
                linewidth=1,
                label=panel.floor_label,
                zorder=1,
            )
        if panel.log_y:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        _format_x(ax, chart, x, all_x)
        ax.set_ylabel(panel.label)
    axes[0].legend(fontsize=7)
    if any(r["detail"].get("not_measured_beyond") is not None for r in results.values()):
        fig.text(0.99, 0.01, "…: not measured beyond (time budget)", ha="right", fontsize=7)
    return fig


def _grouped(
    document: dict[str, Any], name: str, chart: CurveChart, results: dict[str, dict[str, Any]]
) -> Figure:
    fig, axes, x, all_x = _panels(document, name, chart, results)
    impls = list(results)
    width = 0.8 / max(1, len(impls))
    for ax, panel in zip(axes, chart.panels, strict=True):
        for i, impl in enumerate(impls):
            by_x = {p[x]: p for p in _points(results[impl])}
            slots = [j for j, v in enumerate(all_x) if v in by_x]
            values = [by_x[all_x[j]][panel.y] * panel.scale for j in slots]
            bars = ax.bar(
                [j + (i - (len(impls) - 1) / 2) * width for j in slots],
                values,
                width=width,
                color=_COLORS.get(impl, _OTHER),
                label=impl,
                edgecolor="black" if impl == SUBJECT else None,
            )
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7)
        ax.set_xticks(range(len(all_x)), [f"{_count_label(v)} {chart.x_label}" for v in all_x])
        ax.set_ylabel(panel.label)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=7)
    return fig


def draw(document: dict[str, Any], name: str) -> Figure | None:
    """The chart of one figure, or None if no implementation measured it."""
    results = _results(document, name)
    if not results:
        return None
    chart = CURVE_CHARTS.get(name)
    if chart is None and any("points" in r["detail"] for r in results.values()):
        # A curve without a drawing of its own: its first numeric key against its x.
        first = _points(next(iter(results.values())))
        x = next(iter(results.values()))["detail"]["x"]
        y = next(k for k, v in first[0].items() if k != x and isinstance(v, int | float))
        chart = CurveChart(x_label=x, log_x=True, panels=(Panel(y, y),))
    if chart is None:
        return _bars(document, name, results)
    if chart.bars:
        return _grouped(document, name, chart, results)
    return _lines(document, name, chart, results)


def write_charts(document: dict[str, Any], outdir: Path) -> list[Path]:
    """One `<figure>.svg` per figure of `document` that has data; the paths written.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the `charts` extra).
    """
    # Heavy, and optional: only this command needs matplotlib.
    import matplotlib

    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with matplotlib.rc_context(_RC):
        for name in document["figures"]:
            fig = draw(document, name)
            if fig is None:
                continue
            path = outdir / f"{_slug(name)}.svg"
            fig.savefig(path, format="svg", metadata=_METADATA)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.charts RESULTS.json OUTDIR`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.charts",
        description="One SVG chart per figure of a `benchmarks.peers --json` file.",
    )
    parser.add_argument("results", type=Path, help="the JSON written by benchmarks.peers")
    parser.add_argument("outdir", type=Path, help="directory for the SVG files")
    args = parser.parse_args(argv)
    document = json.loads(args.results.read_text(encoding="utf-8"))
    try:
        written = write_charts(document, args.outdir)
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib" and not (exc.name or "").startswith("matplotlib."):
            raise
        print(f"error: {MISSING}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
