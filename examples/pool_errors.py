"""Tutorial port: apply_async over tasks where one raises.

Each task is submitted on its own; the failing one raises ValueError in the caller while the
others' results still arrive.

    python examples/pool_errors.py
"""

import asyncio

import aioproc


def worker(task: int) -> int:
    if task == 0:
        raise ValueError("Invalid task value")
    return task * 2


async def main() -> None:
    tasks = [1, 2, 0, 4, 5]
    async with aioproc.ProcessPool() as pool:
        submitted = [pool.submit(worker, task) for task in tasks]
        output: list[int] = []
        for task, handle in zip(tasks, submitted, strict=True):
            try:
                output.append(await handle)
            except ValueError as exc:
                print(f"Task {task} failed: {type(exc).__name__}: {exc}")
    print("Output:", output)


if __name__ == "__main__":
    asyncio.run(main())
