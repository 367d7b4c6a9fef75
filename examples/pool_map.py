"""Tutorial port: Pool.map doubling a list of tasks.

python examples/pool_map.py        ->  Results: [2, 4, 6, 8, 10]
"""

import asyncio

import aioproc


def worker(task: int) -> int:
    return task * 2


async def main() -> None:
    tasks = [1, 2, 3, 4, 5]
    async with aioproc.ProcessPool() as pool:
        results = await pool.map(worker, tasks)
    print("Results:", results)


if __name__ == "__main__":
    asyncio.run(main())
