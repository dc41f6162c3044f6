"""Turning an HTTP caption request into images and options, refusing anything malformed, oversized
or unknown with a ``RequestError``: an HTTP status and one line naming the problem.

Two request forms: ``multipart/form-data`` with image file parts and an optional ``options`` field
(JSON), or ``application/json`` ``{"images": ["<base64>" | {"name", "data"}], "options": {...}}``.
Images are bytes sent by the client; nothing is ever fetched from a URL.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydantic import Field, ValidationError

from geometry_os.errors import GeometryOSError, format_validation_error
from geometry_os.systems.pixel_llm.plugin_api import GenerationConfig, StrictModel

SERVER_OPTIONS = {"return_token_ids", "explain"}  # options of the service, not of decoding
FIXED_OPTIONS = {"return_dict_in_generate", "output_attentions"}  # the service sets these itself


class RequestError(GeometryOSError):
    """A request the server refuses: HTTP ``status`` and a one-line message for the JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status


class BodyTooLarge(Exception):
    """A request body grew past the upload limit while it was read."""

    pass


@dataclass
class Upload:
    """One uploaded image: its name in messages and results, and a binary file object with its bytes."""

    name: str  # how messages and results name the image: its file name, or "image N"
    data: BinaryIO


@dataclass
class Options:
    """A caption request's options: the generation config and the server's own flags."""

    generation: GenerationConfig
    return_token_ids: bool = False
    explain: bool = False


class _Image(StrictModel):
    data: str = Field(description="the image file, base64")
    name: str | None = Field(None, max_length=200)


class JsonRequest(StrictModel):
    """A JSON caption request: base64 images (strings or ``{"data", "name"}`` objects) and options."""

    images: list[str | _Image] = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


Message = MutableMapping[str, Any]


def limited_receive(receive: Callable[[], Awaitable[Message]], limit: int) -> Callable[[], Awaitable[Message]]:
    """An ASGI ``receive`` that raises ``BodyTooLarge`` once more than ``limit`` body bytes arrived, so
    an oversized body without (or lying about) its Content-Length is refused while streaming."""
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
        return message

    return wrapped


def too_large(limit: int) -> RequestError:
    """The 413 error for a body over ``limit`` bytes."""
    return RequestError(413, f"request body over {limit} bytes (--max-upload-bytes)")


async def read_json(stream: AsyncIterator[bytes], limit: int) -> Any:
    """The JSON value of a streamed request body of at most ``limit`` bytes.

    Raises:
        BodyTooLarge: when the body grows past ``limit``.
        RequestError: 400 for an empty or malformed body.
    """
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge()
    if not body:
        raise RequestError(400, "empty body: expected a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise RequestError(400, f"malformed JSON body: {exc}") from None


def parse_options(raw: Any, max_num_beams: int) -> Options:
    """The request's options: ``GenerationConfig`` fields (same names, same validation) plus
    ``return_token_ids`` and ``explain``.

    Raises:
        RequestError: 400 for options that are not an object, set by the server, of the wrong type, beyond
            ``max_num_beams``, or invalid as generation settings.
    """
    from geometry_os.systems.pixel_llm.plugin_api import resolve_strategy

    if not isinstance(raw, dict):
        raise RequestError(400, f"options: expected a JSON object, got {type(raw).__name__}")
    fixed = sorted(FIXED_OPTIONS & raw.keys())
    if fixed:
        raise RequestError(400, f"options.{fixed[0]}: set by the server, not a request option")
    server = {k: raw[k] for k in SERVER_OPTIONS & raw.keys()}
    for key, value in server.items():
        if not isinstance(value, bool):
            raise RequestError(400, f"options.{key}: expected true or false (got {value!r})")
    try:
        generation = GenerationConfig.model_validate({k: v for k, v in raw.items() if k not in SERVER_OPTIONS})
    except ValidationError as exc:
        raise RequestError(400, format_validation_error(exc, source="options")) from None
    if generation.num_beams > max_num_beams:
        raise RequestError(
            400,
            f"options.num_beams: {generation.num_beams} is over this server's limit {max_num_beams} (--max-num-beams)",
        )
    try:
        resolve_strategy(generation)  # an unknown strategy, or options it refuses
    except GeometryOSError as exc:
        raise RequestError(400, f"options.strategy: {exc}") from None
    return Options(generation, **server)


def json_uploads(data: Any) -> tuple[list[Upload], Any]:
    """The images and raw options of a JSON caption request body ``data``.

    Raises:
        RequestError: 400 for a body that is not a valid request or an image that is not base64.
    """
    if not isinstance(data, dict):
        raise RequestError(400, f"JSON body: expected an object with 'images', got {type(data).__name__}")
    try:
        request = JsonRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestError(400, format_validation_error(exc, source="JSON body")) from None
    uploads = []
    for i, item in enumerate(request.images):
        text, name = (item, None) if isinstance(item, str) else (item.data, item.name)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, f"images[{i}]: not valid base64") from None
        uploads.append(Upload(name or f"image {i}", io.BytesIO(raw)))
    return uploads, request.options


def form_uploads(form: Any) -> tuple[list[Upload], Any]:
    """The images and raw options of a multipart caption request ``form``.

    Raises:
        RequestError: 400 for malformed options JSON, an unknown form field, or no image.
    """
    uploads: list[Upload] = []
    options: Any = {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):  # an UploadFile
            uploads.append(Upload(value.filename or f"image {len(uploads)}", value.file))
        elif key == "options":
            try:
                options = json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise RequestError(400, f"options: malformed JSON: {exc}") from None
        else:
            raise RequestError(400, f"unknown form field {key!r}: send image files and an optional 'options' field")
    if not uploads:
        raise RequestError(400, "no images: send one or more image files (multipart) or base64 'images' (JSON)")
    return uploads, options
