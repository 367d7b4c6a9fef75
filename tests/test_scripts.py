"""Programs as users write them: a script run as ``python script.py`` whose classes and
functions live in its ``__main__`` and travel to workers and children by value."""

from __future__ import annotations

import linecache
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aioproc

# Classes of every kind a script defines, sent every way a value travels: task arguments and
# results, untyped and typed queues and pipes to and from a Process. Each line printed says
# whether the value arrived whole (equal, and of the receiver's own class).
CLASSES = """
import asyncio, dataclasses, enum, inspect, sys
from typing import ClassVar, NamedTuple

import msgspec

import aioproc


class Point(msgspec.Struct):
    x: int
    y: int = 0


class Base(msgspec.Struct, kw_only=True):
    note: str = ""


class Order(Base, frozen=True, tag=True, rename="camel"):
    order_id: int
    where: Point
    items: list[Point] = msgspec.field(default_factory=list)
    LIMIT: ClassVar[int] = 10

    def __post_init__(self) -> None:
        if self.order_id > self.LIMIT:
            raise ValueError("order_id too large")

    def total(self) -> int:
        return sum(p.x for p in self.items)


@dataclasses.dataclass
class Bag:
    name: str
    sizes: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Frozen:
    a: int
    b: str = "b"


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Pair(NamedTuple):
    left: int
    right: str = "r"


def values():
    return [
        Point(1),
        Order(order_id=1, where=Point(2, 3), items=[Point(4), Point(5, 6)], note="n"),
        Bag("bag", [1, 2]),
        Frozen(5),
        Color.BLUE,
        Pair(1),
    ]


def describe(cls):
    # What a Struct class is, as far as a user can tell: fields, defaults, names on the
    # wire, options, signature, behaviour.
    config = cls.__struct_config__
    options = {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}
    defaults = [d if d is not msgspec.NODEFAULT else "-" for d in cls.__struct_defaults__]
    return (
        cls.__struct_fields__,
        [getattr(d, "factory", d) for d in defaults],
        cls.__struct_encode_fields__,
        options,
        str(inspect.signature(cls)),
        msgspec.json.schema(cls),
    )


def same(got, i):
    want = values()[i]
    return got == want and type(got) is type(want)


def echo(v):
    return v


def make(i):
    return values()[i]


def shapes():
    return [describe(cls) for cls in (Point, Base, Order)]


def behaviour():
    order = values()[1]
    try:
        Order(order_id=11, where=Point(0))
    except ValueError as exc:
        refused = str(exc)
    return order.total(), refused, msgspec.json.encode(order)


def child(untyped_q, untyped_conn, typed):
    for i in range(len(values())):
        untyped_q.sync.put((same(untyped_conn.sync.recv(), i), values()[i]))
    for i, (q, conn) in enumerate(typed):
        q.sync.put(conn.sync.recv())
        conn.sync.send(values()[i])


async def main(method):
    async with aioproc.ProcessPool(1, start_method=method) as pool:
        for i, v in enumerate(values()):
            print("argument", i, await pool.apply(same, v, i))
            back = await pool.apply(make, i)
            print("result", i, back == v and type(back) is type(v))
            back = await pool.apply(echo, v)
            print("round trip", i, back == v and type(back) is type(v))
        print("shapes", await pool.apply(shapes) == shapes())
        print("behaviour", await pool.apply(behaviour) == behaviour())

    kinds = [Point, Order, Bag, Frozen, Color, Pair]
    untyped_q = aioproc.Queue()
    untyped_mine, untyped_theirs = aioproc.Pipe()
    typed, mine = [], []
    for kind in kinds:
        a, b = aioproc.Pipe(type=kind)
        typed.append((aioproc.Queue(type=kind), b))
        mine.append(a)
    p = aioproc.Process(target=child, args=(untyped_q, untyped_theirs, typed), start_method=method)
    p.start()
    untyped_theirs.close()
    for i, v in enumerate(values()):
        await untyped_mine.send(v)
        await mine[i].send(v)
    for i, v in enumerate(values()):
        ok, back = await untyped_q.get()
        print("untyped", i, ok, back == v and type(back) is type(v))
    for i, v in enumerate(values()):
        back = await typed[i][0].get()
        print("typed queue", i, back == v and type(back) is type(v))
        back = await mine[i].recv()
        print("typed pipe", i, back == v and type(back) is type(v))
    await p.join()
    print("exit", p.exitcode)


asyncio.run(main(sys.argv[1]))
"""


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_classes_of_a_script_arrive_whole(tmp_path: Path, start_method: str) -> None:
    done = run_script(tmp_path, CLASSES, start_method)
    assert done.returncode == 0, done.stderr
    n = 6
    expected = []
    for i in range(n):
        expected += [f"argument {i} True", f"result {i} True", f"round trip {i} True"]
    expected += ["shapes True", "behaviour True"]
    expected += [f"untyped {i} True True" for i in range(n)]
    for i in range(n):
        expected += [f"typed queue {i} True", f"typed pipe {i} True"]
    expected += ["exit 0"]
    assert done.stdout.splitlines() == expected, done.stderr


