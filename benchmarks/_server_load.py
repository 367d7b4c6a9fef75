"""HTTP load for the server benchmark: wrk with a reporting script, or a labelled fallback.

::

    driver ──spawns──▶ wrk -s report.lua ... URL          (or: python -m benchmarks._server_load)
                         │ prints one line at the end:
                         └─ LOADGEN {"generator": "wrk", "requests": ..., "p99_ms": ...}

Both generators are closed-loop: C connections, each sending its next request when the
previous response arrived (after `delay_ms` when pacing), for D seconds, with keep-alive.

Invariants:
    - Both print exactly one ``LOADGEN <json>`` line with the same keys (`RESULT_KEYS`);
      `parse` reads it and fails loudly without it.
    - ``requests`` counts responses received, whatever their status; ``non2xx`` those with a
      status >= 400 (wrk's ``errors.status``); ``connect``/``read``/``write`` socket errors;
      ``timeout`` requests past the timeout (wrk counts a stuck connection once per 2 s
      check, so it is indicative; the server's own ``pending`` counter is exact).
    - The fallback is only used when wrk is missing and the user asked for it; its figures
      are labelled ``"generator": "python"`` (it competes with the server for the CPU).

Tunables:
    - ``SERVER_BENCH_DELAY_MS`` (environment, read by the Lua script): pacing per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

MARK = "LOADGEN "

DELAY_ENV = "SERVER_BENCH_DELAY_MS"
"""Pacing in ms per request, read by the Lua script from the environment."""

RESULT_KEYS = (
    "generator",
    "duration_s",
    "requests",
    "non2xx",
    "connect",
    "read",
    "write",
    "timeout",
    "p50_ms",
    "p99_ms",
    "max_ms",
)

WRK_SCRIPT = """\
-- Written by benchmarks/_server_load.py: pacing from the environment, one JSON line at the end.
local pace = tonumber(os.getenv("@DELAY_ENV@") or "0")
if pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@MARK@{"generator":"wrk","duration_s":%.6f,"requests":%d,"non2xx":%d,"connect":%d,'
      .. '"read":%d,"write":%d,"timeout":%d,"p50_ms":%.4f,"p99_ms":%.4f,"max_ms":%.4f}\\n',
    summary.duration / 1e6, summary.requests, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
""".replace("@DELAY_ENV@", DELAY_ENV).replace("@MARK@", MARK)


def wrk_command(
    wrk: str, script: str, url: str, *, connections: int, duration_s: float, timeout_s: float
) -> list[str]:
    """The wrk command line for one load (one thread: the server needs the other CPU)."""
    return [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        script,
        url,
    ]


def python_command(
    python: str, url: str, *, connections: int, duration_s: float, timeout_s: float, delay_ms: float
) -> list[str]:
    """The fallback generator's command line (same meaning as `wrk_command`'s)."""
    return [
        python,
        "-m",
        "benchmarks._server_load",
        url,
        f"--connections={connections}",
        f"--duration={duration_s}",
        f"--timeout={timeout_s}",
        f"--delay-ms={delay_ms}",
    ]


def parse(output: str) -> dict[str, Any]:
    """The generator's result from its standard output.

    Raises:
        RuntimeError: No result line (the generator failed); the output is in the message.
    """
    for line in output.splitlines():
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK) :])
            return result
    raise RuntimeError(f"the load generator printed no result:\n{output[-2000:]}")


# -- the fallback generator -----------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.counts = dict.fromkeys(
            ("requests", "non2xx", "connect", "read", "write", "timeout"), 0
        )


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(
    host: str,
    port: int,
    request: bytes,
    stop: float,
    timeout_s: float,
    delay_s: float,
    tally: _Tally,
) -> None:
    clock = time.perf_counter
    while clock() < stop:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            tally.counts["connect"] += 1
            await asyncio.sleep(0.01)  # a refused connect returns at once: do not spin
            continue
        try:
            while clock() < stop:
                if delay_s:
                    await asyncio.sleep(delay_s)
                t0 = clock()
                try:
                    writer.write(request)
                    await writer.drain()
                except OSError:
                    tally.counts["write"] += 1
                    break
                try:
                    status = await asyncio.wait_for(_read_response(reader), timeout_s)
                except TimeoutError:
                    tally.counts["timeout"] += 1
                    break
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    tally.counts["read"] += 1
                    break
                tally.latencies.append(clock() - t0)
                tally.counts["requests"] += 1
                if status >= 400:
                    tally.counts["non2xx"] += 1
        finally:
            writer.close()


async def _generate(
    url: str, connections: int, duration_s: float, timeout_s: float, delay_ms: float
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    tally = _Tally()
    t0 = time.perf_counter()
    stop = t0 + duration_s
    tasks = [
        asyncio.create_task(
            _connection(host, port, request, stop, timeout_s, delay_ms / 1e3, tally)
        )
        for _ in range(connections)
    ]
    # Requests still in flight at the end are abandoned, as wrk does.
    await asyncio.wait(tasks, timeout=duration_s + timeout_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    latencies = sorted(tally.latencies)

    def percentile(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e3

    return {
        "generator": "python",
        "duration_s": min(elapsed, duration_s),
        **tally.counts,
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "max_ms": latencies[-1] * 1e3 if latencies else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    """Run the fallback generator and print its ``LOADGEN`` line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._server_load")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = asyncio.run(
        _generate(args.url, args.connections, args.duration, args.timeout, args.delay_ms)
    )
    print(MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
