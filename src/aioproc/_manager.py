"""Manager: shared dicts, lists and namespaces that every process can read and change."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from ._core import _codec, _wire
from ._exceptions import ClosedResourceError
from ._proxy import Proxy

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

__all__ = ("DictProxy", "ListProxy", "Manager", "NamespaceProxy")


class _Managed(Proxy):
    """A container held by the hub; each method is one request (a copy comes back)."""

    def __init__(self) -> None:  # pragma: no cover - made by Manager only
        raise TypeError("use `await manager.dict()`, `.list()` or `.namespace()`")

    @classmethod
    def _new(cls, initial: Any) -> Any:
        obj = cls.__new__(cls)
        obj._create({"initial": initial})
        obj._rebuilt()
        return obj

    @property
    def sync(self) -> Any:
        """Blocking twins of the methods, with Python's operators, for plain child code."""
        return _SYNC_VIEWS[type(self)](self)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        blob = await self._endpoint.call(self._oid, _wire.OP_METHOD, _request(method, args, kwargs))
        return pickle.loads(blob)

    def _call_sync(self, method: str, *args: Any, **kwargs: Any) -> Any:
        blob = self._endpoint.call_sync(self._oid, _wire.OP_METHOD, _request(method, args, kwargs))
        return pickle.loads(blob)


