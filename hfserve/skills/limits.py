"""The limits a loaded model declares, read once at load time, and the check on token ids.

A model's context length, its vocabulary and its longest input come from its config and
tokenizer, which mark "no limit" with huge sentinels (transformers' ``model_max_length`` is
``int(1e30)`` when a tokenizer has none). ``declared_limit`` is the one place that tells a real
limit from a sentinel; the skill protocols (``skills/base.py``) expose the result as
``max_input_tokens`` and ``vocab_size``, and the routes check requests against those.
"""

from __future__ import annotations

from collections.abc import Sequence

from hfserve.errors import InvalidRequestError

__all__ = ["NO_LIMIT", "check_token_ids", "declared_limit"]

NO_LIMIT = 1_000_000_000
"""A declared limit this large or larger means "none": no real context or vocabulary is."""


def declared_limit(*values: object) -> int | None:
    """The tightest real limit among ``values``: positive numbers below ``NO_LIMIT``.

    ``None`` when no value is one (missing, zero, a sentinel): the caller decides the fallback.
    """
    limits = [
        int(v)
        for v in values
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < NO_LIMIT
    ]
    return min(limits) if limits else None


def check_token_ids(ids: Sequence[object], vocab_size: int, *, param: str, where: str = "") -> None:
    """Refuse token ids that are not integers in ``[0, vocab_size)``.

    Args:
        ids: the ids a request sent instead of text.
        vocab_size: the model's ``vocab_size``.
        param: the request field to name in the error.
        where: a prefix that says which input, e.g. ``"input 2: "``.

    Raises:
        InvalidRequestError: an id is not an integer in range.
    """
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids):
        raise InvalidRequestError(
            f"{where}token ids must be integers in [0, {vocab_size})", param=param
        )
