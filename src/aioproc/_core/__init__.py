"""The engine under aioproc's public API: wire format, codec, workers, dispatcher, spawning.

Nothing in here imports the public modules of the package (``aioproc._pool`` and friends).
"""
