"""The vision role: an image (PNG or JPEG bytes) and a prompt -> streamed text.

A language model plus its multimodal projector (mmproj / CLIP GGUF), run through
llama-cpp-python's mtmd chat handlers. The image is checked with Pillow before it gets
near llama.cpp: its width x height against ``max_image_pixels`` from the header, before
anything is decoded, then a full decode. It crosses the pipe as raw bytes and becomes a
data URI only inside the worker (no temp files).
"""

from __future__ import annotations

import base64
import io
import os
import threading
import warnings
from typing import TYPE_CHECKING, Any

from lilbee_workers.errors import InvalidRequest, ModelError
from lilbee_workers.hub.cache import resolve_path
from lilbee_workers.roles.base import (
    LoadedModel,
    RequestContext,
    RoleHandler,
    check_sampling,
    check_seed,
    open_llama,
)
from lilbee_workers.roles.chat import GenerationMeter, stream_chat
from lilbee_workers.transport.frames import Frame, Request, VisionRequest

if TYPE_CHECKING:
    from llama_cpp import Llama

DEFAULT_PROMPT = "Describe this image."
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}


def check_image(data: bytes, max_bytes: int, max_pixels: int) -> str:
    """The image's MIME type; ``InvalidRequest`` for an empty, oversized (bytes or
    pixels), corrupt or non-PNG/JPEG payload. The pixel count comes from the header and
    is checked before any pixel is decoded."""
    if not data:
        raise InvalidRequest("image is empty")
    if len(data) > max_bytes:
        raise InvalidRequest(f"image is {len(data)} bytes, over the {max_bytes}-byte cap")
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns inside open() past its own limit (~89 Mpx); the size is
            # checked against our cap right below, which names the size and the cap.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                width, height = image.size
                if width * height > max_pixels:
                    raise InvalidRequest(
                        f"image is {width}x{height} = {width * height} pixels, over the "
                        f"{max_pixels}-pixel cap (max_image_pixels)"
                    )
                image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # verify() misses truncated pixel data; decoding does not
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidRequest(
            f"image is too large to decode ({exc}); the cap is {max_pixels} pixels "
            "(max_image_pixels)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidRequest("image is not a readable PNG or JPEG: unrecognised data") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"image is not a readable PNG or JPEG: {exc}") from None
    if kind not in _MIME:
        raise InvalidRequest(f"image must be PNG or JPEG, got {kind or 'unknown'}")
    return _MIME[kind]


class VisionHandler(RoleHandler):
    role = "vision"
    accepts = (VisionRequest,)
    metered = False  # mtmd's image encoder polls no abort callback: no stall detection
    llm: Llama

    def load(self) -> LoadedModel:
        from llama_cpp.llama_chat_format import Llava15ChatHandler, MTMDChatHandler
        from PIL import Image

        # Pillow refuses outright images over twice its own limit; in this (vision
        # worker) process, lift that limit to our cap so only ``max_image_pixels`` decides.
        if Image.MAX_IMAGE_PIXELS is not None:
            Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, self.config.max_image_pixels)
        projector = resolve_path(self.config.mmproj or "", projector=True)  # hf: from cache
        if not os.path.isfile(projector):
            raise ModelError(f"multimodal projector not found: {projector}")
        self.llm = open_llama(self.config, self.model_path, self.log_path)
        handler: Any
        if "tokenizer.chat_template" in self.llm.metadata:
            handler, template = MTMDChatHandler(clip_model_path=projector), "model"
        else:
            handler, template = Llava15ChatHandler(clip_model_path=projector), "fallback:llava-1.5"
        self.llm.chat_handler = handler
        try:  # load the projector now, so a bad one fails the start, not the first call
            handler._init_mtmd_context(self.llm)
        except Exception as exc:
            raise ModelError(f"llama.cpp could not load the projector {projector}: {exc}") from None
        self.meter = GenerationMeter(self.llm, threading.Event())
        return LoadedModel(n_ctx=self.llm.n_ctx(), chat_template=template)

    def handle(self, request: Request, ctx: RequestContext) -> Frame:
        assert isinstance(request, VisionRequest)
        try:
            mime = check_image(
                request.image, self.config.max_image_bytes, self.config.max_image_pixels
            )
        except InvalidRequest as exc:
            exc.param = "image"
            raise
        check_sampling(request.max_tokens, request.temperature)
        check_seed(request.seed)
        uri = f"data:{mime};base64,{base64.b64encode(request.image).decode('ascii')}"
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": uri}},
                    {"type": "text", "text": request.prompt or DEFAULT_PROMPT},
                ],
            }
        ]
        return stream_chat(
            self.llm,
            self.meter,
            ctx,
            messages,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
        )
