"""Functions the tests run in workers (a light module: workers import it quickly)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

state: dict[str, Any] = {}


def double(x: int) -> int:
    return x * 2


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def echo(value: Any) -> Any:
    return value


def identity_type(value: Any) -> tuple[str, Any]:
    return type(value).__name__, value


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


def pid() -> int:
    return os.getpid()


def square_slowly(x: int, delay: float = 0.5) -> int:
    time.sleep(delay)
    return x * x


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def worker_task(task: int) -> int:
    """The tutorial's worker: doubles, rejects 0."""
    if task == 0:
        raise ValueError("Invalid task value")
    return task * 2


def sleep_forever() -> None:
    while True:
        time.sleep(10)


async def async_sleep_forever() -> None:
    await asyncio.sleep(3600)


def hang_then_touch(path: str, release: str) -> None:
    """Wait until `release` exists, then create `path`."""
    while not Path(release).exists():
        time.sleep(0.01)
    Path(path).touch()


def block_unless_zero(x: int) -> int:
    if x:
        sleep_forever()
    return x


def touch(path: str) -> str:
    Path(path).touch()
    return path


def wait_for_file(path: str) -> str:
    while not Path(path).exists():
        time.sleep(0.01)
    return path


def exit_with(code: int) -> None:
    os._exit(code)


def sys_exit(code: int) -> None:
    sys.exit(code)


def kill_self(sig: int = signal.SIGKILL, _payload: Any = None) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault() -> None:
    import ctypes
    import faulthandler

    faulthandler.disable()  # a fork child inherits pytest's; keep the test output quiet
    ctypes.string_at(0)


def die_once(marker: str) -> int:
    """Die the first time (no marker yet), succeed the second."""
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(7)
    return os.getpid()


def set_state(key: str, value: Any) -> None:
    state[key] = value


def get_state(key: str) -> Any:
    return state.get(key)


def failing_initializer() -> None:
    raise RuntimeError("initializer exploded")


async def async_initializer(value: Any) -> None:
    await asyncio.sleep(0)
    state["async_init"] = value


def speak(text: str) -> str:
    print(text)
    print(f"err:{text}", file=sys.stderr)
    return text


def log(name: str, level: int, text: str) -> None:
    logging.getLogger(name).log(level, text)


def count_up(n: int) -> Any:
    yield from range(n)


async def async_count_up(n: int) -> Any:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def yield_then_block(path: str) -> Any:
    yield "first"
    while not Path(path).exists():
        time.sleep(0.01)
    yield "second"


def fail_midway(n: int) -> Any:
    yield from range(n)
    raise KeyError("midway")


_arrived = 0
_all_here: asyncio.Event | None = None


async def rendezvous(parties: int) -> int:
    """Returns once `parties` calls are inside the worker at the same time."""
    global _arrived, _all_here
    if _all_here is None:
        _all_here = asyncio.Event()
    _arrived += 1
    if _arrived >= parties:
        _all_here.set()
    await asyncio.wait_for(_all_here.wait(), 30)
    return _arrived


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this object refuses to be pickled")


def return_unpicklable() -> Any:
    import threading

    return threading.Lock()


class OddError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"odd {a} {b}")


def raise_odd() -> None:
    raise OddError(1, 2)


def return_lambda_result(fn: Any, x: Any) -> Any:
    return fn(x)


def count_pulled(counter: list[int], n: int) -> Any:
    for i in range(n):
        counter[0] += 1
        yield i


def getenv(name: str) -> str | None:
    return os.environ.get(name)


# --- IPC -----------------------------------------------------------------------------------


def put_all(q: Any, items: list[Any]) -> int:
    for item in items:
        q.sync.put(item)
    return len(items)


def square_numbers(numbers: Any, q: Any) -> None:
    for num in numbers:
        q.sync.put(num * num)


def cube_numbers(numbers: Any, q: Any) -> None:
    for num in numbers:
        q.sync.put(num * num * num)


def drain(q: Any) -> list[Any]:
    return list(q.sync)


def get_with_timeout(q: Any, timeout: float) -> Any:
    try:
        return q.sync.get(timeout=timeout)
    except TimeoutError:
        return "timeout"


async def async_get(q: Any) -> Any:
    return await q.get()


def pipe_send_cube(conn: Any, x: int) -> None:
    conn.sync.send(x**3)


