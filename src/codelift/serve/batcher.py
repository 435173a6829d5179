"""One worker in front of the generator: bounded admission, batching, a deadline per request.

Requests waiting at the same moment with the same sampling settings are generated as one batch, so
concurrent clients are queued, never run over each other. The queue is bounded: past `max_queue`
waiting requests a new one is refused at once (the server answers 429) instead of growing memory
and latency for everyone. A request whose deadline passes, or whose client hangs up, while it
waits is taken out before its batch starts, so it costs no generation; a batch already generating
runs to its end (the generators have no way to stop one mid-way), bounded by its max_tokens.

A generator that batches continuously itself (`concurrent`: vLLM's async engine) gets each request
as it arrives instead: nothing waits here for a batch to end, the bound is on requests in the
engine, and a request cancelled by its deadline or its client is aborted mid-generation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from codelift.generate import Generation, Generator


class QueueFull(Exception):
    """No room to wait: `retry_after` is the last batch's duration in whole seconds (at least 1)."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class DeadlinePassed(Exception):
    pass


class ClientGone(Exception):
    pass


class Batcher:
    def __init__(self, generator: Generator, max_queue: int):
        self.generator, self.max_queue = generator, max_queue
        self.queue: asyncio.Queue = asyncio.Queue()
        self.in_engine = 0  # requests handed to a concurrent generator and not finished
        self.last_batch_seconds = 1.0

    def waiting(self) -> int:
        """Requests admitted and not yet generating (for a concurrent generator: not yet finished)."""
        return self.in_engine if self.generator.concurrent else self.queue.qsize()

    async def generate(self, prompts: list[str], settings: dict, *, timeout: float | None = None,
                       disconnected: Callable[[], Awaitable[bool]] | None = None) -> list[Generation]:
        """The generations of `prompts`, once their batch has run. Raises QueueFull at once when
        `max_queue` requests are already waiting, DeadlinePassed after `timeout` seconds, and
        ClientGone when `disconnected()` turns true first."""
        if self.waiting() >= self.max_queue:
            raise QueueFull(max(1, round(self.last_batch_seconds)))
        if self.generator.concurrent:
            done = asyncio.ensure_future(self.in_engine_until_done(prompts, settings))
        else:
            done = asyncio.get_running_loop().create_future()
            self.queue.put_nowait((prompts, settings, done))
        watcher = asyncio.ensure_future(_until(disconnected)) if disconnected else None
        try:
            finished, _ = await asyncio.wait({done} | ({watcher} if watcher else set()), timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watcher:
                watcher.cancel()
        if done in finished:
            return done.result()
        done.cancel()  # the worker skips it if its batch has not started; a concurrent engine aborts it
        raise ClientGone() if watcher in finished else DeadlinePassed()

    async def in_engine_until_done(self, prompts: list[str], settings: dict) -> list[Generation]:
        self.in_engine += 1
        began = time.perf_counter()
        try:
            return await self.generator.agenerate(prompts, **settings)
        finally:
            self.in_engine -= 1
            self.last_batch_seconds = time.perf_counter() - began

    async def run(self) -> None:
        """The worker of a generator that does not batch by itself (a concurrent one never queues)."""
        while True:
            waiting = [await self.queue.get()]
            while not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            groups: dict[str, list] = {}
            for job in waiting:
                if not job[2].done():  # cancelled while waiting: deadline passed or client gone
                    groups.setdefault(json.dumps(job[1], sort_keys=True), []).append(job)
            for jobs in groups.values():
                await self.run_batch(jobs)

    async def run_batch(self, jobs: list) -> None:
        prompts = [p for job in jobs for p in job[0]]
        began = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.generator.generate, prompts, **jobs[0][1])
        except Exception as e:  # answered as a 500 to these requests only
            for _, _, done in jobs:
                if not done.done():
                    done.set_exception(e)
            return
        finally:
            self.last_batch_seconds = time.perf_counter() - began
        for job_prompts, _, done in jobs:
            if not done.done():
                done.set_result(results[:len(job_prompts)])
            results = results[len(job_prompts):]


async def _until(condition: Callable[[], Awaitable[bool]], every: float = 0.25) -> None:
    while not await condition():
        await asyncio.sleep(every)
