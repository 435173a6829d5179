"""What every route of one server shares: the model, its limits, the batcher and the metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from codelift.generate import Generator
from codelift.serve.batcher import Batcher
from codelift.serve.metrics import Metrics


@dataclass
class ServeLimits:
    max_tokens: int = 2048  # the most new tokens one request may ask for
    default_max_tokens: int = 256  # chat requests that name no max_tokens
    max_request_bytes: int = 1_000_000
    max_n: int = 16
    max_queue: int = 64  # requests waiting for generation; one more is answered 429
    request_timeout: float = 600.0  # seconds from admission to answer; past it, 504


@dataclass
class RagSettings:
    retriever: Any  # codelift.rag.index.Retriever
    examples: int = 3


@dataclass
class ServeState:
    generator: Generator
    served_name: str
    limits: ServeLimits
    rag: RagSettings | None
    api_key: str | None
    batcher: Batcher
    metrics: Metrics
    worker: asyncio.Task | None = None  # the batcher's loop, from start-up to shutdown