def pipe_echo(conn: Any) -> int:
    count = 0
    for message in conn.sync:
        conn.sync.send(("echo", message))
        count += 1
    return count


def lock_and_die(lock: Any) -> None:
    lock.sync.acquire()
    os._exit(9)


def increment_file(lock: Any, path: str, times: int) -> None:
    for _ in range(times):
        with lock.sync:
            p = Path(path)
            p.write_text(str(int(p.read_text()) + 1))


def wait_event(event: Any, timeout: float) -> bool:
    return bool(event.sync.wait(timeout))


def set_event(event: Any) -> None:
    event.sync.set()


def barrier_wait(barrier: Any) -> int:
    return int(barrier.sync.wait())


def notify_after(cond: Any, flag: Any) -> None:
    with cond.sync:
        flag.sync.put("ready")
        cond.sync.notify_all()


def forward(inbox: Any) -> Any:
    """Receive a queue through a queue, and use it."""
    outbox = inbox.sync.get()
    outbox.sync.put("through")
    return "ok"


async def cancelled_get_then_get(q: Any) -> Any:
    """Cancel one get (it times out), then get again: nothing was lost in between."""
    import asyncio as aio

    try:
        await aio.wait_for(q.get(), 0.1)
    except TimeoutError:
        pass
    q.sync.put("marker-from-worker")
    return await q.get()


def try_lock(lock: Any, timeout: float) -> bool:
    got = bool(lock.sync.acquire(timeout=timeout))
    if got:
        lock.sync.release()
    return got


def hold_lock_until(lock: Any, event: Any) -> int:
    with lock.sync:
        event.sync.wait(30)
    return os.getpid()


def shout(name: str) -> str:
    print(f"hello from {name}")
    return name.upper()


