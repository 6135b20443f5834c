"""Deterministic prompts and request bodies for a benchmark run.

Prompts are drawn from a list of common English words, each of which is one token in the
usual byte-level BPE vocabularies (with its leading space), so ``--prompt-tokens N`` asks for
N words and lands close to N tokens; the server's ``usage`` reports the exact count. Every
request gets its own prompt (seeded by ``seed`` and its index) so a server's response or
prefix cache cannot turn the benchmark into a cache benchmark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hfserve.bench.config import BenchConfig, Endpoint

__all__ = ["PreparedRequest", "Workload", "build_prompt"]

_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "over",
    "new",
    "sound",
    "take",
    "only",
    "little",
    "work",
    "know",
    "place",
    "year",
    "live",
    "me",
    "back",
    "give",
    "most",
    "very",
    "after",
    "thing",
    "our",
    "just",
    "name",
    "good",
    "sentence",
    "man",
    "think",
    "say",
    "great",
    "where",
    "help",
    "through",
    "much",
    "before",
    "line",
    "right",
    "too",
    "mean",
    "old",
    "any",
    "same",
    "tell",
    "boy",
    "follow",
    "came",
    "want",
    "show",
    "also",
    "around",
    "form",
    "three",
    "small",
    "set",
    "put",
    "end",
    "does",
    "another",
    "well",
    "large",
    "must",
    "big",
    "even",
    "such",
    "because",
    "turn",
    "here",
    "why",
    "ask",
    "went",
    "men",
    "read",
    "need",
    "land",
    "different",
    "home",
    "us",
    "move",
    "try",
    "kind",
    "hand",
    "picture",
    "again",
    "change",
    "off",
    "play",
    "spell",
    "air",
    "away",
    "animal",
    "house",
    "point",
    "page",
    "letter",
    "mother",
    "answer",
    "found",
    "study",
    "still",
    "learn",
    "should",
    "world",
    "high",
)


def build_prompt(seed: int, index: int, words: int) -> str:
    """The prompt of request ``index``: ``words`` common words, the same for the same seed."""
    # A string seed is hashed with SHA-512 by ``random.Random``: stable across processes.
    rng = random.Random(f"hfserve-bench:{seed}:{index}")
    return " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request body and the prompt size used when the server reports no usage."""

    body: dict[str, Any]
    prompt_tokens: int


class Workload:
    """Builds the body of the i-th request of a run from its configuration."""

    def __init__(self, config: BenchConfig, model: str | None) -> None:
        self._config = config
        self._model = model

    def request(self, index: int) -> PreparedRequest:
        """The request with this index (warmup requests use negative indices)."""
        config = self._config
        prompt = build_prompt(config.seed, index, config.prompt_tokens)
        body: dict[str, Any] = {}
        if self._model is not None:
            body["model"] = self._model
        if config.endpoint is Endpoint.EMBEDDINGS:
            body["input"] = prompt
        else:
            if config.endpoint is Endpoint.CHAT:
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            body["max_tokens"] = config.max_tokens
            body["stream"] = config.streaming
            if config.streaming:
                # Ask for the exact token counts in a final chunk instead of counting chunks.
                body["stream_options"] = {"include_usage": True}
        # The peer's own fields win: they exist to override what a generic client sends.
        body.update(config.extra_body)
        return PreparedRequest(body=body, prompt_tokens=config.prompt_tokens)
