"""An async iterator that runs on one event loop, read from another.

The backend's HTTP client lives on its own loop thread; the proxy serves on uvicorn's.
``across_loops`` pumps the backend-side iterator on its loop into a queue the reader
awaits on its own. Closing the reader (or cancelling it) cancels the pump, which closes
the backend-side iterator and, with it, the upstream connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_END = object()


@dataclass(frozen=True)
class _Raised:
    error: BaseException


async def across_loops(
    source: AsyncIterator[T], loop: asyncio.AbstractEventLoop
) -> AsyncIterator[T]:
    reader = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()

    def hand_over(item: object) -> None:
        if not reader.is_closed():
            reader.call_soon_threadsafe(items.put_nowait, item)

    async def pump() -> None:
        try:
            async for item in source:
                hand_over(item)
        except Exception as error:
            hand_over(_Raised(error))
        finally:
            hand_over(_END)
            await source.aclose()  # a cancelled pump must still close the source's resources

    pumping = asyncio.run_coroutine_threadsafe(pump(), loop)
    try:
        while (item := await items.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        pumping.cancel()
