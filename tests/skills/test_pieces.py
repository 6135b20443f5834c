"""Token pieces: a token's own text and its real bytes."""

from __future__ import annotations

from typing import Any

from hfserve.skills.generation.pieces import TokenPieces


class _Tokenizer:
    """A tokenizer with a byte-level, a byte-fallback and an added token."""

    vocab: dict[int, Any] = {
        0: "Ġhello",  # GPT-2 byte-level: "Ġ" is a space
        1: "Ã",  # the first byte of "é" alone (0xC3)
        2: "<0xE2>",  # SentencePiece byte fallback
        3: None,  # a tokenizer that gives no string for an id
        4: "ÃĦÃ",  # only GPT-2-alphabet chars, but decodes cleanly: keep the text
    }
    text: dict[int, str] = {0: " hello", 1: "\ufffd", 2: "\ufffd", 3: "<x>", 4: "ok"}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.text[ids[0]]

    def convert_ids_to_tokens(self, token_id: int) -> Any:
        return self.vocab[token_id]


def test_pieces_give_text_and_real_bytes() -> None:
    pieces = TokenPieces(_Tokenizer())
    assert pieces.piece(0) == (" hello", b" hello")
    assert pieces.piece(1) == ("\ufffd", b"\xc3")
    assert pieces.piece(2) == ("\ufffd", b"\xe2")
    assert pieces.piece(3) == ("<x>", b"<x>")
    assert pieces.piece(4) == ("ok", b"ok")
    assert pieces.piece(1) is pieces.piece(1)  # cached
