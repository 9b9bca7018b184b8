"""The asyncio face: same calls, and the event loop keeps running while workers work."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lilbee_workers import SupervisorConfig
from lilbee_workers.aio import AsyncSupervisor


def test_async_supervisor_embeds_and_streams_without_blocking_the_loop(
    make_config: Callable[..., SupervisorConfig],
) -> None:
    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with AsyncSupervisor(make_config()) as sup:
            task = asyncio.create_task(ticker())
            vectors, stream = await asyncio.gather(
                sup.embed(["async bees"] * 8), sup.chat("Hello", max_tokens=16, temperature=0.0)
            )
            chunks = [chunk async for chunk in stream]
            task.cancel()
            assert vectors.shape == (8, 640)
            assert chunks and stream.result is not None
            assert "".join(chunks) == stream.result.text
            assert ticks > 5  # the loop ran while the workers computed
            statuses = await sup.status()
            assert {s.role for s in statuses} == {"embed", "chat"}

    asyncio.run(main())
