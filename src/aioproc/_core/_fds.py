"""The fds this process holds for aioproc channels, closed in every forked child.

The dispatcher's pipe ends, the hub's listener and connections and the fork server's socket
are registered here. A child forked from this process (a ``fork`` worker, or a fork the
user's own code makes) closes them all at once: an inherited copy of a task pipe would hide
the parent's death from a worker, and an inherited hub connection would keep the hub from
seeing a client go.

Nothing here imports another aioproc module: the hub and the spawner both register fds.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ("close_parent_fds", "parent_fds", "register_fds", "unregister_fds")

# Invariant: an fd is registered while aioproc holds it open, and unregistered before it
# is closed (a number reused by the user's own fds must not be closed in a child).
_parent_fds: set[int] = set()


def register_fds(*fds: int) -> None:
    """Have a forked child close ``fds``."""
    _parent_fds.update(fds)


def unregister_fds(*fds: int) -> None:
    """Forget ``fds`` (before they are closed)."""
    _parent_fds.difference_update(fds)


def parent_fds() -> frozenset[int]:
    """The fds registered now."""
    return frozenset(_parent_fds)


def close_parent_fds(keep: tuple[int, ...] = ()) -> None:
    """Close every registered fd but ``keep``, and forget them all (in a forked child)."""
    for fd in list(_parent_fds):
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    _parent_fds.clear()


os.register_at_fork(after_in_child=close_parent_fds)
