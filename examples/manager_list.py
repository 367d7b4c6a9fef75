"""Tutorial port: a child appends to a Manager list under a Lock; the parent sees it.

python examples/manager_list.py
Shared List: ['New item']
"""

import asyncio

import aioproc


def worker(lock: aioproc.Lock, shared_list: aioproc.ListProxy) -> None:
    lock.sync.acquire()
    shared_list.sync.append("New item")
    lock.sync.release()


async def main() -> None:
    lock = aioproc.Lock()
    async with aioproc.Manager() as manager:
        shared_list = await manager.list()
        process = aioproc.Process(target=worker, args=(lock, shared_list))
        process.start()
        await process.join()
        print("Shared List:", await shared_list.copy())


if __name__ == "__main__":
    asyncio.run(main())
