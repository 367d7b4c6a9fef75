# pyright: strict
"""What the type checkers infer for user code: the public API's static types.

Not a test module for pytest: ``python -m tests.typecheck`` (run by CI) checks this file
with ``mypy --strict`` and ``pyright`` (strict here: see the comment above). ``assert_type``
fails the check when an inferred type differs, and pyright's strict mode when one is
partially unknown. A line that must be rejected carries ``# type: ignore``, which both
checkers read, and both report one that is not needed, so an accepted mistake fails too
(bare: the error codes differ between the checkers and their versions).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import aioproc


def square(x: int) -> int:
    return x * x


def scale(x: int, factor: float = 1.0) -> float:
    return x * factor


def join(a: str, b: int, c: bytes) -> str:
    return f"{a}{b}{c!r}"


def nothing() -> None:
    return None


async def fetch(url: str) -> bytes:
    return url.encode()


async def label(x: int, name: str) -> str:
    return f"{name}={x}"


def count_up(n: int) -> Iterator[str]:
    for i in range(n):
        yield str(i)


async def count_down(n: int) -> AsyncIterator[int]:
    for i in range(n, 0, -1):
        yield i


async def numbers() -> AsyncIterator[int]:
    yield 1


async def single_tasks(pool: aioproc.ProcessPool) -> None:
    assert_type(await pool.apply(square, 3), int)
    assert_type(await pool.apply(fetch, "x"), bytes)
    assert_type(await pool.apply(scale, 3, factor=2.0), float)
    assert_type(await pool.apply(nothing), None)
    assert_type(await pool.apply(lambda: "x"), str)
    assert_type(pool.submit(fetch, "x"), aioproc.Task[bytes])
    assert_type(pool.submit(square, 3), aioproc.Task[int])
    assert_type(await pool.submit(fetch, "x"), bytes)
    assert_type(pool.submit(square, 3).result(), int)
    assert_type(await aioproc.run(fetch, "x"), bytes)
    assert_type(await aioproc.run(square, 3), int)

    # The arguments are checked against the function's parameters.
    await pool.apply(fetch, 3)  # type: ignore
    await pool.apply(square)  # type: ignore
    pool.submit(scale, 3, factor="2")  # type: ignore
    await aioproc.run(square, "3")  # type: ignore


async def many_tasks(pool: aioproc.ProcessPool) -> None:
    assert_type(await pool.map(square, range(3)), list[int])
    assert_type(await pool.map(fetch, ["a", "b"]), list[bytes])
    assert_type(await pool.map(square, numbers()), list[int])
    assert_type(await pool.map(scale, [1, 2], [0.5, 2.0]), list[float])
    assert_type(await pool.map(label, numbers(), ["a"]), list[str])
    assert_type(await pool.map(join, ["a"], [1], [b"c"], chunksize=2), list[str])
    assert_type(await pool.map(str, [1, 2]), list[str])
    assert_type(await pool.starmap(scale, [(1, 2.0)]), list[float])
    assert_type(await pool.starmap(label, [(1, "a")]), list[str])

    async for y in pool.imap(fetch, ["a"]):
        assert_type(y, bytes)
    async for z in pool.imap(scale, range(3), [1.0, 2.0, 3.0]):
        assert_type(z, float)
    async for w in pool.imap_unordered(square, numbers(), chunksize=1):
        assert_type(w, int)
    async for s in pool.imap_unordered(label, range(3), ["a", "b", "c"]):
        assert_type(s, str)
    assert_type(pool.imap(square, [1]), aioproc.MapIterator[int])

    async for text in pool.stream(count_up, 3):
        assert_type(text, str)
    async for number in pool.stream(count_down, 3):
        assert_type(number, int)
    assert_type(pool.stream(count_up, 3), aioproc.StreamIterator[str])

    # Items must fit the function's parameters, one iterable per parameter.
    await pool.map(square, ["a"])  # type: ignore
    await pool.map(scale, [1], ["x"])  # type: ignore
    await pool.map(join, ["a"], [1])  # type: ignore
    pool.imap(fetch, [1])  # type: ignore
    pool.stream(count_up, "3")  # type: ignore
    pool.stream(square, 3)  # type: ignore


async def processes() -> None:
    p = aioproc.Process(target=square, args=(3,))
    assert_type(p, aioproc.Process[int])
    assert_type(await p.result(), int)
    q = aioproc.Process(target=fetch, args=("x",), name="fetcher")
    assert_type(await q.result(), bytes)
    async with aioproc.Process(target=nothing) as r:
        assert_type(r, aioproc.Process[None])
