"""Token pieces: each token id's own text and bytes, as OpenAI's logprobs report them.

A token of a byte-level BPE can hold part of a multi-byte character: decoded alone it is U+FFFD,
but OpenAI's ``bytes`` field carries its real bytes so that a client can join them. The bytes
come from the token's vocabulary string: GPT-2's byte-to-unicode alphabet, or SentencePiece's
``<0xHH>`` byte-fallback tokens; anything else is the UTF-8 of its decoded text.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

__all__ = ["TokenPieces"]

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable-unicode table, inverted (unicode char -> byte)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenPieces:
    """Text and bytes of single tokens of one tokenizer, cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def piece(self, token_id: int) -> tuple[str, bytes]:
        """The token's text (decoded alone) and its bytes."""
        cached = self._cache.get(token_id)
        if cached is not None:
            return cached
        text = str(self._tokenizer.decode([token_id], skip_special_tokens=False))
        raw = self._tokenizer.convert_ids_to_tokens(token_id)
        data = text.encode("utf-8")
        if isinstance(raw, str):
            decoder = _byte_decoder()
            fallback = _BYTE_FALLBACK.match(raw)
            if fallback:
                data = bytes([int(fallback.group(1), 16)])
            elif "\ufffd" in text and raw and all(c in decoder for c in raw):
                # Only where decoding lost bytes: elsewhere the decoded text is the truth (a
                # tokenizer whose alphabet merely overlaps GPT-2's must not be reinterpreted).
                data = bytes(decoder[c] for c in raw)
        self._cache[token_id] = (text, data)
        return text, data
