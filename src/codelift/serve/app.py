"""The ASGI app: routes, the guard in front of them (API key, body size, metrics) and the errors
every failure is answered with (OpenAI's body, a 4xx or 5xx status; the server keeps serving)."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from codelift.generate import Generator
from codelift.serve import routes
from codelift.serve.api import APIError, error_body
from codelift.serve.batcher import Batcher
from codelift.serve.metrics import make_metrics
from codelift.serve.state import RagSettings, ServeLimits, ServeState


def build_app(generator: Generator, served_name: str, *, rag: RagSettings | None = None, api_key: str | None = None,
              limits: ServeLimits | None = None) -> FastAPI:
    """The ASGI app serving `generator` under the model name `served_name`."""
    limits = limits or ServeLimits()
    batcher = Batcher(generator, limits.max_queue)
    app = FastAPI(title="codelift", lifespan=lifespan)
    app.state.codelift = ServeState(generator, served_name, limits, rag, api_key, batcher,
                                    make_metrics(batcher.waiting))
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, server_error)
    app.add_middleware(Guard)
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat, methods=["POST"])
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/metrics", routes.metrics, methods=["GET"])
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServeState = app.state.codelift
    state.worker = asyncio.create_task(state.batcher.run())
    yield
    state.worker.cancel()


class Guard:
    """In front of every route: the API key and the body size are checked, each request's status and
    time are counted. Plain ASGI, not `app.middleware("http")`: through Starlette's BaseHTTPMiddleware
    a route never sees its client hang up, so an abandoned request would still be generated."""

    open_paths = ("/health", "/metrics")  # probes and scrapers carry no key

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state: ServeState = scope["app"].state.codelift
        began, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal, receive = await self.refusal(scope, receive, state)
            await (refusal or self.app)(scope, receive, sending)
        finally:
            state.metrics.observe(scope["path"], status, time.perf_counter() - began)

    async def refusal(self, scope, receive, state: ServeState):
        """(the refusal to answer or None, the receive channel the app reads the body from)."""
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        if state.api_key and scope["path"] not in self.open_paths and \
                headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse(error_body("invalid or missing API key", "invalid_request_error",
                                           code="invalid_api_key"), status_code=401), receive
        cap = state.limits.max_request_bytes
        too_big = JSONResponse(error_body(f"request body over {cap} bytes", "invalid_request_error"), status_code=413)
        if scope["method"] != "POST":
            return None, receive
        size = headers.get("content-length")
        if size and size.isdigit():
            return (too_big if int(size) > cap else None), receive
        body = await read_body(receive, cap)  # chunked: read up to the cap, then hand the app what was read
        return (too_big, receive) if body is None else (None, replay(body, receive))


async def read_body(receive, cap: int) -> bytes | None:
    """The request body, or None once it grows past `cap` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A receive channel that gives `body` first, then whatever the client sends next (its hang-up)."""
    given = False

    async def again():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def api_error(request: Request, e: APIError):
    return JSONResponse(error_body(e.message, e.kind, e.param, e.code), status_code=e.status, headers=e.headers)


async def invalid_request(request: Request, e: RequestValidationError):
    first = e.errors()[0]
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body("request body is not valid JSON", "invalid_request_error"), status_code=400)
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return JSONResponse(error_body(f"{param or 'body'}: {first.get('msg')}", "invalid_request_error", param),
                        status_code=400)


async def server_error(request: Request, e: Exception):
    return JSONResponse(error_body(f"generation failed: {e}", "server_error"), status_code=500)
