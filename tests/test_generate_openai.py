"""The openai backend against a real HTTP server that fails before it answers: retries, errors."""

import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from codelift.errors import CodeliftError
from codelift.generate import make_generator


def flaky_app(failures: int, status: int) -> tuple[FastAPI, list[int]]:
    """A completions endpoint that answers `status` to the first `failures` requests, then echoes."""
    app, calls = FastAPI(), []

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/completions")
    def completions(body: dict):
        calls.append(len(calls))
        if len(calls) <= failures:
            return JSONResponse({"error": {"message": "busy", "type": "server_error"}}, status_code=status,
                                headers={"retry-after-ms": "10"})
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": i, "text": body["prompt"][::-1] + "\ndef rest", "finish_reason": "stop",
                             "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0, -2.0]}}
                            for i in range(body["n"])],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2 * body["n"], "total_tokens": 1 + 2 * body["n"]}}

    return app, calls


@pytest.fixture
def serve_app():
    servers = []

    def start(app) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        servers.append(server)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for server in servers:
        server.should_exit = True


@pytest.mark.parametrize("status", [429, 503])
def test_retries_with_backoff_then_answers(serve_app, status):
    app, calls = flaky_app(failures=2, status=status)
    with make_generator("echo", "openai", endpoint=serve_app(app), progress=False) as gen:
        assert gen.tokenizer is None and gen.endpoint_model == "echo"  # a label, not a local model
        [result] = gen.generate(["abc"], n=2, stop=["\ndef "])
    assert len(calls) == 3  # two refusals, then the answer
    assert result.completions == ["cba", "cba"]  # cut at the stop sequence here too
    assert result.token_counts == [2, 2] and result.mean_logprobs == [-1.5, -1.5]


def test_gives_up_after_its_retries_with_one_clear_error(serve_app):
    app, calls = flaky_app(failures=10, status=503)
    with make_generator("echo", "openai", endpoint=serve_app(app), max_retries=1, progress=False) as gen:
        with pytest.raises(CodeliftError, match="answered HTTP 503: .*busy"):
            gen.generate(["abc"])
    assert len(calls) == 2
