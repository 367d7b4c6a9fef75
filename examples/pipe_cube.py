"""Tutorial port: one process sends the cube of 19 through a Pipe, another receives it.

python examples/pipe_cube.py
6859
"""

import asyncio

import aioproc


def cube_sender(conn: aioproc.Connection[int], x: int) -> None:
    conn.sync.send(x * x * x)


def cube_receiver(conn: aioproc.Connection[int]) -> None:
    print(conn.sync.recv())  # printed in the child, shown by the parent


async def main() -> None:
    x_conn, y_conn = aioproc.Pipe()
    p1 = aioproc.Process(target=cube_sender, args=(x_conn, 19))
    p2 = aioproc.Process(target=cube_receiver, args=(y_conn,))
    p1.start()
    p2.start()
    await p1.join()
    await p2.join()


if __name__ == "__main__":
    asyncio.run(main())
