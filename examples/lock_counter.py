"""Tutorial port: four processes increment a shared counter 1000 times each under a Lock.

    python examples/lock_counter.py
    Counter: 4000

The counter is a file that every increment reads and rewrites: without the lock, the
processes would overwrite each other's updates and the total would fall short.
"""

import asyncio
import tempfile
from pathlib import Path

import aioproc


def increment(lock: aioproc.Lock, path: str, times: int) -> None:
    counter = Path(path)
    for _ in range(times):
        with lock.sync:
            counter.write_text(str(int(counter.read_text()) + 1))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        counter = Path(tmp) / "counter"
        counter.write_text("0")
        lock = aioproc.Lock()
        async with aioproc.ProcessPool(4) as pool:
            await pool.starmap(increment, [(lock, str(counter), 1000)] * 4, chunksize=1)
        print("Counter:", counter.read_text())


if __name__ == "__main__":
    asyncio.run(main())
