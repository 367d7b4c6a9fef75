"""Tutorial port: five processes start, sleep two seconds each (together), and finish.

python examples/process_sleepers.py
"""

import asyncio
import time

import aioproc


def worker(number: int) -> None:
    print(f"Worker {number} started")
    time.sleep(2)
    print(f"Worker {number} finished")


async def main() -> None:
    processes = [aioproc.Process(target=worker, args=(i,)) for i in range(5)]
    for process in processes:
        process.start()
    for process in processes:
        await process.join()
    print("All workers completed")


if __name__ == "__main__":
    asyncio.run(main())
