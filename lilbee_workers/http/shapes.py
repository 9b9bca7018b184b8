"""OpenAI's shapes: request pieces read from bodies, answers and stream events built.

Pure functions of their inputs (the stream events read the stream they are given), so
the endpoints in ``app`` stay a page of routing.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from lilbee_workers.aio import AsyncChatStream
from lilbee_workers.errors import WorkerError
from lilbee_workers.http.errors import HttpError, worker_error_body
from lilbee_workers.http.schemas import (
    ChatCompletionBody,
    EmbeddingsBody,
    ImagePart,
    Message,
    TextPart,
)
from lilbee_workers.http.waiting import Drain, next_chunk


async def events(
    stream: AsyncChatStream,
    first: str | None,
    model: str,
    chat: bool,
    usage: bool = False,
    drain: Drain | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: chunks, a last one with the finish reason, with ``usage`` a
    chunk with no choices and the token counts (OpenAI's ``include_usage``), then
    ``[DONE]``; an error after the first chunk, or the daemon's drain deadline passing,
    is an ``error`` event (the status was already sent), always between events."""
    response_id, created = ident(chat), int(time.time())

    def event(choices: list[dict[str, Any]], counts: dict[str, int] | None = None) -> str:
        kind = "chat.completion.chunk" if chat else "text_completion"
        frame: dict[str, Any] = {"id": response_id, "object": kind, "created": created,
                                 "model": model, "choices": choices}  # fmt: skip
        if usage:
            frame["usage"] = counts
        return f"data: {msgspec.json.encode(frame).decode()}\n\n"

    def choice(text: str | None, finish: str | None, opening: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, str] = {} if text is None else {"content": text}
        if opening:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "finish_reason": finish}

    try:
        if chat:
            yield event([choice("", None, opening=True)])
        if first is not None:
            yield event([choice(first, None)])
            while (text := await next_chunk(stream, drain)) is not None:
                yield event([choice(text, None)])
        result = stream.result
        yield event([choice(None, result.finish_reason if result is not None else "stop")])
        if usage and result is not None:
            yield event([], usage_of(result))
        yield "data: [DONE]\n\n"
    except WorkerError as exc:
        _, body = worker_error_body(exc)
        yield f"data: {msgspec.json.encode(body).decode()}\n\n"
    finally:
        await stream.aclose()  # a client gone mid-stream: cancel the generation


def usage_of(result: Any) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def completion(text: str, finish: str, model: str, chat: bool, result: Any) -> dict[str, Any]:
    usage = usage_of(result)
    if chat:
        message = {"role": "assistant", "content": text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {"id": ident(chat), "object": kind, "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage}  # fmt: skip


def ident(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def encode(row: Any, body: EmbeddingsBody) -> Any:
    if body.encoding_format == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode()
    return row.tolist()


def text_of(message: Message) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    return "".join(part.text for part in message.content if isinstance(part, TextPart))


def last_user_text(messages: list[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return text_of(message)
    return ""


def image_of(messages: list[Message]) -> bytes | None:
    """The image of a vision request (a ``data:`` URL; the last one if several)."""
    urls = [
        part.image_url.url
        for message in messages
        if isinstance(message.content, list)
        for part in message.content
        if isinstance(part, ImagePart)
    ]
    if not urls:
        return None
    url = urls[-1]
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or not header.endswith(";base64"):
        raise HttpError(
            400,
            "image_url must be a data: URL with base64 image bytes (the server fetches nothing)",
            "invalid_image_url",
            "messages",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "image_url: invalid base64", "invalid_image_url", "messages") from None


def stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else stop


def single(prompts: list[str]) -> str:
    if len(prompts) != 1:
        raise HttpError(400, "prompt: send one prompt per request", "invalid_request", "prompt")
    return prompts[0]


def one_choice(n: int | None) -> None:
    if n not in (None, 1):
        raise HttpError(400, "n: only n = 1 is supported", "invalid_request", "n")


def refuse_unsupported(body: ChatCompletionBody) -> None:
    """A 400 naming the parameter, for what a chat body asks that we cannot honour
    (rather than answering as if it had not asked)."""
    one_choice(body.n)
    for name in ("tools", "functions"):
        if getattr(body, name):
            raise HttpError(
                400, f"{name}: tool and function calling is not supported", "invalid_request", name
            )
    kind = None if body.response_format is None else body.response_format.get("type")
    if body.response_format is not None and kind != "text":
        raise HttpError(
            400,
            f"response_format: only {{'type': 'text'}} is supported, got {kind!r}",
            "invalid_request",
            "response_format",
        )


def chat_messages(messages: list[Message]) -> list[dict[str, str]]:
    """The messages as the chat role takes them; ``developer`` (OpenAI's newer name for
    ``system``) becomes ``system``."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": text_of(m)}
        for m in messages
    ]
