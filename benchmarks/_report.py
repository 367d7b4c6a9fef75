"""Turning the children's reports into the table, the comparison and the machine header."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

from ._figures import FIGURES, Figure
from ._impls import FLOORS, IMPLS, SUBJECT
from ._proc import parallel_speedup, pipe_round_trip_us


def machine(workers: int) -> dict[str, Any]:
    """What the numbers were measured on, with two probes of what the machine allows.

    Args:
        workers: How many CPUs the parallel speed-up probe should use.
    """
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    wakeup: dict[str, float] | None = None
    speedup: float | None = None
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) >= 2:
        wakeup = {
            "same_cpu": pipe_round_trip_us((usable[0], usable[0])),
            "cross_cpu": pipe_round_trip_us((usable[0], usable[1])),
        }
        speedup = parallel_speedup(usable[:workers])
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(usable) or None,
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "pipe_round_trip_us": wakeup,
        "bare_parallel_speedup": speedup,
    }


def format_value(value: float, unit: str) -> str:
    """A value for a table cell, in the figure's unit (which the row label names)."""
    if unit in ("tasks/s", "msgs/s"):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if unit == "GB/s":
        return f"{value:.3f}"
    if unit in ("x", "% core"):
        return f"{value:.2f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


@dataclass(frozen=True)
class Comparison:
    """aioproc against the best peer on one figure."""

    best_peer: str
    best_value: float
    subject_value: float
    advantage: float
    """How many times better aioproc is (> 1: better), the figure's direction applied."""
    bound: bool = False
    """A value was within the figure's noise level, so `advantage` is only a bound."""
    negligible: bool = False
    """Both values were within the noise level: no difference can be told."""
    context: str | None = None
    """What differs between the two besides the library (e.g. the start methods)."""

    def describe(self) -> str:
        """E.g. "2.31x better (anyio)" or "1.45x worse (mp_pool)"."""
        peer = f"{self.best_peer}; {self.context}" if self.context else self.best_peer
        if self.negligible:
            return f"both ~0 ({peer})"
        at_least = ">= " if self.bound else ""
        if self.advantage >= 1:
            return f"{at_least}{self.advantage:.2f}x better ({peer})"
        return f"{at_least}{1 / self.advantage:.2f}x worse ({peer})"


def _result(reports: dict[str, dict[str, Any]], impl: str, figure: str) -> dict[str, Any] | None:
    result = reports.get(impl, {}).get("figures", {}).get(figure)
    return result if result and result["status"] == "ok" else None


def compare(reports: dict[str, dict[str, Any]], figure: Figure) -> Comparison | None:
    """aioproc vs the best peer on `figure`, or None if either side has no value."""
    subject = _result(reports, SUBJECT, figure.name)
    peers = {
        impl: result
        for impl in reports
        if impl != SUBJECT
        and impl not in FLOORS
        and (result := _result(reports, impl, figure.name)) is not None
    }
    if subject is None or not peers:
        return None
    pick = min if figure.better == "lower" else max
    best = pick(peers, key=lambda impl: peers[impl]["value"])
    ours, theirs = subject["value"], peers[best]["value"]
    # Within the noise level values cannot be told apart: compare the level instead.
    s, b = max(ours, figure.noise), max(theirs, figure.noise)
    if s <= 0 or b <= 0:
        return None
    advantage = b / s if figure.better == "lower" else s / b
    ours_method = subject["detail"].get("start_method")
    theirs_method = peers[best]["detail"].get("start_method")
    context = (
        f"{theirs_method} vs our {ours_method}"
        if ours_method and theirs_method and ours_method != theirs_method
        else None
    )
    return Comparison(
        best_peer=best,
        best_value=theirs,
        subject_value=ours,
        advantage=advantage,
        bound=(ours <= figure.noise) != (theirs <= figure.noise),
        negligible=ours <= figure.noise and theirs <= figure.noise,
        context=context,
    )


def table(figures: list[str], reports: dict[str, dict[str, Any]]) -> str:
    """The figures x implementations table, with errors as numbered footnotes."""
    columns = [impl for impl in IMPLS if impl in reports and reports[impl]["installed"]]
    if SUBJECT in reports and SUBJECT not in columns:
        columns.insert(0, SUBJECT)  # the subject's column stays, its cells show why it failed
    notes: dict[str, int] = {}

    def cell(impl: str, figure: Figure) -> str:
        report = reports[impl]
        if not report["installed"]:
            error = report.get("error", "not importable")
            if figure.runners.get(impl) is None:
                return "n/a"
        else:
            result = report["figures"].get(figure.name, {"status": "n/a"})
            if result["status"] == "ok":
                return format_value(result["value"], figure.unit)
            if result["status"] != "error":
                return str(result["status"])
            error = result["error"]
        key = f"{impl}: {error}"
        number = notes.setdefault(key, len(notes) + 1)
        return f"error [{number}]"

    header = ["figure", *columns, f"{SUBJECT} vs best peer"]
    rows = [header]
    for name in figures:
        figure = FIGURES[name]
        label = f"{name} ({figure.unit}, {figure.better} better)"
        comparison = compare(reports, figure)
        rows.append(
            [
                label,
                *(cell(impl, figure) for impl in columns),
                comparison.describe() if comparison else "—",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            "  ".join(
                text.ljust(width) if i == 0 else text.rjust(width)
                for i, (text, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if j == 0:
            lines.append("  ".join("-" * width for width in widths))
    for key, number in notes.items():
        lines.append(f"[{number}] {key}")
    return "\n".join(lines)
