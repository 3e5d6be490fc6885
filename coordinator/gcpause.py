"""Pausing Python's cyclic garbage collector while the ORM builds many objects.

Loading or flushing tens of thousands of rows allocates so many container
objects that the collector runs its full passes again and again, although
nothing those loops build is cyclic garbage; profiles showed that half of a
40,000-row load went there.  The pause covers library code only (never a
``yield`` to user code), and collection resumes as soon as the loop ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the ``with`` block (nesting and threads allowed).

    The collector is re-enabled when the last concurrent block ends, and only if it
    was enabled when the first one began.
    """
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
