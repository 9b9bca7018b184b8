"""The worker refuses empty text itself too (issue 18 item 9), for a sender that skips
the supervisor's ``limits.check_content``: handlers called in process on gemma 270M."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lilbee_workers import RoleConfig
from lilbee_workers.errors import InvalidRequest
from lilbee_workers.roles.base import RequestContext
from lilbee_workers.roles.chat import ChatHandler
from lilbee_workers.roles.embed import EmbedHandler
from lilbee_workers.transport.frames import (
    ChatRequest,
    CompleteRequest,
    EmbedRequest,
    EmbedResult,
    Request,
)
from lilbee_workers.types import ChatMessage


def _context() -> RequestContext:
    return RequestContext(1, lambda frame: None, threading.Event())


def test_the_embed_worker_refuses_an_empty_text(model_path: str, tmp_path: Path) -> None:
    role = EmbedHandler(RoleConfig(model=model_path, n_ctx=128), model_path, str(tmp_path / "l"))
    role.load()
    try:
        answer = role.handle(EmbedRequest(id=1, texts=["bees"]), _context())
        assert isinstance(answer, EmbedResult) and answer.count == 1  # text is served
        for texts in ([""], ["bees", ""]):
            with pytest.raises(InvalidRequest) as caught:  # tokenize's BOS is not text
                role.handle(EmbedRequest(id=1, texts=texts), _context())
            assert caught.value.param == "texts"
    finally:
        role.llm.close()


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (ChatRequest(id=1, messages=[ChatMessage(role="user", content="")]), "messages"),
        (CompleteRequest(id=1, prompt=""), "prompt"),
        (CompleteRequest(id=1, prompt="Honey is", stop=[""], max_tokens=4), "stop"),
        (CompleteRequest(id=1, prompt="Honey is", max_tokens=0), "max_tokens"),
    ],
)
def test_the_chat_worker_refuses_empty_text_naming_the_field(
    chat_role: ChatHandler, request_: Request, param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_role.handle(request_, _context())
    assert caught.value.param == param


@pytest.fixture(scope="module")
def chat_role(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatHandler]:
    log = str(tmp_path_factory.mktemp("chat") / "chat.log")
    role = ChatHandler(RoleConfig(model=model_path, n_ctx=128), model_path, log)
    role.load()
    yield role
    role.llm.close()
