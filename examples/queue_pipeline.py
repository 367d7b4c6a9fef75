"""Tutorial port: a two-stage pipeline over Queues: cube 1..10, then add 1 to each.

    python examples/queue_pipeline.py
    [2, 9, 28, 65, 126, 217, 344, 513, 730, 1001]

Each stage is a process; closing a queue tells the next stage that nothing more comes.
"""

import asyncio

import aioproc


def cube(numbers: range, out: aioproc.Queue[int]) -> None:
    for n in numbers:
        out.sync.put(n**3)
    out.sync.close()


def add_one(inbox: aioproc.Queue[int], out: aioproc.Queue[int]) -> None:
    for n in inbox.sync:  # ends when the first stage closes its queue
        out.sync.put(n + 1)
    out.sync.close()


async def main() -> None:
    cubes: aioproc.Queue[int] = aioproc.Queue()
    results: aioproc.Queue[int] = aioproc.Queue()
    async with (
        aioproc.Process(target=cube, args=(range(1, 11), cubes)),
        aioproc.Process(target=add_one, args=(cubes, results)),
    ):
        print([n async for n in results])


if __name__ == "__main__":
    asyncio.run(main())
