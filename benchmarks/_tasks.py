"""The work the benchmarks send to workers.

Everything here is module-level so it pickles by reference, and the module imports nothing
heavy, because every worker of every implementation imports it.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_FRAME = struct.Struct("<q")


def double(x: int) -> int:
    """The tiny task: `x * 2`."""
    return x * 2


def burn(n: int) -> int:
    """CPU-bound pure-Python loop; the cost grows linearly with `n`."""
    return sum(i * i for i in range(n))


def length(data: bytes) -> int:
    """Return the size of a payload (the payload figure sends it, gets this back)."""
    return len(data)


async def adouble(x: int) -> int:
    """`double` for implementations that only run coroutine functions."""
    return x * 2


async def aburn(n: int) -> int:
    """`burn` for implementations that only run coroutine functions."""
    return sum(i * i for i in range(n))


async def alength(data: bytes) -> int:
    """`length` for implementations that only run coroutine functions."""
    return len(data)


ASYNC_TWINS: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {
    double: adouble,
    burn: aburn,
    length: alength,
}
"""Sync task → the same work as an `async def`, for aiomultiprocess."""


def pipe_echo(rfd: int, wfd: int) -> None:
    """The raw-pipe latency floor's child: read an int, write back `x * 2`, until EOF.

    Args:
        rfd: Pipe end to read 8-byte requests from.
        wfd: Pipe end to write 8-byte replies to.
    """
    size = _FRAME.size
    while True:
        request = os.read(rfd, size)
        if len(request) < size:  # EOF: the parent closed its end (8 bytes on a pipe are atomic)
            return
        (x,) = _FRAME.unpack(request)
        os.write(wfd, _FRAME.pack(double(x)))
