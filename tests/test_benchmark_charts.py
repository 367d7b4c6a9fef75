"""The benchmark tooling of the curves: `python -m benchmarks.charts` and the RSS probe.

The charts are checked on a small synthetic results file (the shape `benchmarks.peers
--json` writes), so no benchmark runs here: one valid SVG per measured figure, naming the
machine, and the same bytes every time for the same JSON. The command runs in its own
interpreter, as users run it (matplotlib also keeps its font files open for the life of the
process, which the leak guard would rightly count against a test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from benchmarks import charts
from benchmarks._curves import MiB, PeakRss

SVG = "{http://www.w3.org/2000/svg}svg"


def _ok(value: float, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "ok", "value": value, "detail": detail or {}}


def _curve(x: str, points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"x": x, "points": points, "not_measured_beyond": None, **extra}


def _document() -> dict[str, Any]:
    """A results file with a bar figure, every curve, and a figure nobody measured."""

    def payload(gbps: float) -> dict[str, Any]:
        return _curve(
            "bytes",
            [
                {
                    "bytes": size,
                    "round_trip_us": 100 + size / (gbps * 1e3),
                    "gb_per_s": gbps * size / (size + 1e5),
                    "memcpy_gb_per_s": 10.0,
                }
                for size in (1024, 64 * 1024, 4 * MiB, 64 * MiB)
            ],
        )

    def gather(rate: float, beyond: int | None) -> dict[str, Any]:
        counts = [100, 1_000, 10_000] if beyond is None else [100, 1_000]
        detail = _curve(
            "tasks",
            [
                {
                    "tasks": n,
                    "tasks_per_s": rate,
                    "loop_floor_tasks_per_s": 4 * rate,
                    "rss_per_task_bytes": 900.0,
                }
                for n in counts
            ],
        )
        detail["not_measured_beyond"] = beyond
        return detail

    def workers(rate: float) -> dict[str, Any]:
        return _curve(
            "workers",
            [
                {"workers": w, "tasks_per_s": rate * min(w, 2), "speedup": 0.9 * min(w, 2)}
                for w in (1, 2, 3, 4)
            ],
            cores=2,
        )

    def stream(rate: float, growth: int) -> dict[str, Any]:
        return _curve(
            "items",
            [
                {"items": n, "items_per_s": rate, "rss_growth_bytes": growth * n // 20_000}
                for n in (20_000, 200_000)
            ],
        )

    return {
        "machine": {
            "cpu_count": 2,
            "cpu_model": "Test CPU 9000",
            "implementation": "CPython",
            "python": "3.11.7",
        },
        "settings": {"workers": 2, "quick": True},
        "figures": {
            "latency": {"unit": "µs", "better": "lower", "about": "round trip"},
            "queue": {"unit": "msgs/s", "better": "higher", "about": "nobody measured it"},
            "curves.workers": {"unit": "x", "better": "higher", "about": "workers"},
            "curves.payload": {"unit": "GB/s", "better": "higher", "about": "payload"},
            "curves.gather": {"unit": "tasks/s", "better": "higher", "about": "gather"},
            "curves.stream": {"unit": "items/s", "better": "higher", "about": "stream"},
        },
        "implementations": {
            "aioproc": {
                "installed": True,
                "figures": {
                    "latency": _ok(100),
                    "queue": {"status": "error", "error": "boom"},
                    "curves.workers": _ok(1.8, workers(900)),
                    "curves.payload": _ok(1.0, payload(1.0)),
                    "curves.gather": _ok(5e4, gather(5e4, None)),
                    "curves.stream": _ok(5e5, stream(5e5, 0)),
                },
            },
            "mp_pool": {
                "installed": True,
                "figures": {
                    "latency": _ok(200),
                    "curves.workers": _ok(1.5, workers(700)),
                    "curves.payload": _ok(0.4, payload(0.4)),
                    "curves.gather": _ok(1e4, gather(1e4, 1_000)),
                    "curves.stream": _ok(4e5, stream(4e5, 2**20)),
                },
            },
            "aiomultiprocess": {"installed": False, "error": "not importable"},
        },
    }


ROOT = Path(__file__).resolve().parents[1]


def _charts(results: Path, outdir: Path) -> list[Path]:
    """Run `python -m benchmarks.charts RESULTS OUTDIR`; the files it says it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.charts", str(results), str(outdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.splitlines()]


def _svg_text(path: Path) -> str:
    root = ET.parse(path).getroot()
    assert root.tag == SVG
    return " ".join(t for t in root.itertext())


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The synthetic results file, and the charts drawn from it once."""
    tmp = tmp_path_factory.mktemp("charts")
    results = tmp / "results.json"
    results.write_text(json.dumps(_document()), encoding="utf-8")
    return results, _charts(results, tmp / "first")


def test_one_valid_svg_per_measured_figure_naming_the_machine(
    drawn: tuple[Path, list[Path]],
) -> None:
    _, written = drawn

    assert sorted(p.name for p in written) == sorted(p.name for p in written[0].parent.iterdir())
    assert sorted(p.name for p in written) == [
        "curves.gather.svg",
        "curves.payload.svg",
        "curves.stream.svg",
        "curves.workers.svg",
        "latency.svg",
    ]  # no chart for "queue": no implementation measured it
    for path in written:
        text = _svg_text(path)
        assert "2 CPUs (Test CPU 9000), CPython 3.11.7" in text
        assert "aioproc" in text and "mp_pool" in text
    gather = next(p for p in written if p.name == "curves.gather.svg")
    assert "not measured beyond" in _svg_text(gather)


def test_the_same_json_gives_the_same_bytes(drawn: tuple[Path, list[Path]], tmp_path: Path) -> None:
    results, first = drawn

    second = _charts(results, tmp_path / "again")

    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_without_matplotlib_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_document()), encoding="utf-8")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed

    assert charts.main([str(results), str(tmp_path / "out")]) == 2

    assert '".[charts]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_peak_rss_sees_a_spike_and_resets_between_windows() -> None:
    with PeakRss() as spike:
        ballast = b"\x01" * (64 * MiB)  # written, so every page is resident
    del ballast
    with PeakRss() as quiet:
        pass

    assert spike.growth_bytes >= 60 * MiB
    assert quiet.growth_bytes < 16 * MiB  # the first window's peak does not carry over
