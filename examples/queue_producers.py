"""Tutorial port: two producers put squares and cubes on one Queue; the parent collects.

    python examples/queue_producers.py
    Results: [1, 1, 4, 8, 9, 27, 16, 64, 25, 125]   (the order between producers varies)

The producers run as pool tasks and use the queue's blocking view (``q.sync``), as plain
code in a child would; the parent awaits ``q.get()`` in its event loop.
"""

import asyncio

import aioproc


def square_numbers(numbers: range, queue: aioproc.Queue[int]) -> None:
    for num in numbers:
        queue.sync.put(num * num)


def cube_numbers(numbers: range, queue: aioproc.Queue[int]) -> None:
    for num in numbers:
        queue.sync.put(num * num * num)


async def main() -> None:
    numbers = range(1, 6)
    queue: aioproc.Queue[int] = aioproc.Queue()
    async with aioproc.ProcessPool(2) as pool:
        p1 = pool.submit(square_numbers, numbers, queue)
        p2 = pool.submit(cube_numbers, numbers, queue)
        await p1
        await p2
    queue.close()  # both producers are done: the loop below ends when the queue is drained
    results = [x async for x in queue]
    print("Results:", results)


if __name__ == "__main__":
    asyncio.run(main())
