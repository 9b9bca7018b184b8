"""Request bodies of the OpenAI-style endpoints, as msgspec Structs.

Unknown fields are ignored (clients send many we do not use); a field of the wrong type
is a 400 naming it. ``stream`` and ``n`` may be ``null`` (the default, as in OpenAI's
API). Responses are plain dicts built in ``app``: their shape is OpenAI's.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageUrl


class Message(msgspec.Struct):
    role: str
    content: str | list[TextPart | ImagePart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatCompletionBody(msgspec.Struct):
    messages: list[Message]
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    # Refused when they ask for something we cannot do (``shapes.refuse_unsupported``).
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionBody(msgspec.Struct):
    prompt: str | list[str]
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None


class EmbeddingsBody(msgspec.Struct):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"


class RerankDocument(msgspec.Struct):
    text: str


class RerankBody(msgspec.Struct):
    query: str
    documents: list[str | RerankDocument]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False
