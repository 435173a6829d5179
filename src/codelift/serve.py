"""`codelift serve`: an OpenAI-compatible HTTP server for a lifted model, optionally with RAG.

The recipe: load a Generator (hf or vllm) -> optionally load the RAG index -> FastAPI app with
`GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions` (server-sent events when
`stream` is set) -> uvicorn. Requests waiting at the same moment with the same sampling settings
are generated as one batch by a single worker, so concurrent clients are queued, never run over
each other. Every bad request gets an OpenAI-style JSON error with a 4xx status and the server
keeps serving.

Streaming follows the OpenAI wire format, but the text arrives as one chunk once the
completion is done: the generators return whole completions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from codelift.data import Task
from codelift.generate import Generation, Generator
from codelift.prompts import with_context
from codelift.rag.context import task_contexts


@dataclass
class ServeLimits:
    max_tokens: int = 2048  # the most new tokens one request may ask for
    default_max_tokens: int = 256  # chat requests that name no max_tokens
    max_request_bytes: int = 1_000_000
    max_n: int = 16


@dataclass
class RagSettings:
    retriever: Any  # codelift.rag.index.Retriever
    examples: int = 3


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        """Plain text of the message; content parts of type `text` are joined."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class Batcher:
    """One worker runs the generator; requests waiting together with equal settings share a batch."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self.queue: asyncio.Queue = asyncio.Queue()

    async def generate(self, prompts: list[str], settings: dict) -> list[Generation]:
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((prompts, settings, done))
        return await done

    async def run(self) -> None:
        while True:
            waiting = [await self.queue.get()]
            while not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            groups: dict[str, list] = {}
            for job in waiting:
                groups.setdefault(json.dumps(job[1], sort_keys=True), []).append(job)
            for jobs in groups.values():
                prompts = [p for job in jobs for p in job[0]]
                try:
                    results = await asyncio.to_thread(self.generator.generate, prompts, **jobs[0][1])
                except Exception as e:  # answered as a 500 to these requests only
                    for _, _, done in jobs:
                        if not done.done():
                            done.set_exception(e)
                    continue
                for job_prompts, _, done in jobs:
                    if not done.done():  # a client that hung up has cancelled its future
                        done.set_result(results[:len(job_prompts)])
                    results = results[len(job_prompts):]


def build_app(generator: Generator, served_name: str, *, rag: RagSettings | None = None, api_key: str | None = None,
              limits: ServeLimits | None = None) -> FastAPI:
    """The ASGI app serving `generator` under the model name `served_name`."""
    limits = limits or ServeLimits()
    tokenizer = generator.tokenizer
    batcher = Batcher(generator)

    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title="codelift", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("request body is not valid JSON", "invalid_request_error"), status_code=400)
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{param or 'body'}: {first.get('msg')}", "invalid_request_error", param),
                            status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return JSONResponse(error_body(f"generation failed: {e}", "server_error"), status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(error_body("invalid or missing API key", "invalid_request_error", code="invalid_api_key"),
                                status_code=401)
        size = request.headers.get("content-length")
        if request.method == "POST" and (int(size) if size and size.isdigit() else len(await request.body())) > limits.max_request_bytes:
            return JSONResponse(error_body(f"request body over {limits.max_request_bytes} bytes", "invalid_request_error"),
                                status_code=413)
        return await call_next(request)

    def check(req: Sampling, max_tokens: int, prompts: Sequence[str]) -> None:
        if req.model != served_name:
            raise APIError(404, f"model '{req.model}' is not served here; this server has '{served_name}'",
                           param="model", code="model_not_found")
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} is over this server's cap of {limits.max_tokens}",
                           param="max_tokens")
        if req.n > limits.max_n:
            raise APIError(400, f"n {req.n} is over this server's cap of {limits.max_n}", param="n")
        if any(not prompt for prompt in prompts):
            raise APIError(400, "prompt: expected non-empty text", param="prompt")
        if tokenizer is not None and generator.context_length:
            for prompt in prompts:
                length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                if length + max_tokens > generator.context_length:
                    raise APIError(400, f"the prompt is {length} tokens; with max_tokens {max_tokens} it is over the "
                                        f"model's context of {generator.context_length} tokens", param="prompt",
                                   code="context_length_exceeded")

    def settings(req: Sampling, max_tokens: int) -> dict:
        """The generation settings, which are also the batching key. Greedy decoding ignores the seed,
        so greedy requests share a batch whatever seeds they carry (clients such as our openai
        backend send one per prompt; keyed by seed, 64 of them ran one by one at 0.3x the speed)."""
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        seed = 42 if req.seed is None or req.temperature == 0 else req.seed
        return dict(n=req.n, max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=stop,
                    seed=seed)

    def retrieved(queries: list[str], fmt: str) -> list[str]:
        if rag is None:
            return [""] * len(queries)
        tasks = [Task(f"request-{i}", query, "") for i, query in enumerate(queries)]
        return [c.text for c in task_contexts(tasks, "rag", rag.examples, rag.retriever, fmt)]

    def usage(prompts: Sequence[str], results: list[Generation]) -> dict:
        prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) if tokenizer else 0
        completion_tokens = sum(r.new_tokens for r in results)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def choices(results: list[Generation], max_tokens: int):
        """(index, text, finish_reason, new tokens, mean log-probability) of every completion."""
        for index, (text, count, logprob) in enumerate((t, c, lp) for r in results for t, c, lp in
                                                       zip(r.completions, r.token_counts, r.mean_logprobs)):
            yield index, text, "length" if count >= max_tokens else "stop", count, logprob

    def events(chunks: list[dict], usage_chunk: dict | None) -> StreamingResponse:
        lines = [f"data: {json.dumps(chunk)}\n\n" for chunk in chunks + ([usage_chunk] if usage_chunk else [])]
        return StreamingResponse(iter(lines + ["data: [DONE]\n\n"]), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "codelift"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt: expected a string or a non-empty list of strings", param="prompt")
        prompts = [f"{c.strip()}\n\n{p}" if c else p for c, p in zip(retrieved(prompts, "raw"), prompts)]
        check(req, req.max_tokens, prompts)
        results = await batcher.generate(prompts, settings(req, req.max_tokens))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": served_name}
        # completion_tokens and mean_logprob per choice are extensions the openai backend reads.
        rows = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None, "completion_tokens": count,
                 "mean_logprob": logprob} for i, text, reason, count, logprob in choices(results, req.max_tokens)]
        if req.stream:
            include_usage = (req.stream_options or {}).get("include_usage")
            return events([{**head, "choices": [row]} for row in rows],
                          {**head, "choices": [], "usage": usage(prompts, results)} if include_usage else None)
        return {**head, "choices": rows, "usage": usage(prompts, results)}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, f"model '{served_name}' has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise APIError(400, "messages: expected at least one message with role 'user'", param="messages")
        [context] = retrieved([messages[users[-1]]["content"]], "chat")
        messages[users[-1]]["content"] = with_context(messages[users[-1]]["content"], context)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        max_tokens = req.max_completion_tokens or req.max_tokens or limits.default_max_tokens
        check(req, max_tokens, [prompt])
        results = await batcher.generate([prompt], settings(req, max_tokens))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served_name}
        rows = list(choices(results, max_tokens))
        if req.stream:
            chunk = {**head, "object": "chat.completion.chunk"}
            deltas = [{**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": text},
                                             "finish_reason": None}]} for i, text, *_ in rows]
            ends = [{**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]}
                    for i, _, reason, *_ in rows]
            include_usage = (req.stream_options or {}).get("include_usage")
            return events(deltas + ends, {**chunk, "choices": [], "usage": usage([prompt], results)}
                          if include_usage else None)
        return {**head, "object": "chat.completion", "usage": usage([prompt], results),
                "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                             "logprobs": None} for i, text, reason, *_ in rows]}

    return app


def serve(model: str, *, backend: str = "hf", host: str = "127.0.0.1", port: int = 8000, served_name: str | None = None,
          context: str = "none", index: str | None = None, examples: int = 3, api_key: str | None = None,
          limits: ServeLimits | None = None, **options) -> None:
    """Load the model (and index), then serve until interrupted."""
    import uvicorn

    from codelift.errors import CodeliftError
    from codelift.generate import make_generator
    from codelift.rag.context import check_context
    from codelift.rag.index import load_index

    if backend == "openai":
        raise CodeliftError("--backend for serve: expected hf or vllm (a server of a server is not useful).")
    if context not in ("none", "rag"):
        raise CodeliftError(f"--context '{context}' for serve: expected none or rag.")
    retriever = load_index(index) if index else None
    check_context(context, examples, retriever)
    with make_generator(model, backend, progress=False, **options) as generator:
        rag = RagSettings(retriever, examples) if context == "rag" else None
        app = build_app(generator, served_name or model, rag=rag, api_key=api_key, limits=limits)
        uvicorn.run(app, host=host, port=port, log_level="info")
