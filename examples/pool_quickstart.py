"""aioproc in one screen: CPU-bound work from async code, on every core.

Counts the primes below a bound in slices, first in this process, then across a pool,
while the event loop stays free to do other work (a heartbeat keeps ticking).

    python examples/pool_quickstart.py [--limit N]
"""

import argparse
import asyncio
import os
import time

import aioproc


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi), by trial division: deliberately pure-Python CPU work."""
    count = 0
    for n in range(max(lo, 2), hi):
        if n % 2 == 0:
            count += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


async def heartbeat(ticks: list[float]) -> None:
    while True:
        ticks.append(time.perf_counter())
        await asyncio.sleep(0.05)


async def main(limit: int) -> None:
    step = limit // 32
    slices = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]

    start = time.perf_counter()
    sequential = sum(count_primes(lo, hi) for lo, hi in slices)
    one = time.perf_counter() - start

    ticks: list[float] = []
    beat = asyncio.create_task(heartbeat(ticks))
    start = time.perf_counter()
    async with aioproc.ProcessPool() as pool:
        await pool.apply(count_primes, 0, 10)  # workers up and warm
        ready = time.perf_counter() - start
        start = time.perf_counter()
        parallel = sum(await pool.starmap(count_primes, slices))
        many = time.perf_counter() - start
        workers = pool.statistics().workers
    beat.cancel()

    assert parallel == sequential
    print(f"primes below {limit}: {parallel}")
    print(f"one process:     {one:.2f} s")
    speedup = one / many
    cpus = os.cpu_count()
    print(f"{workers} workers:       {many:.2f} s  (speed-up {speedup:.2f}x on {cpus} CPUs)")
    print(f"pool start-up:   {ready * 1000:.0f} ms")
    print(f"event loop heartbeats while the pool worked: {len(ticks)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().limit))
