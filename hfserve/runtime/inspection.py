"""Estimate a model's weight memory before loading it, from safetensors or GGUF headers, or config.

Reading a safetensors header costs a few kilobytes of I/O and gives the exact parameter
count per tensor, so the estimate for a local folder is exact up to buffers; a GGUF file's
tensor table does the same for GGUF (served dequantized, so priced at the target dtype, not
at the file's quantized size); without weights files (a Hub id not downloaded yet) a
transformer-shaped estimate from ``config.json`` stands in and says so.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfserve.skills.gguf_files import GgufInfo

__all__ = ["MemoryEstimate", "estimate_gguf_memory", "estimate_memory"]

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Element counts are all we need from a header; dtypes are re-priced at the target dtype,
# except integer/bool tensors (quantisation tables, masks), which keep their own size.
_SAFETENSORS_INT_BYTES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of the weights at the target dtype, how many parameters, and the basis."""

    bytes: int
    parameters: int
    method: str


def _header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > _MAX_HEADER:
            raise ValueError(f"{path}: implausible safetensors header of {length} bytes")
        data: dict[str, Any] = json.loads(fh.read(length))
    return data


def estimate_memory(folder: Path | None, config: dict[str, Any], dtype: str) -> MemoryEstimate:
    """Estimate the weight memory of a model at ``dtype``.

    Args:
        folder: the model folder, or ``None`` for a Hub id that is not local.
        config: the model's ``config.json`` as a dict.
        dtype: the dtype weights will be loaded in.
    """
    width = _DTYPE_BYTES.get(dtype, 4)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if files:
        params = 0
        fixed = 0
        for file in files:
            for name, meta in _header(file).items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in meta["shape"]:
                    count *= int(dim)
                int_width = _SAFETENSORS_INT_BYTES.get(str(meta["dtype"]))
                if int_width is None:
                    params += count
                else:
                    fixed += count * int_width
        return MemoryEstimate(params * width + fixed, params, "safetensors headers")
    bins = sorted(folder.glob("pytorch_model*.bin")) if folder is not None else []
    if bins:
        stored = sum(f.stat().st_size for f in bins)
        # .bin checkpoints are nearly always float32: four bytes per parameter.
        params = stored // 4
        return MemoryEstimate(params * width, params, "pytorch_model.bin size")
    params = _params_from_config(config)
    return MemoryEstimate(params * width, params, "config.json (rough)")


def estimate_gguf_memory(info: GgufInfo, dtype: str) -> MemoryEstimate:
    """The memory of a GGUF model once dequantized to ``dtype`` (how hfserve serves it)."""
    width = _DTYPE_BYTES.get(dtype, 4)
    return MemoryEstimate(info.parameters * width, info.parameters, "GGUF tensor table")


def _params_from_config(config: dict[str, Any]) -> int:
    """A transformer's parameter count from its shape: embeddings + 12 h^2 per layer."""
    hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)
    layers = int(
        config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers") or 0
    )
    vocab = int(config.get("vocab_size") or 0)
    inner = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    per_layer = 4 * hidden * hidden + 2 * hidden * inner
    return vocab * hidden + layers * per_layer
