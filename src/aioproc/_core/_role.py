"""What this process is to aioproc: the main program, or a worker told where its parent's hub is.

A leaf: it imports nothing of aioproc. The hub (``_hub``) and the client side (``_client``)
read it to decide where the IPC objects created here live; the worker (``_worker``) writes
it when it starts.

Invariants:
- ``in_worker`` is set once, when a pool worker or a ``Process`` child configures itself,
  and never cleared.
- ``_parent_hub`` is set only in a child (by its configuration, by the first large payload
  it receives, or by a fork of a process that hosts a hub), and cleared by nothing: a
  process's objects live in one place for its whole life.
"""

from __future__ import annotations

__all__ = ("in_worker", "parent_hub", "set_default")

in_worker = False  # set in pool workers and Process children

# The address and key of the hub this process's objects live in, when it is not this
# process's own (a child's parent hosts them); None in the main program.
_parent_hub: tuple[str, bytes] | None = None


def set_default(address: str, key: bytes) -> None:
    """Objects created in this process live at ``address`` (a worker learns its parent's)."""
    global _parent_hub
    _parent_hub = (address, key)


def parent_hub() -> tuple[str, bytes] | None:
    """The hub this process's objects live in if another process hosts it, else None."""
    return _parent_hub
