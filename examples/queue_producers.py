"""Tutorial port: two producers put squares and cubes on one Queue; the parent collects.

    python examples/queue_producers.py
    Results: [1, 1, 4, 8, 9, 27, 16, 64, 25, 125]   (the order between producers varies)

The producers are plain functions in child processes and use the queue's blocking view
(``queue.sync``); the parent awaits ``queue.get()`` in its event loop.
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
    p1 = aioproc.Process(target=square_numbers, args=(numbers, queue))
    p2 = aioproc.Process(target=cube_numbers, args=(numbers, queue))
    p1.start()
    p2.start()
    await p1.join()
    await p2.join()
    results: list[int] = []
    while not queue.empty():
        results.append(await queue.get())
    print("Results:", results)


if __name__ == "__main__":
    asyncio.run(main())
