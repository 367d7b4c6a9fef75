"""Tutorial port: a child increments a shared Value; the parent reads the result.

python examples/shared_value.py
Value: 1
"""

import asyncio

import aioproc


def worker(value: aioproc.Value) -> None:
    value.value += 1


async def main() -> None:
    value = aioproc.Value("i", 0)
    process = aioproc.Process(target=worker, args=(value,))
    process.start()
    await process.join()
    print("Value:", value.value)


if __name__ == "__main__":
    asyncio.run(main())
