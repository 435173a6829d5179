"""The routes, as functions over the app's `ServeState`: OpenAI's models, completions and chat
completions, plus health and metrics. Streaming follows the OpenAI wire format, but the text
arrives as one chunk once the completion is done: the generators return whole completions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from codelift.data import Task
from codelift.generate import Generation
from codelift.prompts import with_context
from codelift.rag.context import task_contexts
from codelift.serve.api import APIError, ChatRequest, CompletionRequest, Sampling
from codelift.serve.batcher import ClientGone, DeadlinePassed, QueueFull
from codelift.serve.state import ServeState


def state_of(request: Request) -> ServeState:
    return request.app.state.codelift


async def models(request: Request):
    return {"object": "list", "data": [{"id": state_of(request).served_name, "object": "model",
                                        "created": int(time.time()), "owned_by": "codelift"}]}


async def health(request: Request):
    """200 while the model is loaded and its worker runs; 503 otherwise (load balancers stop sending)."""
    state = state_of(request)
    if state.worker is None or state.worker.done():
        return JSONResponse({"status": "unavailable", "model": state.served_name}, status_code=503)
    return {"status": "ok", "model": state.served_name, "requests_waiting": state.batcher.waiting()}


async def metrics(request: Request):
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def completions(req: CompletionRequest, request: Request):
    state = state_of(request)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts:
        raise APIError(400, "prompt: expected a string or a non-empty list of strings", param="prompt")
    prompts = [f"{c.strip()}\n\n{p}" if c else p for c, p in zip(retrieved(state, prompts, "raw"), prompts)]
    lengths = check(state, req, req.max_tokens, prompts)
    results = await generated(state, request, prompts, settings(req, req.max_tokens))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": state.served_name}
    # completion_tokens and mean_logprob per choice are extensions the openai backend reads.
    rows = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None, "completion_tokens": count,
             "mean_logprob": logprob} for i, text, reason, count, logprob in choices(results, req.max_tokens)]
    if req.stream:
        include_usage = (req.stream_options or {}).get("include_usage")
        return events([{**head, "choices": [row]} for row in rows],
                      {**head, "choices": [], "usage": usage(lengths, results)} if include_usage else None)
    return {**head, "choices": rows, "usage": usage(lengths, results)}


async def chat(req: ChatRequest, request: Request):
    state = state_of(request)
    tokenizer = state.generator.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, f"model '{state.served_name}' has no chat template; use /v1/completions", param="messages")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise APIError(400, "messages: expected at least one message with role 'user'", param="messages")
    [context] = retrieved(state, [messages[users[-1]]["content"]], "chat")
    messages[users[-1]]["content"] = with_context(messages[users[-1]]["content"], context)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    max_tokens = req.max_completion_tokens or req.max_tokens or state.limits.default_max_tokens
    lengths = check(state, req, max_tokens, [prompt])
    results = await generated(state, request, [prompt], settings(req, max_tokens))
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.served_name}
    rows = list(choices(results, max_tokens))
    if req.stream:
        chunk = {**head, "object": "chat.completion.chunk"}
        deltas = [{**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": text},
                                         "finish_reason": None}]} for i, text, *_ in rows]
        ends = [{**chunk, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]} for i, _, reason, *_ in rows]
        include_usage = (req.stream_options or {}).get("include_usage")
        return events(deltas + ends, {**chunk, "choices": [], "usage": usage(lengths, results)}
                      if include_usage else None)
    return {**head, "object": "chat.completion", "usage": usage(lengths, results),
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None} for i, text, reason, *_ in rows]}


async def generated(state: ServeState, request: Request, prompts: list[str], sampling: dict) -> list[Generation]:
    """The batcher's answer, its refusals turned into HTTP errors: 429 with Retry-After when the
    queue is full, 504 past the request timeout, 499 (nginx's "client closed request") when the
    client hung up; the last two never reach the generator if their batch had not started."""
    timeout = state.limits.request_timeout
    try:
        results = await state.batcher.generate(prompts, sampling, timeout=timeout, disconnected=request.is_disconnected)
    except QueueFull as e:
        raise APIError(429, f"the server is at its limit of {state.limits.max_queue} waiting requests; retry after "
                            f"{e.retry_after} s", "rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(e.retry_after)}) from None
    except DeadlinePassed:
        raise APIError(504, f"no answer within the server's request timeout of {timeout:g} s", "timeout_error",
                       code="request_timeout") from None
    except ClientGone:
        raise APIError(499, "the client closed the request", code="client_closed_request") from None
    state.metrics.tokens.inc(sum(r.new_tokens for r in results))
    return results


def check(state: ServeState, req: Sampling, max_tokens: int, prompts: Sequence[str]) -> list[int]:
    """Refuse what this server will not generate; the prompts' lengths in tokens (0 without a
    tokenizer), counted once here for the context check and the usage report."""
    limits, generator = state.limits, state.generator
    if req.model != state.served_name:
        raise APIError(404, f"model '{req.model}' is not served here; this server has '{state.served_name}'",
                       param="model", code="model_not_found")
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens {max_tokens} is over this server's cap of {limits.max_tokens}",
                       param="max_tokens")
    if req.n > limits.max_n:
        raise APIError(400, f"n {req.n} is over this server's cap of {limits.max_n}", param="n")
    if any(not prompt for prompt in prompts):
        raise APIError(400, "prompt: expected non-empty text", param="prompt")
    tokenizer = generator.tokenizer
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) if tokenizer is not None else 0 for p in prompts]
    if tokenizer is not None and generator.context_length:
        for length in lengths:
            if length + max_tokens > generator.context_length:
                raise APIError(400, f"the prompt is {length} tokens; with max_tokens {max_tokens} it is over the "
                                    f"model's context of {generator.context_length} tokens", param="prompt",
                               code="context_length_exceeded")
    return lengths


def settings(req: Sampling, max_tokens: int) -> dict:
    """The generation settings, which are also the batching key. Greedy decoding ignores the seed,
    so greedy requests share a batch whatever seeds they carry (clients such as our openai
    backend send one per prompt; keyed by seed, 64 of them ran one by one at 0.3x the speed)."""
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    seed = 42 if req.seed is None or req.temperature == 0 else req.seed
    return dict(n=req.n, max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, stop=stop, seed=seed)


def retrieved(state: ServeState, queries: list[str], fmt: str) -> list[str]:
    """Retrieved examples for each query, rendered as eval renders them ("" without RAG)."""
    if state.rag is None:
        return [""] * len(queries)
    tasks = [Task(f"request-{i}", query, "") for i, query in enumerate(queries)]
    return [c.text for c in task_contexts(tasks, "rag", state.rag.examples, state.rag.retriever, fmt)]


def usage(prompt_lengths: list[int], results: list[Generation]) -> dict:
    prompt_tokens = sum(prompt_lengths)
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
