"""How a sentence-transformers folder pools token vectors into one sentence vector.

Read from ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``; a plain
encoder gets normalised mean pooling. Kept apart from the skill so the torch side
(``_encoder.py``) and the light side (``embeddings.py``) both import it without a cycle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfserve.errors import ModelLoadError

__all__ = ["POOLING_MODES", "PoolingConfig", "read_pooling_config"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
# sentence-transformers' older boolean keys, in the order it concatenates them.
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",  # nosec B105 - a pooling mode name
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PoolingConfig:
    """How token vectors become one sentence vector."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = True
    max_seq_length: int | None = None
    lowercase: bool = False
    transformer_path: str = ""
    sentence_transformers: bool = False


def _module_kind(module_type: str) -> str:
    # Newer sentence-transformers writes full paths under sentence_transformers.sentence_transformer
    return module_type.rsplit(".", 1)[-1]


def read_pooling_config(folder: Path) -> PoolingConfig:
    """Read the sentence-transformers configuration of ``folder`` (defaults for plain encoders).

    Raises:
        ModelLoadError: the folder declares a module or pooling mode this skill cannot run.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return PoolingConfig()
    try:
        modules: list[dict[str, Any]] = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {modules_file}: {exc}") from exc
    modes: tuple[str, ...] = ("mean",)
    normalize = False
    transformer_path = ""
    for module in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = _module_kind(str(module.get("type", "")))
        path = str(module.get("path", ""))
        if kind == _module_kind(_ST_TRANSFORMER):
            transformer_path = path
        elif kind == _module_kind(_ST_POOLING):
            modes = _read_modes(folder / path / "config.json")
        elif kind == _module_kind(_ST_NORMALIZE):
            normalize = True
        else:
            raise ModelLoadError(
                f"{folder}: sentence-transformers module {module.get('type')!r} is not supported "
                "by the embeddings skill (supported: Transformer, Pooling, Normalize)"
            )
    st_config = _read_json(folder / transformer_path / "sentence_bert_config.json")
    max_len = st_config.get("max_seq_length")
    return PoolingConfig(
        modes=modes,
        normalize=normalize,
        max_seq_length=int(max_len) if isinstance(max_len, int) else None,
        lowercase=bool(st_config.get("do_lower_case", False)),
        transformer_path=transformer_path,
        sentence_transformers=True,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _read_modes(path: Path) -> tuple[str, ...]:
    config = _read_json(path)
    raw = config.get("pooling_mode")
    if raw is None:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if config.get(key))
    else:
        modes = (raw,) if isinstance(raw, str) else tuple(str(m) for m in raw)
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise ModelLoadError(
            f"{path}: unknown pooling mode(s) {', '.join(unknown)} "
            f"(supported: {', '.join(POOLING_MODES)})"
        )
    return modes or ("mean",)
