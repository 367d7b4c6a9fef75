"""aioproc in one screen: CPU-bound work from async code, on every core.

Counts the primes below a bound in slices, first in this process, then across a pool.
A heartbeat task ticks every 50 ms to show whether the event loop is free: it stalls while
this process computes, and keeps ticking while the pool does the work.

    python examples/pool_quickstart.py [--limit N]

prints, on a busy machine with 2 CPUs (times and counts vary):

    primes below 1000000: 78498
    one process:     3.75 s
    2 workers:       1.82 s  (speed-up 2.06x on 2 CPUs)
    pool start-up:   381 ms
    event loop heartbeats, one due every 50 ms:
      while this process computed:     1 of 75 due (the loop was blocked)
      while the pool computed:        36 of 45 due

"due" is how many heartbeats a free event loop gives in that time. Starting the workers
takes some of the loop's time; past that, the loop is free while the pool works.
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


PERIOD = 0.05  # seconds between heartbeats


async def heartbeat(ticks: list[float]) -> None:
    while True:
        ticks.append(time.perf_counter())
        await asyncio.sleep(PERIOD)


def due(seconds: float) -> int:
    """Heartbeats a free event loop gives in ``seconds``: one at once, then one per PERIOD."""
    return 1 + int(seconds / PERIOD)


async def main(limit: int) -> None:
    step = limit // 32
    slices = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]

    ticks: list[float] = []
    beat = asyncio.create_task(heartbeat(ticks))
    await asyncio.sleep(0)  # the first heartbeat

    start = time.perf_counter()
    sequential = sum(count_primes(lo, hi) for lo, hi in slices)  # blocks the event loop
    one = time.perf_counter() - start
    blocked_ticks = len(ticks)

    ticks.clear()
    opened = start = time.perf_counter()
    async with aioproc.ProcessPool() as pool:
        await pool.apply(count_primes, 0, 10)  # workers up and warm
        ready = time.perf_counter() - start
        start = time.perf_counter()
        parallel = sum(await pool.starmap(count_primes, slices))
        many = time.perf_counter() - start
        workers = pool.statistics().workers
    beat.cancel()
    pooled = time.perf_counter() - opened  # start-up, work and close

    assert parallel == sequential
    print(f"primes below {limit}: {parallel}")
    print(f"one process:     {one:.2f} s")
    speedup = one / many
    cpus = os.cpu_count()
    print(f"{workers} workers:       {many:.2f} s  (speed-up {speedup:.2f}x on {cpus} CPUs)")
    print(f"pool start-up:   {ready * 1000:.0f} ms")
    print("event loop heartbeats, one due every 50 ms:")
    blocked = f"{blocked_ticks:5} of {due(one)} due (the loop was blocked)"
    print(f"  while this process computed: {blocked}")
    print(f"  while the pool computed:     {len(ticks):5} of {due(pooled)} due")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Count primes in this process, then in a pool.")
    parser.add_argument("--limit", type=int, default=1_000_000)
    asyncio.run(main(parser.parse_args().limit))
