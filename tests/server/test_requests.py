"""The request/response plumbing shared by every route (hfserve/server/requests.py)."""

from __future__ import annotations

import json

import pytest

from hfserve.server.requests import dumps_json, sse_event


@pytest.mark.parametrize(
    "payload",
    [
        {"object": "list", "data": [{"embedding": [0.1, -2.5e-07, 3.0], "index": 0}]},
        {"text": "héllo ✓ 日本", "n": None, "ok": True},
        [1, 2**63 - 1, "x"],
    ],
)
def test_dumps_json_is_compact_utf8_json(payload: object) -> None:
    encoded = dumps_json(payload)
    assert json.loads(encoded) == payload
    # Compact and not ASCII-escaped, as clients and the response cache expect.
    assert b", " not in encoded and b": " not in encoded and b"\\u" not in encoded


def test_dumps_json_falls_back_for_what_orjson_refuses() -> None:
    # orjson stops at 64-bit integers; the standard library writes any integer.
    payload = {"big": 2**70, 1: "non-str key"}
    assert json.loads(dumps_json(payload)) == {"big": 2**70, "1": "non-str key"}


def test_an_event_stays_on_one_line_for_clients_that_split_like_str_splitlines() -> None:
    """Model text with NEL, LINE and PARAGRAPH SEPARATOR: httpx's ``aiter_lines`` (and the bench
    client on it) split there, so the event escapes them and still parses to the same text."""
    text = "a\x85b\u2028c\u2029d é"
    event = sse_event({"choices": [{"delta": {"content": text}}]})
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    lines = event.decode("utf-8").splitlines()
    assert len(lines) == 2  # the data line and the blank line that ends the event
    assert lines[1] == ""
    assert json.loads(lines[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == text
