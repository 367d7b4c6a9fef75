"""Tutorial port: Pool(4).map(square, range(10)) with simulated work, then a callback.

python examples/pool_squares.py
Squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
100
"""

import asyncio
import time

import aioproc


def square(x: int) -> int:
    time.sleep(0.5)  # simulate work
    return x * x


async def main() -> None:
    async with aioproc.ProcessPool(4) as pool:
        results = await pool.map(square, range(10))
        print("Squares:", results)
        # The apply_async(square, (10,), callback=print) of multiprocessing:
        task = pool.submit(square, 10)
        task.add_done_callback(lambda t: print(t.result()))
        await task
        await asyncio.sleep(0)  # let the callback run before the pool closes


if __name__ == "__main__":
    asyncio.run(main())
