"""Micro-batching: concurrent requests for one model share one forward pass.

Requests queue up while the model is busy; when it is free, everything waiting (up to `max_batch` items,
after at most `max_wait` seconds for more to arrive) goes through together, off the event loop, on a
single inference thread (a second thread would only fight the first for the same cores).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np


@dataclass
class _Request:
    items: Any  # np.ndarray (N, ...) or a list
    key: Hashable  # requests only share a batch with the same options (e.g. TTA on or off)
    future: asyncio.Future = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.items)


class Batcher:
    """`await batcher.submit(items, key)` -> one result per item, computed by `run(all_items, key)` together
    with whatever other requests are waiting."""

    def __init__(self, run: Callable[[Any, Hashable], np.ndarray], executor: Executor, *, max_batch: int = 256,
                 max_wait: float = 0.002):
        self.run, self.executor, self.max_batch, self.max_wait = run, executor, max_batch, max_wait
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[_Request] | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # how many forward passes served how many requests: the test of batching
        self.requests = 0

    async def submit(self, items: Any, key: Hashable = None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # created on the serving loop (a new one after a restart or in tests)
            self.close()
            self.loop, self.queue = loop, asyncio.Queue()
        if self.worker is None or self.worker.done():  # a worker that stopped for any reason is replaced
            self.worker = loop.create_task(self._work())
        request = _Request(items, key, loop.create_future())
        await self.queue.put(request)
        return await request.future

    async def _gather(self) -> list[_Request]:
        batch = [await self.queue.get()]
        size = len(batch[0])
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            batch.append(request)
            size += len(request)
        return batch

    async def _work(self) -> None:
        while True:
            batch = await self._gather()
            for key in dict.fromkeys(r.key for r in batch):
                group = [r for r in batch if r.key == key and not r.future.cancelled()]
                if group:
                    await self._answer(group, key)

    async def _answer(self, group: list[_Request], key: Hashable) -> None:
        """One forward pass for `group`; whatever fails (joining, running, splitting) is handed to each of
        its requests, so the worker lives on and no request waits for ever."""
        try:
            items = _concat([r.items for r in group])
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, items, key)
            answers, start = [], 0
            for r in group:
                answers.append(results[start:start + len(r)])
                start += len(r)
            if start != len(results):
                raise RuntimeError(f"the model gave {len(results)} results for {start} items")
        except Exception as err:  # noqa: BLE001 - handed to each waiting request
            for r in group:
                if not r.future.done():
                    r.future.set_exception(err)
            return
        self.batches += 1
        self.requests += len(group)
        for r, answer in zip(group, answers):
            if not r.future.done():
                r.future.set_result(answer)

    def close(self) -> None:
        if self.worker is not None and not self.worker.done() and not self.loop.is_closed():
            self.worker.cancel()
        self.loop = self.queue = self.worker = None


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    return [x for part in parts for x in part]
