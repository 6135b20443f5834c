"""Check, before anything loads, that a model source can be reached: fail fast, in one line.

Loading a model that is not there used to cost ~27 s of Hub retries and end in a confusing
error on the first request. These checks cost a ``stat`` for a folder and at most one short
Hub request for an id (no retries: a machine without network answers at once), so
``hfserve serve`` and ``hfserve models inspect`` can refuse a mistyped path, an unreachable
Hub id or a missing CUDA device before they print anything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hfserve.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from hfserve.settings import Settings

__all__ = ["HUB_TIMEOUT", "check_device", "check_source", "check_startup", "hub_hint"]

# Seconds the one Hub request may take: enough for a slow link, short enough to fail fast.
HUB_TIMEOUT = 5.0


def hub_hint(model_id: str) -> str:
    """The one line said when the Hub cannot be reached for ``model_id``."""
    return (
        f"cannot reach the Hugging Face Hub for {model_id!r} "
        "(offline? set HF_HUB_OFFLINE=1 and use a local folder)"
    )


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` was meant as a local path rather than a Hub id.

    Anything that is not a valid repo id is a path (``./x``, ``/x``, ``a/b/c``); so is
    ``models/x`` when a local ``models`` folder exists (a mistyped folder, not a Hub id).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]

    if source.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in source):
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    head, sep, _ = source.partition("/")
    return bool(sep) and Path(head).is_dir()


def check_source(source: str) -> None:
    """Refuse a model source that cannot load, with one clear line.

    A local path must exist; a Hub id must be in the local Hub cache or answer one short
    request to the Hub.

    Raises:
        ConfigError: ``no such folder: …`` for a path that does not exist.
        ModelLoadError: the Hub cannot be reached for the id (offline, no network), the id
            does not exist there, or it is gated.
    """
    path = Path(source).expanduser()
    if path.exists():
        return
    if _looks_like_path(source):
        raise ConfigError(f"no such folder: {source}")
    _check_hub_id(source)


def _check_hub_id(model_id: str) -> None:
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return  # downloaded before: transformers loads it from the cache, network or not
    try:
        model_info(model_id, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        raise ModelLoadError(
            f"{model_id!r} is gated on the Hugging Face Hub: accept its terms on its page, "
            "then log in (hf auth login) or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"no such folder or Hugging Face Hub model: {model_id!r} (private? set HF_TOKEN)"
        ) from None
    except Exception:  # offline mode, DNS, refused, timeout, 5xx: all "cannot reach"
        raise ModelLoadError(hub_hint(model_id)) from None


def check_device(device: str) -> None:
    """Refuse a ``--device`` this machine does not have (probes torch only for cuda/mps).

    Raises:
        ConfigError: ``no CUDA device``, no MPS, or an unknown device name.
    """
    if device.strip().lower() in {"auto", "cpu"}:
        return
    from hfserve.hardware import probe

    probe(device)


def check_startup(settings: Settings) -> None:
    """Everything ``hfserve serve`` can refuse before it starts: device, ``--model`` sources,
    ``--models-dir``.

    Raises:
        ConfigError: a missing folder or device.
        ModelLoadError: a Hub id that cannot be reached.
    """
    check_device(settings.device)
    from hfserve.runtime.specs import parse_model_spec

    for text in settings.models:
        check_source(parse_model_spec(text, task=settings.task).source)
    if settings.models_dir is not None and not settings.models_dir.is_dir():
        raise ConfigError(f"no such folder: {settings.models_dir} (--models-dir)")
