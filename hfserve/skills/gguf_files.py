"""GGUF files: find the one behind a model path and read its metadata, without dequantizing.

GGUF (the llama.cpp / Ollama format) holds a model's weights, often quantized, together with
its configuration, tokenizer and chat template as metadata. The ``gguf`` package's
``GGUFReader`` memory-maps the file, so reading the metadata and the tensor table costs no
dequantization; transformers does the dequantizing later (``skills.gguf_cache``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hfserve.errors import ModelLoadError

__all__ = [
    "GGUF_SUFFIX",
    "GgufInfo",
    "causal_lm_architecture",
    "check_supported",
    "find_gguf",
    "model_type_of",
    "read_gguf_info",
    "supported_architectures",
]

GGUF_SUFFIX = ".gguf"

# llama.cpp spells a few architectures differently from transformers' model types; these are
# the renames transformers' own GGUF loader applies (modeling_gguf_pytorch_utils).
_MODEL_TYPE_RENAMES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
    "gemma3": "gemma3_text",
    "gemma4": "gemma4_text",
}
# Keys of transformers' GGUF mapping table that are metadata sections, not architectures.
_NOT_ARCHITECTURES = frozenset({"general", "tokenizer"})


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says: architecture, quantization, size and context."""

    path: Path
    architecture: str
    name: str | None
    quantization: str
    parameters: int
    tensor_bytes: int
    file_bytes: int
    context_length: int | None
    tensor_types: dict[str, int] = field(default_factory=dict)


def find_gguf(model_path: str) -> Path | None:
    """The GGUF file behind ``model_path``, or ``None`` when it is not a GGUF model.

    A path ending in ``.gguf`` is one (even if missing: reading it then says so); so is a folder
    without ``config.json`` that holds exactly one ``.gguf`` file.

    Raises:
        ModelLoadError: the folder holds several ``.gguf`` files, so which one is meant is unclear.
    """
    path = Path(model_path).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX and not path.is_dir():
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(files) > 1:
        names = ", ".join(p.name for p in files)
        raise ModelLoadError(
            f"{path} holds {len(files)} .gguf files ({names}); pass the one to serve, "
            f"e.g. --model NAME={files[0]}"
        )
    return files[0] if files else None


def _field(reader: Any, key: str) -> Any:
    found = reader.fields.get(key)
    return None if found is None else found.contents()


def read_gguf_info(path: Path) -> GgufInfo:
    """Read a GGUF file's metadata and tensor table (memory-mapped; nothing is dequantized).

    Raises:
        ModelLoadError: the file is missing, truncated or not GGUF.
    """
    try:
        from gguf import GGUFReader, LlamaFileType

        reader = GGUFReader(path)
        architecture = str(_field(reader, "general.architecture") or "")
        file_type = _field(reader, "general.file_type")
        context = _field(reader, f"{architecture}.context_length")
        name = _field(reader, "general.name")
        types: Counter[str] = Counter()
        bytes_by_type: Counter[str] = Counter()
        parameters = tensor_bytes = 0
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            types[kind] += 1
            bytes_by_type[kind] += int(tensor.n_bytes)
            parameters += int(tensor.n_elements)
            tensor_bytes += int(tensor.n_bytes)
        quantization = (
            LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
            if file_type is not None
            # No file type recorded: name it after the type that holds most of the bytes.
            else (bytes_by_type.most_common(1)[0][0] if bytes_by_type else "none")
        )
    except FileNotFoundError:
        raise ModelLoadError(f"GGUF file {path} does not exist") from None
    except Exception as exc:  # the reader raises ValueError, KeyError, IndexError, ... on damage
        raise ModelLoadError(
            f"{path} is not a readable GGUF file (truncated or damaged?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not architecture:
        raise ModelLoadError(f"{path} has no general.architecture: not a model GGUF file")
    return GgufInfo(
        path=path,
        architecture=architecture,
        name=str(name) if name is not None else None,
        quantization=quantization,
        parameters=parameters,
        tensor_bytes=tensor_bytes,
        file_bytes=path.stat().st_size,
        context_length=int(context) if context is not None else None,
        tensor_types=dict(types.most_common()),
    )


def model_type_of(architecture: str) -> str:
    """transformers' ``model_type`` for a llama.cpp architecture name."""
    return _MODEL_TYPE_RENAMES.get(architecture, architecture)


def supported_architectures() -> frozenset[str]:
    """The GGUF architectures the installed transformers can load (its own tables)."""
    names: set[str] = set()
    # Two tables: the classic dequantizing loader and the newer converter-based one (5.x).
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        names.update(GGUF_SUPPORTED_ARCHITECTURES)
    except ImportError:  # pragma: no cover - depends on the installed transformers
        pass
    try:
        from transformers.integrations.gguf import GGUF_ARCHS  # type: ignore[attr-defined]

        names.update(GGUF_ARCHS)
    except ImportError:  # pragma: no cover - older transformers have only the classic table
        pass
    return frozenset(names - _NOT_ARCHITECTURES)


def check_supported(info: GgufInfo) -> None:
    """Fail early, naming the architecture, when transformers cannot load this GGUF.

    Raises:
        ModelLoadError: transformers has no GGUF support for ``info.architecture``.
    """
    supported = supported_architectures()
    if info.architecture in supported or model_type_of(info.architecture) in supported:
        return
    import transformers

    raise ModelLoadError(
        f"GGUF architecture {info.architecture!r} ({info.path.name}) is not supported by "
        f"transformers {transformers.__version__}; it loads GGUF files of: "
        f"{', '.join(sorted(supported))}"
    )


def causal_lm_architecture(model_type: str) -> str | None:
    """The ``*ForCausalLM`` class transformers builds for ``model_type``, if it has one."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return str(name) if name else None
