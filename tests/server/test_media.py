"""Image parts of chat messages: finding, limiting, reading data: URLs and decoding."""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.server import media
from hfserve.server.media import (
    decode_data_url,
    decode_image,
    image_parts,
    load_chat_inputs,
    refuse_images,
)
from hfserve.server.schemas import ChatMessage
from hfserve.settings import Settings
from tests.fixtures.tiny_vision import png_bytes, png_data_url

P = "messages.0.content.1"


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings.load(None, keys_file=tmp_path / "keys.json", **kw)


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def _messages(*urls: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="be brief"),
        ChatMessage.model_validate(
            {
                "role": "user",
                "content": [{"type": "text", "text": "look: "}, *map(_image_part, urls)],
            }
        ),
    ]


def test_image_parts_are_found_with_their_paths() -> None:
    messages = _messages("data:a", "data:b")
    assert [p for p, _ in image_parts(messages)] == [
        "messages.1.content.1",
        "messages.1.content.2",
    ]
    assert messages[1].text() == "look: "
    with pytest.raises(InvalidRequestError) as info:
        refuse_images(messages, "tiny-llama")
    assert info.value.param == "messages.1.content.1"
    assert info.value.code == "model_not_supported"
    refuse_images(messages[:1], "tiny-llama")  # text only: fine


def test_data_urls() -> None:
    png = png_bytes()
    assert decode_data_url(png_data_url(), P) == png
    quoted = "data:image/png," + urllib.parse.quote_from_bytes(png)
    assert decode_data_url(quoted, P) == png
    untyped = "data:;base64," + base64.b64encode(png).decode()
    assert decode_data_url(untyped, P) == png
    for bad, match in [
        ("data:image/png;base64", "must look like"),
        ("http:x,y", "must look like"),
        ("data:text/plain;base64,aGk=", "not an image"),
        ("data:image/png;base64,not base64!", "not valid base64"),
    ]:
        with pytest.raises(InvalidRequestError, match=match) as info:
            decode_data_url(bad, P)
        assert info.value.param == P


def test_decode_image(monkeypatch: pytest.MonkeyPatch) -> None:
    image = decode_image(png_bytes(40, 30), P)
    assert image.size == (40, 30) and image.mode == "RGB"
    for bad, match in [
        (b"", "empty"),
        (b"not an image", "cannot be decoded"),
        (png_bytes()[:60], "cannot be decoded"),  # truncated
    ]:
        with pytest.raises(InvalidRequestError, match=match) as info:
            decode_image(bad, P)
        assert info.value.param == P
    monkeypatch.setattr(media, "_MAX_PIXELS", 100)
    with pytest.raises(InvalidRequestError, match="40x30 pixels"):
        decode_image(png_bytes(40, 30), P)


async def test_load_chat_inputs(tmp_path: Path) -> None:
    inputs = await load_chat_inputs(_messages(png_data_url(), png_data_url()), _settings(tmp_path))
    assert inputs.messages == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "look: "}, {"type": "image"}, {"type": "image"}],
        },
    ]
    assert [i.size for i in inputs.images] == [(40, 30), (40, 30)]
    empty = await load_chat_inputs([ChatMessage(role="assistant")], _settings(tmp_path))
    assert empty.messages == [{"role": "assistant", "content": ""}] and empty.images == []


async def test_load_chat_inputs_limits_and_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="allows 1 per request") as info:
        await load_chat_inputs(
            _messages(png_data_url(), png_data_url()),
            _settings(tmp_path, max_images_per_request=1),
        )
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError, match="allow-remote-media") as info:
        await load_chat_inputs(
            _messages(png_data_url(), "https://example.com/a.png"), _settings(tmp_path)
        )
    assert info.value.param == "messages.1.content.2"
    with pytest.raises(InvalidRequestError, match="cannot be decoded") as info:
        await load_chat_inputs(_messages("data:image/png;base64,aGVsbG8="), _settings(tmp_path))
    assert info.value.param == "messages.1.content.1"


async def test_remote_media_goes_through_the_guard(tmp_path: Path) -> None:
    # On, but the production policy still refuses loopback (and everything not public).
    settings = _settings(tmp_path, allow_remote_media=True, remote_media_timeout=5)
    with pytest.raises(InvalidRequestError, match="non-public") as info:
        await load_chat_inputs(_messages("http://127.0.0.1:9/a.png"), settings)
    assert info.value.param == "messages.1.content.1"
