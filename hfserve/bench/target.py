"""Which model and endpoint a benchmark drives, chosen from what ``GET /v1/models`` lists.

A server may serve chat models beside embedding or classification models; driving chat at an
embedding model only measures a wall of 400s. hfserve's listing says each model's ``task``, so
the run picks a model that serves the endpoint, or the endpoint that fits the model. Other
OpenAI-compatible servers list no task: their models are taken at their word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.errors import ConfigError
from hfserve.skills.base import TASK_EMBEDDINGS, TASK_GENERATION

__all__ = ["ListedModel", "choose_target"]

# What the bench can drive for each task hfserve reports, the first being the default.
_ENDPOINTS: dict[str, tuple[Endpoint, ...]] = {
    TASK_GENERATION: (Endpoint.CHAT, Endpoint.COMPLETIONS),
    TASK_EMBEDDINGS: (Endpoint.EMBEDDINGS,),
}


@dataclass(frozen=True, slots=True)
class ListedModel:
    """One entry of ``GET /v1/models``: its id and, from hfserve, its task."""

    id: str
    task: str | None = None

    def serves(self, endpoint: Endpoint) -> bool:
        """Whether requests to ``endpoint`` can succeed (unknown task: assume so)."""
        return self.task is None or endpoint in _ENDPOINTS.get(self.task, ())

    def describe(self) -> str:
        """``demo-chat (chat, completions)``, for error messages."""
        if self.task is None:
            return self.id
        endpoints = _ENDPOINTS.get(self.task)
        what = (
            ", ".join(e.value for e in endpoints)
            if endpoints
            else f"{self.task}: no bench endpoint"
        )
        return f"{self.id} ({what})"


def choose_target(
    config: BenchConfig, listed: Sequence[ListedModel]
) -> tuple[BenchConfig, str | None]:
    """The config with the endpoint to drive, and the model to request.

    ``--model`` wins; without it the first listed model that serves the endpoint. Without
    ``--endpoint`` (``config.auto_endpoint``) a chat model is preferred, else the endpoint that
    fits the first model the bench can drive.

    Raises:
        ConfigError: no listed model serves the endpoint (the message says which serve what),
            or ``--model``'s task rules out ``--endpoint``.
    """
    by_id = {m.id: m for m in listed}
    if config.model is not None:
        chosen = by_id.get(config.model, ListedModel(config.model))
        if chosen.serves(config.endpoint):
            return config, config.model
        if config.auto_endpoint and chosen.task in _ENDPOINTS:
            return replace(config, endpoint=_ENDPOINTS[chosen.task][0]), config.model
        raise ConfigError(
            f"model {chosen.describe()} does not serve {config.endpoint.value}; "
            f"pass --endpoint or another --model ({_menu(listed)})",
            param="model",
        )
    if not listed:
        return config, None
    fitting = [m for m in listed if m.serves(config.endpoint)]
    if fitting:
        return config, fitting[0].id
    if config.auto_endpoint:
        for model in listed:
            if model.task in _ENDPOINTS:
                return replace(config, endpoint=_ENDPOINTS[model.task][0]), model.id
    raise ConfigError(
        f"no model at {config.url} serves {config.endpoint.value}: {_menu(listed)}",
        param="endpoint",
    )


def _menu(listed: Sequence[ListedModel]) -> str:
    return "; ".join(m.describe() for m in listed) or "the server lists no model"
