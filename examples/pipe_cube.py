"""Tutorial port: one process sends the cube of 19 through a Pipe, another receives it.

python examples/pipe_cube.py
6859
"""

import asyncio

import aioproc


def cube_sender(conn: aioproc.Connection[int], x: int) -> None:
    conn.sync.send(x * x * x)


def cube_receiver(conn: aioproc.Connection[int]) -> None:
    print(conn.sync.recv())  # printed in the worker, shown by the parent


async def main() -> None:
    x_conn, y_conn = aioproc.Pipe()
    async with aioproc.ProcessPool(2) as pool:
        p1 = pool.submit(cube_sender, x_conn, 19)
        p2 = pool.submit(cube_receiver, y_conn)
        await p1
        await p2


if __name__ == "__main__":
    asyncio.run(main())
