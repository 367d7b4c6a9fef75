"""Tutorial port: four processes increment a shared counter 1000 times each under a Lock.

    python examples/lock_counter.py
    Counter: 4000

``counter.value += 1`` reads, then writes: without the lock, the processes would overwrite
each other's updates and the total would fall short.
"""

import asyncio

import aioproc


def increment(lock: aioproc.Lock, counter: aioproc.Value, times: int) -> None:
    for _ in range(times):
        with lock.sync:
            counter.value += 1


async def main() -> None:
    lock = aioproc.Lock()
    counter = aioproc.Value("i", 0, lock=False)
    processes = [aioproc.Process(target=increment, args=(lock, counter, 1000)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        await p.join()
    print("Counter:", counter.value)


if __name__ == "__main__":
    asyncio.run(main())
