"""Functions the start-up tests run in workers: this module imports nothing a worker lacks,
so what a worker has loaded is what aioproc (or the task) made it load."""

from __future__ import annotations

import gc
import sys


def loaded(name: str) -> bool:
    """Whether module ``name`` is imported in this process."""
    return name in sys.modules


def freeze_count() -> int:
    """How many objects this process's cycle collector leaves alone (``gc.freeze``)."""
    return gc.get_freeze_count()
