"""Give freed model memory back to the operating system, so RSS really falls after an unload.

Dropping the last reference to a model frees its tensors, but not necessarily the process's
memory: CPU tensors come from glibc's ``malloc``, which serves blocks under its (dynamic, up to
32 MiB) mmap threshold from heap arenas and keeps them after ``free`` for reuse. Evicting one
model to load another would then leave the first one's pages resident. ``gc.collect`` breaks
the reference cycles transformers models are full of (modules <-> hooks <-> configs), then
``malloc_trim(0)`` returns every free page of every arena. No library wraps ``malloc_trim``,
so it is called through ``ctypes``; on other C libraries (musl, macOS) it is simply skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

__all__ = ["release_memory"]

_trim: object = None  # the libc function once looked up; False when there is none


def _malloc_trim() -> bool:
    """Call glibc's ``malloc_trim(0)``; whether it exists here."""
    global _trim
    if _trim is None:
        _trim = False
        name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
        if name is not None:
            libc = ctypes.CDLL(name)
            # musl has no malloc_trim: only glibc does, and only glibc needs it.
            _trim = getattr(libc, "malloc_trim", False)
    if _trim is False:
        return False
    assert callable(_trim)
    _trim(0)
    return True


def release_memory() -> bool:
    """Collect garbage and return free heap pages to the OS; whether the heap was trimmed.

    Blocking (a full collection and a walk of the heap): call it off the event loop.
    """
    gc.collect()
    return _malloc_trim()
