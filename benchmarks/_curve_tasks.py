"""The work the curves send to workers that `_tasks` has no function for.

Kept apart from `_tasks` (and as light: workers of every implementation import it) so the
curves stay in modules of their own; `_curves` registers the async twins for aiomultiprocess.
"""

from __future__ import annotations


def echo(data: bytes) -> bytes:
    """Return the payload as received: the payload curve's round trip carries it both ways."""
    return data


async def aecho(data: bytes) -> bytes:
    """`echo` for implementations that only run coroutine functions."""
    return data
