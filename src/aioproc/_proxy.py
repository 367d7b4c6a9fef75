"""What every IPC object shares: where it lives, how it travels, when it is released."""

from __future__ import annotations

import contextlib
import pickle
import weakref
from typing import Any

from ._core import _client, _wire


def _release(endpoint: _client.Endpoint, oids: tuple[int, ...]) -> None:
    for oid in oids:
        # Broad on purpose, as in a __del__: this runs from the garbage collector, at any
        # point of any thread, or at exit; a failure (a hub gone) has nowhere to go.
        with contextlib.suppress(Exception):
            endpoint.detach(oid)


class Proxy:
    """A handle on an object hosted by the hub (see ``_core/_hub.py``).

    Pickling a proxy sends its address; the process that unpickles it connects to the hub
    (once per process) and holds a handle of its own, released when its proxy is garbage
    collected or closed, or when that process ends.
    """

    _kind = "object"

    _endpoint: _client.Endpoint
    _oid: int
    _extra: dict[str, Any]
    _finalizer: weakref.finalize[Any, Any]

    def _create(self, params: dict[str, Any], extra: dict[str, Any] | None = None) -> list[int]:
        endpoint = _client.default_endpoint()
        oids = endpoint.create(self._kind, params)
        self._bind(endpoint, oids[0], extra or {})
        return oids

    def _bind(self, endpoint: _client.Endpoint, oid: int, extra: dict[str, Any]) -> None:
        self._endpoint = endpoint
        self._oid = oid
        self._extra = extra
        self._finalizer = weakref.finalize(self, _release, endpoint, (oid,))

    def __reduce__(self) -> tuple[Any, ...]:
        endpoint = self._endpoint
        # The pickle holds a handle of its own until the receiver adopts it, so the object
        # survives its sender closing or dropping its proxy meanwhile.
        token = endpoint.hand_over(self._oid)
        args = (type(self), endpoint.address, endpoint.key, self._oid, self._extra, token)
        return (_rebuild, args)

    def _rebuilt(self) -> None:
        """Set up what is derived from ``_extra`` (after creation or unpickling)."""

    def _stats(self) -> dict[str, Any]:
        """The object's statistics as the hub reports them."""
        data: dict[str, Any] = pickle.loads(self._endpoint.call_sync(self._oid, _wire.OP_STATS))
        return data

    def _close_handle(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"<aioproc.{type(self).__name__} {self._oid}>"


def _rebuild(
    cls: type[Proxy], address: str, key: bytes, oid: int, extra: dict[str, Any], token: bytes
) -> Proxy:
    endpoint = _client.Endpoint(address, key)
    endpoint.adopt(oid, token)
    obj = cls.__new__(cls)
    obj._bind(endpoint, oid, extra)
    obj._rebuilt()
    return obj