# ``from __future__ import annotations``: every annotation is a string, which a child could
# not evaluate (the script's globals are not there). A tree that refers to itself, a generic
# Struct, a dataclass holding both, checked by typed channels in a child.
POSTPONED = """
from __future__ import annotations

import asyncio, dataclasses, sys
from typing import Generic, TypeVar

import msgspec

import aioproc

T = TypeVar("T")


class Node(msgspec.Struct):
    name: str
    children: list[Node] = []

    def add(self, name: str) -> Node:
        child = Node(name)
        self.children.append(child)
        return child


class Box(msgspec.Struct, Generic[T]):
    item: T


@dataclasses.dataclass
class Shelf:
    boxes: list[Box[int]]
    top: Node | None = None


def tree():
    root = Node("root")
    root.add("a").add("b")
    return root


def child(q, conn):
    q.sync.put(conn.sync.recv())
    q.sync.put(Shelf([Box(1)], tree()))
    try:
        conn.sync.recv()
    except aioproc.ValidationError as exc:
        q.sync.put(Shelf([], Node(str(exc))))


async def main(method):
    q = aioproc.Queue(type=Shelf)
    a, b = aioproc.Pipe(type=Shelf)
    p = aioproc.Process(target=child, args=(q, b), start_method=method)
    p.start()
    b.close()
    want = Shelf([Box(1), Box(2)], tree())
    await a.send(want)
    await a.send({"boxes": [{"item": "x"}]})
    print(await q.get() == want)
    print(await q.get() == Shelf([Box(1)], tree()))
    print((await q.get()).top.name)
    await p.join()
    print("exit", p.exitcode)
    async with aioproc.ProcessPool(1, start_method=method) as pool:
        print(await pool.apply(tree) == tree())


asyncio.run(main(sys.argv[1]))
"""


def test_postponed_annotations_of_a_script_are_checked_in_children(
    tmp_path: Path, start_method: str
) -> None:
    done = run_script(tmp_path, POSTPONED, start_method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True",
        "True",
        "Expected `int`, got `str` - at `$.boxes[0].item`",
        "exit 0",
        "True",
    ]


UNSENDABLE = """
import asyncio, threading

import aioproc


class Account:
    lock = threading.Lock()  # a class attribute that cannot be pickled

    def __init__(self, n):
        self.n = n


def show(x):
    return x


def make():
    return Account(1)


async def main():
    q = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        for send in (
            lambda: q.put(Account(1)),
            lambda: pool.apply(show, Account(1)),
            lambda: pool.apply(make),
        ):
            try:
                await send()
            except aioproc.SerializationError as exc:
                print(exc)


asyncio.run(main())
"""


def test_a_script_class_that_cannot_travel_fails_at_the_sender_saying_what_to_do(
    tmp_path: Path,
) -> None:
    done = run_script(tmp_path, UNSENDABLE)
    assert done.returncode == 0, done.stderr
    hint = (
        "cannot pickle '_thread.lock' object; the script's own classes and functions are"
        " sent by value: move them to a module the other process can import"
    )
    queue_put, argument, function = done.stdout.splitlines()
    assert queue_put == f"cannot pickle object of type 'Account': {hint}"
    assert argument == f"cannot send argument 0 of type 'Account' to a worker: {hint}"
    # A function of the script that creates one: the function does not pickle.
    assert function.startswith("cannot pickle function <function make at ")
    assert function.endswith(f": {hint}")


FAILING = """
import asyncio, sys

import aioproc


def helper(x):
    return 1 / x  # the failing line


def task(x):
    return helper(x)


async def atask(x):
    await asyncio.sleep(0)
    return task(x)


async def main(method):
    async with aioproc.ProcessPool(1, start_method=method) as pool:
        for fn in (task, atask, lambda x: task(x)):
            try:
                await pool.apply(fn, 0)
            except ZeroDivisionError as exc:
                print(exc.__cause__)
    p = aioproc.Process(target=task, args=(0,), start_method=method)
    p.start()
    await p.join()


asyncio.run(main(sys.argv[1]))
"""


def test_worker_tracebacks_show_the_script_file_line_and_source(
    tmp_path: Path, start_method: str
) -> None:
    done = run_script(tmp_path, FAILING, start_method)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "script.py"
    lines = script.read_text().splitlines()

    def frame(source: str, function: str) -> str:
        number = next(n for n, line in enumerate(lines, 1) if line.strip() == source)
        return f'  File "{script}", line {number}, in {function}\n    {source}\n'

    innermost = [
        frame("return helper(x)", "task"),
        frame("return 1 / x  # the failing line", "helper"),
    ]
    # pool.apply: the remote traceback is the exception's __cause__, as the parent shows it.
    for text in innermost:
        assert done.stdout.count(text) == 3, done.stdout
    assert frame("return task(x)", "atask") in done.stdout
    assert frame("for fn in (task, atask, lambda x: task(x)):", "<lambda>") in done.stdout
    # A Process whose target raised prints its traceback, as multiprocessing does.
    for text in innermost:
        assert text in done.stderr, done.stderr
    assert "<dynamic-code>" not in done.stdout + done.stderr


@pytest.mark.anyio
async def test_a_traceback_shows_source_that_is_in_no_file(anyio_backend: object) -> None:
    # As in a notebook: the cell's source is known to linecache only, not on disk.
    filename = "<cell-7>"
    source = "def cell_task(x):\n    return 1 / x\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    try:
        async with aioproc.ProcessPool(1, start_method="spawn") as pool:
            with pytest.raises(ZeroDivisionError) as info:
                await pool.apply(namespace["cell_task"], 0)
    finally:
        del linecache.cache[filename]
    shown = str(info.value.__cause__)
    assert f'  File "{filename}", line 2, in cell_task\n    return 1 / x\n' in shown, shown
