"""Tutorial port: two named workers print their process ids, which differ from ours.

python examples/process_basics.py
"""

import asyncio
import os

import aioproc


def worker_function(name: str) -> None:
    print(f"Worker {name}: My process ID is {os.getpid()}")


async def main() -> None:
    print(f"Main process ID: {os.getpid()}")
    p1 = aioproc.Process(target=worker_function, args=("Alice",))
    p2 = aioproc.Process(target=worker_function, args=("Bob",))
    p1.start()
    p2.start()
    await p1.join()
    await p2.join()
    print("All worker processes finished.")


if __name__ == "__main__":
    asyncio.run(main())
