"""The Starlette app: OpenAI-shaped endpoints over any ``WorkerAPI``.

Every blocking wait on a worker runs in a thread (``asyncio.to_thread``), so the event
loop never blocks; ``serve`` gives the loop a thread pool as large as the connections it
admits. A client that disconnects cancels its call: before its answer (or first chunk)
``waiting`` notices; mid-stream, the stream's generator is cancelled, and closing the
``ChatStream`` cancels the call in the worker. ``guard`` checks requests first.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from lilbee_workers import catalog
from lilbee_workers.aio import AsyncChatStream, AsyncWorkerAPI
from lilbee_workers.api import WorkerAPI, vectors_of
from lilbee_workers.errors import ProtocolError, WorkerError
from lilbee_workers.http import metrics, shapes
from lilbee_workers.http.errors import HttpError, error_body, retry_headers, worker_error_body
from lilbee_workers.http.guard import Guard
from lilbee_workers.http.schemas import (
    ChatCompletionBody,
    CompletionBody,
    EmbeddingsBody,
    RerankBody,
)
from lilbee_workers.http.waiting import Drain, final_frame, unless_gone
from lilbee_workers.transport.frames import EmbedRequest, EmbedResult, RerankRequest, RerankResult
from lilbee_workers.types import RoleState

B = TypeVar("B")
_SERVING = {s.value for s in RoleState if s.serving} | {RoleState.UNLOADED.value}
_DEFAULT_TEMPERATURE = 0.8  # llama.cpp's server default (OpenAI's is 1.0)


class HttpFace:
    """The endpoints, bound to one ``WorkerAPI`` (the daemon's ``Supervisor``).

    ``max_body_bytes`` and ``api_key`` may be changed while serving (``configure``)."""

    def __init__(
        self,
        api: WorkerAPI,
        max_body_bytes: int,
        api_key: str | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.api = api
        self.aio = AsyncWorkerAPI(api)
        self.max_body_bytes = max_body_bytes
        self.drain = Drain()
        self.guard = Guard(self._routes(), listen_host, api_key)

    def configure(self, max_body_bytes: int, api_key: str | None) -> None:
        """Take a reloaded config's body cap and API key (None: loopback, no key)."""
        self.max_body_bytes = max_body_bytes
        self.guard.api_key = api_key

    def app(self) -> ASGIApp:
        return self.guard

    def _routes(self) -> ASGIApp:
        routes = [
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        handlers = {WorkerError: _worker_error, HttpError: _http_error, HTTPException: _no_route}
        return Starlette(routes=routes, exception_handlers=handlers)

    # ------------------------------------------------------------------ endpoints

    async def embeddings(self, request: Request) -> Response:
        body = await self._body(request, EmbeddingsBody)
        request.state.param_names = {"texts": "input"}
        model, wanted = self._model("embed", body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:  # OpenAI's answer too; the Python API gives an empty array
            raise HttpError(400, "input must not be an empty list", "invalid_request", "input")
        embed = EmbedRequest(id=0, texts=texts, model=wanted)
        frame = await final_frame(self.api, request, "embed", embed, self.drain)
        if not isinstance(frame, EmbedResult):
            raise ProtocolError(f"expected embeddings, got {type(frame).__name__}")
        vectors = vectors_of(frame)
        data = [
            {"object": "embedding", "index": index, "embedding": shapes.encode(row, body)}
            for index, row in enumerate(vectors)
        ]
        usage = {"prompt_tokens": frame.prompt_tokens, "total_tokens": frame.prompt_tokens}
        return _json({"object": "list", "data": data, "model": model, "usage": usage})

    async def chat_completions(self, request: Request) -> Response:
        body = await self._body(request, ChatCompletionBody)
        shapes.refuse_unsupported(body)
        # max_completion_tokens (OpenAI's newer name) wins; 0 is a value, not "unset".
        max_tokens = body.max_tokens
        request.state.param_names = {"image": "messages"}
        if body.max_completion_tokens is not None:
            max_tokens = body.max_completion_tokens
            request.state.param_names["max_tokens"] = "max_completion_tokens"
        temperature = _DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
        image = shapes.image_of(body.messages)
        if image is not None:
            model, wanted = self._model("vision", body.model, aliases=("chat",))
            stream = await self.aio.vision(
                image,
                shapes.last_user_text(body.messages) or None,
                max_tokens=max_tokens if max_tokens is not None else 256,
                temperature=temperature,
                seed=body.seed,
                model=wanted,
            )
        else:
            model, wanted = self._model("chat", body.model)
            stream = await self.aio.chat(
                shapes.chat_messages(body.messages),
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=0.95 if body.top_p is None else body.top_p,
                stop=shapes.stops(body.stop),
                seed=body.seed,
                model=wanted,
            )
        return await self._answer(request, stream, model, chat=True, body=body)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request, CompletionBody)
        shapes.one_choice(body.n)
        prompt = body.prompt if isinstance(body.prompt, str) else shapes.single(body.prompt)
        model, wanted = self._model("chat", body.model)
        stream = await self.aio.complete(
            prompt,
            max_tokens=body.max_tokens,
            temperature=_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
            top_p=0.95 if body.top_p is None else body.top_p,
            stop=shapes.stops(body.stop),
            seed=body.seed,
            model=wanted,
        )
        return await self._answer(request, stream, model, chat=False, body=body)

    async def rerank(self, request: Request) -> Response:
        body = await self._body(request, RerankBody)
        model, wanted = self._model("rerank", body.model)
        documents = [d if isinstance(d, str) else d.text for d in body.documents]
        rerank = RerankRequest(
            id=0,
            query=body.query,
            documents=documents,
            top_n=body.top_n,
            return_documents=body.return_documents,
            model=wanted,
        )
        frame = await final_frame(self.api, request, "rerank", rerank, self.drain)
        if not isinstance(frame, RerankResult):
            raise ProtocolError(f"expected a rerank result, got {type(frame).__name__}")
        results: list[dict[str, Any]] = []
        for item in frame.results:
            result: dict[str, Any] = {"index": item.index, "relevance_score": item.score}
            if body.return_documents:
                result["document"] = {"text": item.document}
            results.append(result)
        return _json({"object": "list", "model": model, "results": results})

    async def models(self, request: Request) -> Response:
        served: dict[str, list[str]] = {}
        for status in self.api.status():
            for name in status.models or [metrics.model_name(status.model)]:
                served.setdefault(name, []).append(status.role)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "lilbee-workers", "roles": r}
            for name, r in served.items()
        ]
        return _json({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        roles = {status.role: status.state for status in self.api.status()}
        serving = any(state in _SERVING for state in roles.values())
        return _json({"status": "ok" if serving else "unavailable", "roles": roles},
                     200 if serving else 503)  # fmt: skip

    async def metrics(self, request: Request) -> Response:
        return Response(metrics.render(self.api.status), media_type=metrics.CONTENT_TYPE)

    # ------------------------------------------------------------------ helpers

    async def _body(self, request: Request, schema: type[B]) -> B:
        """The JSON body as ``schema``; 413 past ``max_body_bytes``, before reading it all."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
        try:
            return msgspec.json.decode(bytes(body), type=schema)
        except msgspec.ValidationError as exc:
            raise HttpError(400, f"invalid request body: {exc}", "invalid_request") from None
        except msgspec.DecodeError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}", "invalid_json") from None

    def _model(
        self, role: str, requested: str | None, aliases: tuple[str, ...] = ()
    ) -> tuple[str, str | None]:
        """(the name the answer reports, the model to ask the role for: None for its
        default); 404 when ``requested`` is not the role, an alias, or one of its models."""
        status = {s.role: s for s in self.api.status()}.get(role)
        if status is None:
            if role == "vision":
                raise HttpError(
                    400,
                    "a message has an image, but no vision role is configured here",
                    "invalid_request",
                    "messages",
                )
            raise HttpError(404, f"no {role} role is configured", "model_not_found", "model")
        if requested is not None and requested in status.models:
            return requested, requested
        # The role, an alias, or the config's own word for the default model.
        if requested in (None, "", role, catalog.DEFAULT_WORD, *aliases):
            default = status.models[0] if status.models else metrics.model_name(status.model)
            return default, None
        raise HttpError(
            404,
            f"model {requested!r} is not served here for {role} (it serves "
            f"{', '.join(map(repr, status.models))}; GET /v1/models lists them)",
            "model_not_found",
            "model",
        )

    async def _answer(
        self,
        request: Request,
        stream: AsyncChatStream,
        model: str,
        *,
        chat: bool,
        body: ChatCompletionBody | CompletionBody,
    ) -> Response:
        """The whole answer, or (``stream``) its server-sent events; a client that leaves
        before the answer or the first chunk cancels the call."""
        if not body.stream:
            try:
                result = await unless_gone(request, stream.collect(), stream.aclose, self.drain)
            finally:
                await stream.aclose()
            return _json(shapes.completion(result.text, result.finish_reason, model, chat, result))
        # The first chunk is read before the headers go out, so an error the worker
        # answers at once (a prompt over the context) gets its real status code.
        try:
            first: str | None = await unless_gone(
                request, stream.__anext__(), stream.aclose, self.drain
            )
        except StopAsyncIteration:
            first = None
        except BaseException:
            await stream.aclose()
            raise
        usage = body.stream_options is not None and bool(body.stream_options.include_usage)
        return StreamingResponse(
            shapes.events(stream, first, model, chat, usage, self.drain),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"request body over {limit} bytes", "request_too_large")


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(content), status, headers, "application/json")


async def _worker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WorkerError)
    status, body = worker_error_body(exc, getattr(request.state, "param_names", None))
    return _json(body, status, retry_headers(status, exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return _json(error_body(exc.message, kind, exc.code, exc.param), exc.status)


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such path) and 405 (wrong method), in OpenAI's body."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = error_body(message, "invalid_request_error", code)
    return _json(body, exc.status_code, dict(exc.headers or {}))
