"""Images in chat messages: find the image parts, load their bytes, decode them with Pillow.

A chat request's ``image_url`` parts become ``{"type": "image"}`` parts of the messages handed
to the model's processor, with the decoded images in the same order. ``data:`` URLs are always
read; ``http(s)`` URLs only with ``allow_remote_media`` (see ``server.remote_media``). Every
error names the content part it comes from (``messages.0.content.1``), so a client can tell
which image was at fault; nothing here raises anything but ``InvalidRequestError``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from hfserve.errors import InvalidRequestError
from hfserve.server.schemas import ChatMessage, ImagePart
from hfserve.settings import Settings

__all__ = [
    "ChatInputs",
    "decode_data_url",
    "decode_image",
    "image_parts",
    "load_chat_inputs",
    "refuse_images",
]

# Pillow refuses more than 2x its MAX_IMAGE_PIXELS (~179M) with an error but only *warns*
# between 1x and 2x; refuse above this ourselves, before any pixel is decoded.
_MAX_PIXELS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ChatInputs:
    """Messages in the processor's format (``{"type": "image"}`` parts) and their images."""

    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)


def image_parts(messages: list[ChatMessage]) -> list[tuple[str, ImagePart]]:
    """Every image part with its parameter path (``messages.0.content.1``), in order."""
    found: list[tuple[str, ImagePart]] = []
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    found.append((f"messages.{i}.content.{j}", part))
    return found


def refuse_images(messages: list[ChatMessage], model_name: str) -> None:
    """Refuse image parts sent to a model that reads text only.

    Raises:
        InvalidRequestError: naming the first image part.
    """
    parts = image_parts(messages)
    if parts:
        raise InvalidRequestError(
            f"model {model_name!r} reads text only and cannot take image parts; "
            "send them to an image-text-to-text model",
            param=parts[0][0],
            code="model_not_supported",
        )


def decode_data_url(url: str, param: str) -> bytes:
    """The bytes of a ``data:`` URL (base64 or percent-encoded) whose type is an image.

    Raises:
        InvalidRequestError: not a data URL, not an image type, or bad base64.
    """
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().startswith("data:"):
        raise InvalidRequestError(
            "a data URL must look like data:image/png;base64,...", param=param
        )
    media_type, *params = header[5:].split(";")
    if media_type and not media_type.lower().startswith("image/"):
        raise InvalidRequestError(
            f"the data URL's media type is {media_type!r}, not an image", param=param
        )
    if "base64" in (p.strip().lower() for p in params):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequestError("the data URL is not valid base64", param=param) from None
    return urllib.parse.unquote_to_bytes(payload)


def decode_image(data: bytes, param: str) -> Any:
    """An RGB Pillow image from encoded bytes (PNG, JPEG, WebP, GIF ...; first frame).

    Raises:
        InvalidRequestError: empty, corrupt or not an image, or more than 64M pixels.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidRequestError("the image is empty", param=param)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > _MAX_PIXELS:
                raise InvalidRequestError(
                    f"the image is {width}x{height} pixels; at most {_MAX_PIXELS} are allowed",
                    param=param,
                )
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # Pillow reports truncated/corrupt data as OSError, bad headers as SyntaxError/ValueError.
        raise InvalidRequestError("the image cannot be decoded", param=param) from None


async def _image_bytes(settings: Settings, param: str, url: str) -> bytes:
    if url[:5].lower() == "data:":
        return decode_data_url(url, param)
    if not settings.allow_remote_media:
        raise InvalidRequestError(
            "only data: image URLs are accepted (this server does not fetch remote media; "
            "see --allow-remote-media)",
            param=param,
        )
    from hfserve.server.remote_media import fetch_media

    return await fetch_media(
        url,
        param=param,
        max_bytes=settings.remote_media_max_bytes,
        time_limit=settings.remote_media_timeout,
    )


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        content: Any
        if isinstance(message.content, list):
            content = [
                {"type": "image"}
                if isinstance(part, ImagePart)
                else {"type": "text", "text": part.text}
                for part in message.content
            ]
        else:
            content = message.content or ""
        out.append({"role": message.role, "content": content})
    return out


async def load_chat_inputs(messages: list[ChatMessage], settings: Settings) -> ChatInputs:
    """The processor's messages and the decoded images, fetched concurrently.

    Raises:
        InvalidRequestError: more images than ``max_images_per_request`` (naming ``messages``),
            or an image that cannot be read or decoded (naming its content part).
    """
    parts = image_parts(messages)
    limit = settings.max_images_per_request
    if len(parts) > limit:
        raise InvalidRequestError(
            f"the messages hold {len(parts)} images; this server allows {limit} per request",
            param="messages",
        )
    try:
        # A TaskGroup: the first failing image cancels the other fetches.
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_image_bytes(settings, p, part.image_url.url))
                for p, part in parts
            ]
    except* InvalidRequestError as errors:
        raise errors.exceptions[0] from None
    blobs = [(param, task.result()) for (param, _), task in zip(parts, tasks, strict=True)]
    # Decoding is CPU work: off the event loop, all images in one thread hop.
    images = await asyncio.to_thread(lambda: [decode_image(data, p) for p, data in blobs])
    return ChatInputs(_messages(messages), images)