def sleep_then(value: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return value


def sleep_then_touch(path: str, seconds: float) -> None:
    time.sleep(seconds)
    Path(path).touch()


def increment_value(value: Any) -> None:
    value.value += 1


def locked_double(num: Any, arr: Any) -> None:
    with num.get_lock().sync:
        num.value += 1
    with arr.get_lock().sync:
        for i in range(len(arr)):
            arr[i] *= 2


def many_increments(value: Any, times: int) -> None:
    lock = value.get_lock()
    for _ in range(times):
        with lock.sync:
            value.value += 1


def array_sum(arr: Any) -> float:
    return float(sum(arr))


def append_under_lock(lock: Any, shared_list: Any) -> None:
    lock.sync.acquire()
    shared_list.sync.append("New item")
    lock.sync.release()


def use_managed(d: Any, ns: Any) -> Any:
    d.sync["from_child"] = [1, 2]
    ns.sync.seen = True
    try:
        d.sync["missing"]
    except KeyError as exc:
        return f"KeyError {exc}"
    return "no error"


def describe_buffer(value: Any) -> tuple[str, int, Any]:
    """Type name, size, and (for arrays) whether the received array is writable."""
    writable = getattr(getattr(value, "flags", None), "writeable", None)
    size = value.nbytes if hasattr(value, "nbytes") else len(value)
    return type(value).__name__, size, writable


def make_bytes(size: int) -> bytes:
    return bytes(range(256)) * (size // 256)


def double_array(arr: Any) -> Any:
    arr *= 2  # needs a writable array
    return arr


def create_value_and_die() -> None:
    import aioproc

    value = aioproc.Value("q", 7)  # created through the parent's hub
    value.value += 1
    os._exit(5)


def make_queue_with(item: Any) -> Any:
    import aioproc

    q = aioproc.Queue()
    q.sync.put(item)
    return q


def put_twice_then_set(q: Any, event: Any) -> str:
    q.sync.put(1)  # a post: its failure comes back later
    import time as _time

    deadline = _time.monotonic() + 10
    while _time.monotonic() < deadline:
        try:
            q.sync.put(2)
        except Exception as exc:
            event.sync.set()
            return type(exc).__name__
        _time.sleep(0.01)
    return "no error"


class FailsToLoad:
    """Pickles fine; raises when rebuilt in the worker."""

    def __reduce__(self) -> Any:
        return (_refuse, ("no rebuilding here",))


def _refuse(message: str) -> None:
    raise RuntimeError(message)


class ExitsWhileLoading:
    """Pickles fine; the worker exits while rebuilding it."""

    def __reduce__(self) -> Any:
        return (os._exit, (11,))


class CrashesWhileLoading:
    """Pickles fine; the worker segfaults while rebuilding it."""

    def __reduce__(self) -> Any:
        return (segfault, ())


# --- the fault matrix (tests/test_faults.py) ------------------------------------------------


def announce_then_sleep(q: Any) -> None:
    """Put this worker's pid on ``q`` (the task is running), then sleep until killed."""
    q.sync.put(os.getpid())
    time.sleep(3600)


def ignore_sigterm_then_sleep(q: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    q.sync.put(os.getpid())
    time.sleep(3600)


class LockHoldingError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        import threading

        super().__init__(message)
        self.lock = threading.Lock()


def raise_lock_holding() -> None:
    raise LockHoldingError("holding a lock")


def count_run(path: str) -> None:
    """An initializer that leaves one line in ``path`` per run, then fails."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    raise RuntimeError("initializer exploded")


def result_fd() -> int:
    """The fd of the worker's result pipe to the parent (reached through the stream that
    forwards the worker's stdout over it)."""
    return int(sys.stdout.buffer.raw._channel._fd)  # type: ignore[attr-defined]


def corrupt_channel(junk: bytes, then_exit: bool = False) -> None:
    """Write ``junk`` into the worker's result pipe, as a stray write from a C library
    would, then sleep (or die at once)."""
    os.write(result_fd(), junk)
    if then_exit:
        os._exit(0)
    time.sleep(3600)


class _KillWhenPickled:
    def __reduce__(self) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
        raise AssertionError("unreachable")


def die_while_sending_result(size: int) -> Any:
    """Return a large result and die while it is being sent (deterministically: once its
    large part is serialised, the next object kills the worker)."""
    return [b"\x02" * size, _KillWhenPickled()]


def make_value(start: int) -> Any:
    import aioproc

    value = aioproc.Value("q", start)
    value.value += 1
    return value


def getenvb(name: str) -> bytes | None:
    return os.environb.get(name.encode())


def slow_initializer(seconds: float) -> None:
    time.sleep(seconds)


async def async_double_at_once(x: int) -> int:
    return x * 2  # a coroutine that finishes in its first step


def describe_view(value: Any) -> tuple[str, bool, int, int]:
    """Type name, read-only flag and size of a received buffer, and how many blocks of
    aioproc's shared memory this worker has mapped while it holds it."""
    view = memoryview(value)
    with open("/proc/self/maps") as maps:
        mapped = maps.read().count("/memfd:aioproc")
    return type(value).__name__, view.readonly, view.nbytes, mapped


def slice_of(value: Any, start: int, stop: int) -> Any:
    return value[start:stop]


def view_of_bytes(size: int) -> memoryview:
    return memoryview(bytes(range(256)) * (size // 256))


def hold_and_die(value: Any) -> None:
    state["held"] = value
    os._exit(3)


def yield_back_then_die(value: Any) -> Any:
    yield value
    os._exit(3)


def fill_view(value: Any, byte: int) -> None:
    memoryview(value).cast("B")[:] = bytes([byte]) * memoryview(value).nbytes


def make_shared(size: int, byte: int) -> Any:
    import aioproc

    buf = aioproc.shared_buffer(size)
    buf[:] = bytes([byte]) * size
    return buf


def take(q: Any, n: int) -> list[Any]:
    """Take `n` items with blocking gets, and return them."""
    get = q.sync.get
    return [get(timeout=30) for _ in range(n)]


async def take_async(q: Any) -> list[Any]:
    """Take items with `async for` until the queue is closed and drained."""
    return [item async for item in q]


def take_then_die(q: Any, n: int) -> None:
    """Take `n` items (a consumer with a prefetch buffer by then), then die as the OOM
    killer would have it: no exit code runs, nothing is given back."""
    for _ in range(n):
        q.sync.get(timeout=30)
    os.kill(os.getpid(), signal.SIGKILL)


def take_slowly_then_wait(q: Any, n: int, seconds: float, taken: Any, go: Any) -> list[Any]:
    """A slow consumer: `n` items, `seconds` of work each; then say so and wait for `go`."""
    got = []
    for _ in range(n):
        got.append(q.sync.get(timeout=30))
        time.sleep(seconds)
    taken.sync.set()
    go.sync.wait(30)
    return got


def wait_then_size(q: Any, started: Any) -> int:
    """Block in a get on an empty queue, after saying so; return the item then got."""
    started.sync.set()
    return q.sync.get(timeout=30)  # type: ignore[no-any-return]
