"""Give freed model memory back to the operating system, so RSS really falls after an unload.

What frees a model is dropping every reference to it (the skills' ``aclose`` stops the batcher
or engine thread and drops weights and KV cache); ``gc.collect`` then breaks the reference
cycles transformers models are full of (modules <-> hooks <-> configs). Freed CPU tensors go
back to glibc's ``malloc``: blocks over its mmap threshold are unmapped at once, smaller ones
stay in heap arenas for reuse. The threshold is dynamic (it rises, up to 32 MiB, to the size of
the largest mmapped block freed), so after one eviction a later model's mid-sized tensors can
land in the arenas and outlive it; ``malloc_trim(0)`` returns every free arena page. Measured
(tests/integration/test_models_dir.py, 75 MB BERT and Llama): RSS fell back to its base with or
without the trim, the tensors being above the threshold; the trim is the safeguard for models
made of many smaller tensors. No library wraps ``malloc_trim``, so it is called through
``ctypes``; on other C libraries (musl, macOS) it is skipped.
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
