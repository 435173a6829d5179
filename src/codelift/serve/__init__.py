"""`codelift serve`: an OpenAI-compatible HTTP server for a lifted model, optionally with RAG.

The recipe: load a Generator (hf, or vLLM's async engine, which batches requests continuously) ->
optionally load the RAG index -> the app (`app.py`):
`GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions` (server-sent events when
`stream` is set), `GET /health`, `GET /metrics` -> uvicorn. Under load it sheds instead of drowning
(`batcher.py`): a bounded queue answered 429 with Retry-After past its bound, a deadline per
request answered 504, no generation for a request whose client has gone. SIGTERM stops admitting,
lets requests in flight finish (up to `shutdown_timeout` seconds) and exits 0.
"""

from __future__ import annotations

import signal

from codelift.serve.app import build_app
from codelift.serve.state import RagSettings, ServeLimits

__all__ = ["RagSettings", "ServeLimits", "build_app", "serve"]


def serve(model: str, *, backend: str = "hf", host: str = "127.0.0.1", port: int = 8000, served_name: str | None = None,
          context: str = "none", index: str | None = None, examples: int = 3, api_key: str | None = None,
          limits: ServeLimits | None = None, shutdown_timeout: float = 30.0, **options) -> None:
    """Load the model (and index), then serve until interrupted (Ctrl-C) or stopped (SIGTERM)."""
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
    with make_generator(model, backend, serving=True, progress=False, **options) as generator:
        rag = RagSettings(retriever, examples) if context == "rag" else None
        app = build_app(generator, served_name or model, rag=rag, api_key=api_key, limits=limits)
        # uvicorn shuts down gracefully on SIGTERM, then raises the signal again to die by it; with this
        # handler in place that second SIGTERM is a no-op, so a stop asked for exits 0, as supervisors expect.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=shutdown_timeout)
