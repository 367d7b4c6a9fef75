"""The engine under aioproc's public API: wire format, codec, workers, dispatcher, spawning.

Nothing in here imports the public modules of the package (``aioproc._pool`` and friends),
but for ``aioproc._exceptions``; ``_pool`` and ``_process`` use only ``_engine`` and
``_loop`` (``tests/core/test_engine_api.py``). Inside, imports go one way, down this order (a module
imports only modules of the layers below its own; modules of one layer import none of each
other)::

    _engine                       the engine's API to the public layer: jobs in, outcomes out
    _dispatch                     the parent's scheduler: queue, routing, supervision
    _link  _functions  _relay     a worker's pipes; the function table; output and logs
    _spawn  _forkserver           starting worker processes
    _worker                       the worker process: its entry point and blocking loop
    _worker_async                 the worker's asyncio loop (concurrency > 1)
    _exec                         running calls: what both worker loops share
    _payload                      large buffers through shared memory (a client of the hub)
    _client                       the IPC hub's client side
    _hub                          the IPC hub: objects shared between processes
    _objects                      the state machines of the shared objects (no I/O)
    _codec                        values: pickle, cloudpickle, exceptions
    _wire                         frames and msgspec envelopes
    _loop  _fds  _role            event-loop seam; fds closed after fork; role and address

``LAYERS`` below says the same, lowest first; ``tests/core/test_layers.py`` holds the code
to it (and finds any import cycle in the package). A new module must be added to it. A name
listed here for which no file exists yet is allowed.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("_loop", "_fds", "_role"),
    ("_wire",),
    ("_codec",),
    ("_objects",),
    ("_hub",),
    ("_client",),
    ("_payload",),
    ("_exec",),
    ("_worker_async",),
    ("_worker",),
    ("_spawn", "_forkserver"),
    ("_link", "_functions", "_relay"),
    ("_dispatch",),
    ("_engine",),
)
