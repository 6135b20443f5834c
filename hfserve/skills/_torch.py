"""torch helpers shared by the built-in skills: dtypes, memory accounting and freeing models.

Importing this module imports torch, so only skill code that is already loading a model
imports it (never the CLI or the registry).
"""

from __future__ import annotations

import gc

import torch

from hfserve.errors import ModelLoadError

__all__ = ["free_memory", "module_memory_bytes", "torch_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` for a settings dtype name (``float32``, ``float16``, ``bfloat16``).

    Raises:
        ModelLoadError: the name is not a dtype hfserve loads weights in.
    """
    try:
        return _DTYPES[name]
    except KeyError:
        known = ", ".join(_DTYPES)
        raise ModelLoadError(f"unsupported dtype {name!r}: use one of {known}") from None


def module_memory_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        # Tied weights (e.g. input and output embeddings) are the same storage.
        key = tensor.untyped_storage().data_ptr() if tensor.device.type != "meta" else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def free_memory(device: str) -> None:
    """Return freed tensors to the system: collect garbage and empty the accelerator cache."""
    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
