"""Tutorial port: four processes bump a shared Value and double a shared Array, under locks.

python examples/shared_array.py
Number: 4
Array: [16.0, 32.0, 48.0]
"""

import asyncio

import aioproc


def worker(shared_num: aioproc.Value, shared_arr: aioproc.Array) -> None:
    with shared_num.get_lock().sync:
        shared_num.value += 1
    with shared_arr.get_lock().sync:
        for i in range(len(shared_arr)):
            shared_arr[i] *= 2


async def main() -> None:
    num = aioproc.Value("i", 0)
    arr = aioproc.Array("d", [1.0, 2.0, 3.0])
    processes = [aioproc.Process(target=worker, args=(num, arr)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        await p.join()
    print("Number:", num.value)
    print("Array:", arr[:])


if __name__ == "__main__":
    asyncio.run(main())
