"""vision through a real worker: gemma 3 270M + a generated CLIP projector, via mtmd."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import wait_for_state, wait_until
from lilbee_workers import (
    InvalidRequest,
    Supervisor,
    SupervisorConfig,
    WorkerCrashed,
    WorkerUnavailable,
)
from lilbee_workers.roles.vision import check_image
from tiny_models import png_bytes


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    pixels = np.full((30, 30, 3), 200, dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width`` x ``height`` black pixels, written by hand:
    the rows are all zeros, so 100 Mpx compress to about 12 KB."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    rows = bytes((1 + (width + 7) // 8) * height)  # filter byte 0 + packed bits, per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def memory_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def vision_sup(
    make_config: Callable[..., SupervisorConfig], tiny_projector: str
) -> Iterator[Supervisor]:
    config = make_config(
        {"vision": {"mmproj": tiny_projector, "max_image_bytes": 200_000, "n_ctx": 1024}}
    )
    with Supervisor(config) as sup:
        yield sup


def test_png_and_jpeg_give_streamed_text(vision_sup: Supervisor) -> None:
    for image in (png_bytes(), jpeg_bytes()):
        stream = vision_sup.vision(image, "What is in the picture?", max_tokens=6)
        chunks = list(stream)
        assert stream.result is not None
        assert chunks and "".join(chunks) == stream.result.text
        assert stream.result.completion_tokens == 6
        assert stream.result.prompt_tokens > 16  # the 16 image tokens plus the text
    [status] = vision_sup.status()
    assert status.chat_template == "fallback:llava-1.5"


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"definitely not an image", "not a readable PNG or JPEG"),
        (png_bytes()[:80], "not a readable PNG or JPEG"),
        (b"", "image is empty"),
        (b"\x89PNG" + b"\0" * 300_000, "over the 200000-byte cap"),
    ],
    ids=["garbage", "truncated", "empty", "oversized"],
)
def test_bad_images_are_invalid_and_the_worker_keeps_serving(
    vision_sup: Supervisor, payload: bytes, match: str
) -> None:
    pid = vision_sup.worker_pid("vision")
    with pytest.raises(InvalidRequest, match=match):
        vision_sup.vision(payload).collect()
    assert vision_sup.worker_pid("vision") == pid
    assert vision_sup.vision(png_bytes(), max_tokens=2).collect().completion_tokens == 2


def test_gif_is_refused(vision_sup: Supervisor) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    with pytest.raises(InvalidRequest, match="must be PNG or JPEG, got GIF"):
        vision_sup.vision(buffer.getvalue()).collect()


def test_killed_before_the_first_chunk_is_retried(vision_sup: Supervisor) -> None:
    before = vision_sup.role_status("vision").restarts
    pid = vision_sup.worker_pid("vision")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    stream = vision_sup.vision(png_bytes(), max_tokens=4, temperature=0.0)
    wait_until(lambda: vision_sup.role_status("vision").in_flight == 1, what="in flight")
    os.kill(pid, signal.SIGKILL)
    result = stream.collect()
    assert result.completion_tokens == 4
    assert vision_sup.role_status("vision").restarts == before + 1


def test_killed_after_a_chunk_reports_the_delivered_count(vision_sup: Supervisor) -> None:
    wait_for_state(vision_sup, "vision", "ready")
    stream = vision_sup.vision(png_bytes(), max_tokens=200, temperature=0.0)
    assert next(stream)
    pid = vision_sup.worker_pid("vision")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match=r"after \d+ chunk\(s\) had been delivered"):
        list(stream)
    wait_for_state(vision_sup, "vision", "ready")
    assert vision_sup.vision(png_bytes(), max_tokens=2).collect().completion_tokens == 2


def test_missing_projector_fails_the_role_with_the_reason(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    with Supervisor(make_config({"vision": {"mmproj": "/nope/mmproj.gguf"}})) as sup:
        [status] = sup.status()
        assert status.state == "failed"
        assert "multimodal projector not found: /nope/mmproj.gguf" in status.last_exit
        with pytest.raises(WorkerUnavailable):
            sup.vision(png_bytes()).collect()


def test_all_four_roles_serve_concurrently_without_blocking_each_other(
    make_config: Callable[..., SupervisorConfig], tiny_reranker: str, tiny_projector: str
) -> None:
    config = make_config(
        {
            "embed": {},
            "chat": {},
            "rerank": {"model": tiny_reranker, "n_ctx": 256},
            "vision": {"mmproj": tiny_projector, "n_ctx": 1024},
        }
    )
    with Supervisor(config) as sup:
        chat_running = threading.Event()
        chat_done = threading.Event()
        finished: dict[str, float] = {}
        errors: list[BaseException] = []

        def chat() -> None:
            stream = sup.chat("Tell a long story about bees.", max_tokens=120, temperature=0.0)
            next(stream)
            chat_running.set()
            stream.collect()
            finished["chat"] = time.monotonic()
            chat_done.set()

        def embed() -> None:
            chat_running.wait(30)
            for _ in range(3):
                assert sup.embed(["bees"]).shape == (1, 640)
            finished["embed"] = time.monotonic()

        def rerank() -> None:
            chat_running.wait(30)
            for _ in range(10):
                assert len(sup.rerank("bees", ["a", "b", "c"])) == 3
            finished["rerank"] = time.monotonic()

        def vision() -> None:
            chat_running.wait(30)
            assert sup.vision(png_bytes(), max_tokens=3).collect().completion_tokens == 3
            finished["vision"] = time.monotonic()

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as exc:
                    errors.append(exc)

            return run

        threads = [threading.Thread(target=guarded(f)) for f in (chat, embed, rerank, vision)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert set(finished) == {"chat", "embed", "rerank", "vision"}
        # rerank (a tiny model) finished while chat was still streaming: no role waits
        # on another.
        assert finished["rerank"] < finished["chat"]
        assert {s.role: s.state for s in sup.status()} == dict.fromkeys(
            ("embed", "chat", "rerank", "vision"), "ready"
        )


def test_image_declaring_100_megapixels_is_refused_from_its_header(vision_sup: Supervisor) -> None:
    bomb = huge_png(10_000, 10_000)
    assert len(bomb) < 50_000
    pid = vision_sup.worker_pid("vision")
    assert pid is not None
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # reset the worker's peak RSS (VmHWM) to its current RSS
    rss_before = memory_kb(pid, "VmRSS")
    started = time.monotonic()
    with pytest.raises(
        InvalidRequest,
        match=r"image is 10000x10000 = 100000000 pixels, over the 64000000-pixel cap "
        r"\(max_image_pixels\)",
    ):
        vision_sup.vision(bomb).collect()
    assert time.monotonic() - started < 2.0
    # Decoding it would take 100 MB in Pillow (1 byte per pixel) and 300 MB in llama.cpp.
    assert memory_kb(pid, "VmHWM") - rss_before < 30_000
    assert vision_sup.worker_pid("vision") == pid
    assert vision_sup.vision(png_bytes(), max_tokens=2).collect().completion_tokens == 2


def test_pixel_cap_is_inclusive_and_checked_before_decoding() -> None:
    image = png_bytes(48, 40)
    assert check_image(image, 1 << 20, 48 * 40) == "image/png"
    with pytest.raises(InvalidRequest, match=r"48x40 = 1920 pixels, over the 1919-pixel cap"):
        check_image(image, 1 << 20, 48 * 40 - 1)
    # A header claiming more than Pillow's own hard limit (2 x ~89 Mpx): still an
    # InvalidRequest naming the cap, never Pillow's DecompressionBombError.
    with pytest.raises(
        InvalidRequest, match=r"\(Image size \(400000000 pixels\).*the cap is 64000000 pixels"
    ):
        check_image(huge_png(20_000, 20_000), 1 << 20, 64_000_000)
