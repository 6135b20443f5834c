"""OpenAI's two logprobs shapes, from the skill's per-token :class:`TokenLogprob` entries.

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": None}``.
Completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
"text_offset"}``, where ``text_offset`` counts characters from the start of the completion's text
(hfserve does not echo the prompt) and each ``top_logprobs`` mapping also holds the chosen token,
as OpenAI's does ("up to logprobs + 1 elements").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hfserve.skills.base import TokenLogprob

__all__ = ["chat_logprobs", "completion_logprobs"]


def _entry(item: TokenLogprob) -> dict[str, Any]:
    return {"token": item.token, "logprob": item.logprob, "bytes": list(item.token_bytes)}


def chat_logprobs(items: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The chat ``logprobs`` object of some tokens."""
    content = [_entry(item) | {"top_logprobs": [_entry(t) for t in item.top]} for item in items]
    return {"content": content, "refusal": None}


def completion_logprobs(items: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset`` is where these tokens' text starts."""
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    top = []
    for item in items:
        alternatives = {t.token: t.logprob for t in item.top}
        alternatives.setdefault(item.token, item.logprob)
        top.append(alternatives)
    return {
        "tokens": [item.token for item in items],
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": top,
        "text_offset": offsets,
    }
