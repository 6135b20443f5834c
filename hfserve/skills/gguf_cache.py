"""The GGUF conversion cache: dequantize a GGUF once, then load the saved folder on every start.

transformers loads a GGUF by dequantizing every tensor and rebuilding the tokenizer from the
file's metadata, which takes tens of seconds even for a small model. The result is written once
under ``<cache dir>/gguf/<sha256>-<dtype>/`` as an ordinary transformers folder (safetensors,
``config.json``, tokenizer files with the chat template); later starts load that folder
directly. The key is the file's content hash, so a changed file is converted again and a
copied or renamed one is not. Hashes are remembered by (path, size, mtime) so that a start does
not re-read a multi-gigabyte file just to find its folder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hfserve.errors import ModelLoadError
from hfserve.paths import default_cache_dir
from hfserve.skills.gguf_files import (
    causal_lm_architecture,
    check_supported,
    model_type_of,
    read_gguf_info,
)

__all__ = [
    "GGUF_CACHE_MARKER",
    "cached_folder",
    "content_hash",
    "gguf_cache_root",
    "gguf_model_facts",
    "materialize",
]

logger = logging.getLogger(__name__)

GGUF_CACHE_MARKER = ".hfserve-gguf.json"
# Bumped when the folder's recipe changes, so an old conversion is not reused.
_RECIPE = 1
_HASHES = "hashes.json"
_CHUNK = 4 * 1024 * 1024
_STORED_DTYPES = ("float16", "bfloat16")
_hash_lock = threading.Lock()


def gguf_cache_root() -> Path:
    """Where converted GGUF models live: ``<cache dir>/gguf``."""
    return default_cache_dir() / "gguf"


def _stored_dtype(dtype: str) -> str:
    # Half precision was asked for explicitly: store it so (half the disk). Anything else
    # (auto, float32) keeps the dequantized float32 values exactly.
    return dtype if dtype in _STORED_DTYPES else "float32"


def _stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def content_hash(path: Path, root: Path | None = None) -> str:
    """The SHA-256 of the file's bytes, remembered by (path, size, mtime) under ``root``.

    Raises:
        ModelLoadError: the file cannot be read.
    """
    root = root if root is not None else gguf_cache_root()
    key = str(path.resolve())
    try:
        stamp = _stamp(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc
    index_file = root / _HASHES
    with _hash_lock:
        known = _read_json(index_file).get(key)
    if isinstance(known, dict) and {k: known.get(k) for k in stamp} == stamp:
        return str(known["sha256"])
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc
    sha = digest.hexdigest()
    with _hash_lock, contextlib.suppress(OSError):
        # Re-read under the lock: another model may have added its hash meanwhile. A cache
        # dir that cannot be written only costs a re-hash next time.
        index = _read_json(index_file)
        index[key] = {**stamp, "sha256": sha}
        _write_json_atomic(index_file, index)
    return sha


def cached_folder(path: Path, dtype: str = "float32", root: Path | None = None) -> Path:
    """The folder the converted copy of ``path`` at ``dtype`` lives in (it may not exist yet)."""
    root = root if root is not None else gguf_cache_root()
    return root / f"{content_hash(path, root)[:32]}-{_stored_dtype(dtype)}"


def _is_complete(folder: Path) -> bool:
    return _read_json(folder / GGUF_CACHE_MARKER).get("recipe") == _RECIPE


def gguf_model_facts(path: Path) -> tuple[tuple[str, ...], str]:
    """``(architectures, model_type)`` of a GGUF model, for picking its skill.

    From the converted folder's ``config.json`` when there is one, else from the file's header.

    Raises:
        ModelLoadError: the file is unreadable or of an architecture transformers cannot load.
    """
    folder = cached_folder(path)
    if _is_complete(folder):
        config = _read_json(folder / "config.json")
        return tuple(config.get("architectures") or ()), str(config.get("model_type") or "")
    stamp = _stamp(path)  # the file exists: cached_folder has hashed it
    return _header_facts(str(path), stamp["size"], stamp["mtime_ns"])


# The banner, the skill lookup and the load each ask before the first conversion exists;
# the header is read once per file version (a failure is not cached: lru_cache skips raises).
@functools.lru_cache(maxsize=32)
def _header_facts(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, ...], str]:
    info = read_gguf_info(Path(path))
    check_supported(info)
    model_type = model_type_of(info.architecture)
    architecture = causal_lm_architecture(model_type)
    return ((architecture,) if architecture else ()), model_type


def materialize(path: Path, dtype: str = "float32", root: Path | None = None) -> Path:
    """The transformers folder for the GGUF ``path``, converting it on the first call.

    The conversion is written to a temporary sibling and renamed into place, so an interrupted
    or concurrent conversion never leaves a half-written folder that a later start would trust.

    Raises:
        ModelLoadError: the file is damaged, of an unsupported architecture, or fails to convert.
    """
    root = root if root is not None else gguf_cache_root()
    target = cached_folder(path, dtype, root)
    if _is_complete(target):
        logger.info("GGUF %s: using the converted copy in %s", path.name, target)
        return target
    info = read_gguf_info(path)
    check_supported(info)
    logger.info(
        "GGUF %s (%s, %s): dequantizing once into %s",
        path.name,
        info.architecture,
        info.quantization,
        target,
    )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    started = time.perf_counter()
    try:
        _convert(path, staging, _stored_dtype(dtype))
        marker = {
            "recipe": _RECIPE,
            "source": str(path.resolve()),
            "architecture": info.architecture,
            "quantization": info.quantization,
        }
        (staging / GGUF_CACHE_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)  # an older recipe's or a broken copy
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted GGUF to {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("GGUF %s: converted in %.2fs", path.name, time.perf_counter() - started)
    return target


def _convert(path: Path, out: Path, dtype: str) -> None:
    """Dequantize ``path`` with transformers and save model and tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfserve.skills._torch import free_memory, torch_dtype

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch_dtype(dtype), **_dequantize_kwargs()
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError, TypeError) as exc:
        raise ModelLoadError(
            f"transformers cannot load the GGUF file {path}: {type(exc).__name__}: {exc}"
        ) from exc
    _forget_quantization(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    free_memory("cpu")


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask transformers for plain dense weights, where it could keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # pragma: no cover - transformers before GgufConfig always dequantizes
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_quantization(model: Any) -> None:
    """Mark a fully dequantized model as the plain model it now is, so that it can be saved.

    transformers keeps the GGUF "quantizer" on the model even when every weight was unpacked,
    and refuses to save it; the saved folder must not claim GGUF quantization either.
    """
    import torch

    packed = [n for n, p in model.named_parameters() if not torch.is_floating_point(p)]
    if packed:
        raise ModelLoadError(f"transformers kept GGUF blocks packed ({packed[0]}, ...)")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
