"""The loaded cross-encoder: query/document pairs encoded together, one logit each, micro-batched.

Imported only when a reranker is loaded (it imports torch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch

from hfserve.errors import InvalidRequestError, ShuttingDownError
from hfserve.skills._encoder import _INLINE_TOKENIZE_CHARS, EncoderModel
from hfserve.skills.base import ScoreResult

__all__ = ["CrossEncoderModel", "PairIds"]


class PairIds(list[int]):
    """Input ids of one encoded pair (a list, so the batcher's cost is its length) and where the
    second text starts, for models that tell the two segments apart with token type ids."""

    __slots__ = ("second_start",)

    def __init__(self, ids: Sequence[int], second_start: int) -> None:
        super().__init__(ids)
        self.second_start = second_start


class CrossEncoderModel(EncoderModel[float]):
    """A loaded cross-encoder serving ``score`` (satisfies ``RerankModel``).

    Scores are the logit through a sigmoid, as sentence-transformers' ``CrossEncoder``, vLLM
    and TEI report them; their order is the logits' order.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Token types go to the model exactly when its tokenizer makes them (BERT, MiniLM,
        # ELECTRA do; RoBERTa-style bge-reranker does not), as sentence-transformers passes them.
        names = getattr(self._tokenizer, "model_input_names", ()) or ()
        self._typed = "token_type_ids" in names

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a lone sequence (specials included)."""
        return len(self._tokenizer(text)["input_ids"])

    async def score(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
        """The relevance of each (query, document) pair, micro-batched with other callers."""
        if self._batcher is None or self._model is None:
            raise ShuttingDownError(f"model {self.model_id!r} is not running (unloaded or closing)")
        if not pairs:
            raise InvalidRequestError("at least one document is required", param="documents")
        if sum(len(q) + len(d) for q, d in pairs) <= _INLINE_TOKENIZE_CHARS:
            encoded, tokens, truncated = self.encode_pairs(pairs)
        else:
            encoded, tokens, truncated = await asyncio.to_thread(self.encode_pairs, pairs)
        scores = await self._batcher.submit_many(encoded)
        return ScoreResult(scores=scores, prompt_tokens=tokens, truncated=truncated)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[PairIds], int, int]:
        """Ids of each pair cut to ``max_input_tokens`` (longest text first, as
        sentence-transformers does), the tokens they hold and how many pairs were cut."""
        queries = [q for q, _ in pairs]
        documents = [d for _, d in pairs]
        cut = self._tokenizer(
            queries,
            documents,
            truncation="longest_first",
            max_length=self._max_length,
            return_token_type_ids=True,
            return_overflowing_tokens=False,
            return_length=False,
        )
        out: list[PairIds] = []
        for ids, types in zip(cut["input_ids"], cut["token_type_ids"], strict=True):
            second = types.index(1) if 1 in types else len(ids)
            out.append(PairIds(ids, second))
        # A pair at the limit may have been cut; count those that would be longer untruncated.
        at_limit = [i for i, ids in enumerate(out) if len(ids) >= self._max_length]
        truncated = 0
        if at_limit:
            full = self._tokenizer([queries[i] for i in at_limit], [documents[i] for i in at_limit])
            truncated = sum(len(ids) > self._max_length for ids in full["input_ids"])
        return out, sum(len(ids) for ids in out), truncated

    def _run_padded(self, batch: Sequence[list[int]]) -> list[float]:
        input_ids, mask = self._pad(batch)
        types = None
        if self._typed:
            types = torch.zeros_like(input_ids)
            for row, ids in enumerate(batch):
                second = ids.second_start if isinstance(ids, PairIds) else len(ids)
                start = input_ids.shape[1] - len(ids) if self._pad_left else 0
                types[row, start + second : start + len(ids)] = 1
        with torch.inference_mode():
            return self._scores(input_ids, mask, types)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[float]:
        return self._scores(input_ids, attention_mask, None)

    def _scores(
        self, input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None
    ) -> list[float]:
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if types is not None:
            inputs["token_type_ids"] = types.to(input_ids.device)
        logits = self._model(**inputs).logits.float()
        scores: list[float] = torch.sigmoid(logits[:, 0]).cpu().tolist()
        return scores
