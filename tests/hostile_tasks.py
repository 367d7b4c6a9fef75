"""Functions that tests/test_hostile.py and tests/test_security.py run in child processes.

Each plays a legitimate aioproc child gone bad: it reaches for the connection its process
holds to the parent's hub and writes what no aioproc code would.
"""

from __future__ import annotations

import os
from typing import Any

from aioproc._core import _client, _wire


def _write(client: _client.Client, data: bytes) -> None:
    """Write ``data`` on the connection after what the library queued (an adopt of the
    proxy, posted when it was unpickled), and whole, between two of its own writes."""
    client.flush()
    with client.io_lock:
        client.sock.sendall(data)


def _client_of(proxy: Any) -> _client.Client:
    """This process's authenticated connection to the hub that hosts ``proxy``."""
    client = proxy._endpoint.client
    assert client is not None, "a child reaches the hub through a client connection"
    return client  # type: ignore[no-any-return]


def write_raw(proxy: Any, junk: bytes) -> tuple[int, str, str]:
    """Write ``junk`` on the hub connection, then make an ordinary call.

    Returns:
        this process's pid, and the type name and message of what the call raised (or
        ``"none"`` if it returned).
    """
    _write(_client_of(proxy), junk)
    try:
        proxy.statistics()
    except Exception as exc:
        return os.getpid(), type(exc).__name__, str(exc)
    return os.getpid(), "none", ""


def write_half_a_frame(proxy: Any) -> None:
    """Write the first bytes of a frame that announces 64, then return (and exit)."""
    _write(_client_of(proxy), b"\x40\x00\x00\x00" + _wire.encode(_wire.HubCall(0, 1, 1))[4:])


def put_raw(queue: Any, blobs: list[bytes]) -> None:
    """Put ``blobs`` on ``queue`` as they are, bypassing its codec (a hostile producer)."""
    client = _client_of(queue)
    for blob in blobs:
        client.post(queue._oid, _wire.OP_PUT, blob)
    client.flush()


def put_each(channel: Any, items: list[Any]) -> int:
    """Put (or send, on a Pipe end) every item through the channel's own codec."""
    send = channel.sync.send if hasattr(channel.sync, "send") else channel.sync.put
    for item in items:
        send(item)
    return len(items)


def round_trip(queue: Any, value: Any) -> Any:
    """Put ``value`` and take the next item: one request each way through the hub."""
    queue.sync.put(value)
    return queue.sync.get(timeout=60)


def pid() -> int:
    return os.getpid()


def put_over_a_lowered_limit(queue: Any, limit: int) -> tuple[str, str, Any]:
    """With the frame limit lowered to ``limit``, put an item too big for it, then a small
    one (the channel must be intact), and take the small one back."""
    saved = _wire.MAX_FRAME
    _wire.MAX_FRAME = limit
    try:
        try:
            queue.sync.put(b"x" * (2 * limit))
        except Exception as exc:
            outcome = (type(exc).__name__, str(exc))
        else:
            outcome = ("none", "")
    finally:
        _wire.MAX_FRAME = saved
    queue.sync.put(b"small")
    return (*outcome, queue.sync.get(timeout=60))


def hold(queue: Any, release: Any, *values: Any) -> int:
    """Report this pid on ``queue``, then wait for ``release`` with ``values`` alive."""
    for value in values:
        if hasattr(value, "value"):
            value.value += 1  # map a Value in this process
    queue.sync.put(os.getpid())
    release.sync.wait(60)
    return os.getpid()


def fds() -> dict[int, str]:
    """What every fd of this process refers to."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return found


def echo_large(data: bytes) -> bytes:
    """Return ``data``: a large payload each way, both through shared memory."""
    return data