def _request(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    return _codec.dumps((method, args, kwargs))


class DictProxy(_Managed):
    """A dict held by the manager. Every method returns a copy of what it reads."""

    _kind = "dict"

    async def get(self, key: Any, default: Any = None) -> Any:
        return await self._call("get", key, default)

    async def set(self, key: Any, value: Any) -> None:
        await self._call("__setitem__", key, value)

    async def delete(self, key: Any) -> None:
        """Remove ``key``. Raises KeyError if it is missing."""
        await self._call("__delitem__", key)

    async def pop(self, key: Any, *default: Any) -> Any:
        return await self._call("pop", key, *default)

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        return await self._call("setdefault", key, default)

    async def update(self, *args: Any, **kwargs: Any) -> None:
        await self._call("update", *args, **kwargs)

    async def keys(self) -> list[Any]:
        return await self._call("keys")  # type: ignore[no-any-return]

    async def values(self) -> list[Any]:
        return await self._call("values")  # type: ignore[no-any-return]

    async def items(self) -> list[tuple[Any, Any]]:
        return await self._call("items")  # type: ignore[no-any-return]

    async def copy(self) -> dict[Any, Any]:
        return await self._call("copy")  # type: ignore[no-any-return]

    async def contains(self, key: Any) -> bool:
        return await self._call("__contains__", key)  # type: ignore[no-any-return]

    async def len(self) -> int:
        return await self._call("__len__")  # type: ignore[no-any-return]

    async def clear(self) -> None:
        await self._call("clear")


class ListProxy(_Managed):
    """A list held by the manager."""

    _kind = "list"

    async def append(self, value: Any) -> None:
        await self._call("append", value)

    async def extend(self, values: Any) -> None:
        await self._call("extend", list(values))

    async def insert(self, index: int, value: Any) -> None:
        await self._call("insert", index, value)

    async def pop(self, index: int = -1) -> Any:
        return await self._call("pop", index)

    async def remove(self, value: Any) -> None:
        await self._call("remove", value)

    async def get(self, index: int | slice) -> Any:
        return await self._call("__getitem__", index)

    async def set(self, index: int | slice, value: Any) -> None:
        await self._call("__setitem__", index, value)

    async def index(self, value: Any) -> int:
        return await self._call("index", value)  # type: ignore[no-any-return]

    async def count(self, value: Any) -> int:
        return await self._call("count", value)  # type: ignore[no-any-return]

    async def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        await self._call("sort", key=key, reverse=reverse)

    async def copy(self) -> list[Any]:
        return await self._call("copy")  # type: ignore[no-any-return]

    async def len(self) -> int:
        return await self._call("__len__")  # type: ignore[no-any-return]

    async def clear(self) -> None:
        await self._call("clear")


class NamespaceProxy(_Managed):
    """A namespace (attributes) held by the manager."""

    _kind = "namespace"

    async def get(self, name: str) -> Any:
        """The attribute's value. Raises AttributeError if it is not set."""
        return await self._call("__getattr__", name)

    async def set(self, name: str, value: Any) -> None:
        await self._call("__setattr__", name, value)

    async def delete(self, name: str) -> None:
        await self._call("__delattr__", name)

    async def copy(self) -> dict[str, Any]:
        """All attributes, as a dict."""
        return await self._call("copy")  # type: ignore[no-any-return]


class _DictSync:
    """``d.sync``: the dict with its usual operators, blocking."""

    def __init__(self, proxy: DictProxy) -> None:
        self._call = proxy._call_sync

    def __getitem__(self, key: Any) -> Any:
        return self._call("__getitem__", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._call("__setitem__", key, value)

    def __delitem__(self, key: Any) -> None:
        self._call("__delitem__", key)

    def __contains__(self, key: Any) -> bool:
        return bool(self._call("__contains__", key))

    def __len__(self) -> int:
        return int(self._call("__len__"))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call("keys"))

    def get(self, key: Any, default: Any = None) -> Any:
        return self._call("get", key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        return self._call("pop", key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._call("setdefault", key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._call("update", *args, **kwargs)

    def keys(self) -> list[Any]:
        return list(self._call("keys"))

    def values(self) -> list[Any]:
        return list(self._call("values"))

    def items(self) -> list[tuple[Any, Any]]:
        return list(self._call("items"))

    def copy(self) -> dict[Any, Any]:
        return dict(self._call("copy"))

    def clear(self) -> None:
        self._call("clear")


class _ListSync:
    """``l.sync``: the list with its usual operators, blocking."""

    def __init__(self, proxy: ListProxy) -> None:
        self._call = proxy._call_sync

    def __getitem__(self, index: int | slice) -> Any:
        return self._call("__getitem__", index)

    def __setitem__(self, index: int | slice, value: Any) -> None:
        self._call("__setitem__", index, value)

    def __delitem__(self, index: int | slice) -> None:
        self._call("__delitem__", index)

    def __len__(self) -> int:
        return int(self._call("__len__"))

    def __contains__(self, value: Any) -> bool:
        return bool(self._call("__contains__", value))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call("copy"))

    def append(self, value: Any) -> None:
        self._call("append", value)

    def extend(self, values: Any) -> None:
        self._call("extend", list(values))

    def insert(self, index: int, value: Any) -> None:
        self._call("insert", index, value)

    def pop(self, index: int = -1) -> Any:
        return self._call("pop", index)

    def remove(self, value: Any) -> None:
        self._call("remove", value)

    def index(self, value: Any) -> int:
        return int(self._call("index", value))

    def count(self, value: Any) -> int:
        return int(self._call("count", value))

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._call("sort", key=key, reverse=reverse)

    def copy(self) -> list[Any]:
        return list(self._call("copy"))

    def clear(self) -> None:
        self._call("clear")


class _NamespaceSync:
    """``ns.sync``: attribute access, blocking (``ns.sync.x = 1``)."""

    def __init__(self, proxy: NamespaceProxy) -> None:
        object.__setattr__(self, "_call", proxy._call_sync)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._call("__getattr__", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._call("__setattr__", name, value)

    def __delattr__(self, name: str) -> None:
        self._call("__delattr__", name)


_SYNC_VIEWS: dict[type[Any], Any] = {
    DictProxy: _DictSync,
    ListProxy: _ListSync,
    NamespaceProxy: _NamespaceSync,
}


class Manager:
    """Creates shared containers: ``await m.dict()``, ``await m.list()``, ``await m.namespace()``.

    The containers live in the process hosting aioproc's IPC objects (normally the main
    one) and are reached by every process they are passed to, as task or ``Process``
    arguments or through a queue. Leaving ``async with`` releases the manager's handles;
    a container lives on while any process still holds one.
    """

    def __init__(self) -> None:
        self._made: list[_Managed] = []
        self._closed = False

    async def __aenter__(self) -> Manager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Release the handles this manager holds on what it made."""
        self._closed = True
        made, self._made = self._made, []
        for obj in made:
            obj._close_handle()

    def _make(self, cls: type[_Managed], initial: Any) -> Any:
        if self._closed:
            raise ClosedResourceError("the manager is shut down")
        obj = cls._new(initial)
        self._made.append(obj)
        return obj

    async def dict(self, *args: Any, **kwargs: Any) -> DictProxy:
        """A new shared dict, initialised like ``dict(*args, **kwargs)``."""
        return self._make(DictProxy, dict(*args, **kwargs))  # type: ignore[no-any-return]

    async def list(self, iterable: Any = ()) -> ListProxy:
        """A new shared list, initialised from ``iterable``."""
        return self._make(ListProxy, [*iterable])  # type: ignore[no-any-return]

    async def namespace(self, **attributes: Any) -> NamespaceProxy:
        """A new shared namespace with the given attributes."""
        return self._make(NamespaceProxy, attributes)  # type: ignore[no-any-return]


for _cls in (Manager, DictProxy, ListProxy, NamespaceProxy):
    _cls.__module__ = "aioproc"
