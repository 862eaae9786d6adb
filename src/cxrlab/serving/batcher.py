"""Dynamic batching for the server: requests that arrive while the model is busy are scored
together in one call, on one worker thread, so the event loop keeps reading requests meanwhile.

Written by hand: the batching servers that do this (Triton, TorchServe, Ray Serve) are separate
services; inside one FastAPI process it is a queue and a loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class MicroBatcher:
    """`await submit(item)` -> fn([...items])[i]. Waits for nothing: a batch is whatever queued up
    while the previous one ran (up to max_batch), so a lone request is never delayed."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32):
        self.fn, self.max_batch = fn, max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="cxrlab-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None  # held so the serving loop is not garbage-collected

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first call, or a new event loop (test clients start their own)
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._serve(self._queue))
        future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _serve(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
            except Exception as exc:  # every request of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
