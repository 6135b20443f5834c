"""torch helpers: dtype names, memory accounting with tied weights, freeing."""

from __future__ import annotations

import pytest
import torch

from hfserve.errors import ModelLoadError
from hfserve.skills._torch import free_memory, module_memory_bytes, torch_dtype


def test_dtype_names() -> None:
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="unsupported dtype 'int4'"):
        torch_dtype("int4")


def test_memory_counts_parameters_and_buffers_once() -> None:
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as in many LMs
    model = torch.nn.Sequential(emb, head, torch.nn.BatchNorm1d(4))
    # 40 tied weights + BatchNorm: 8 params, running mean/var 8, num_batches_tracked (int64) 1.
    assert module_memory_bytes(model) == 40 * 4 + 8 * 4 + 8 * 4 + 8
    assert module_memory_bytes(model.half()) == 40 * 2 + 16 * 2 + 8


def test_free_memory_runs_on_every_device_kind() -> None:
    for device in ("cpu", "cuda:0", "mps"):
        free_memory(device)
