"""The `openai` backend: any OpenAI-compatible `/v1/completions` endpoint (`codelift serve`,
vLLM's or llama.cpp's server, a hosted API).

Prompts are sent as text, already rendered, so the server applies no template of its own;
with a local model folder (or embedded name) as MODEL its tokenizer renders chat/instruct
prompts exactly as the other backends do. Requests run `concurrency` at a time; the official
client retries 408/409/429/5xx and dropped connections with exponential backoff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import Progress

from codelift.errors import CodeliftError
from codelift.generate.core import Generation, Generator, check_sampling, truncate_at_stop

MAX_STOP = 4  # OpenAI's limit per request; the rest are applied here


def local_tokenizer(model: str):
    """The tokenizer of a local folder or embedded model, else None (the prompts go as they are)."""
    from codelift.models.load import EMBEDDED, load_tokenizer

    if model in EMBEDDED or Path(model).is_dir():
        return load_tokenizer(model)
    return None


def choice_stats(choice, fallback_count: int) -> tuple[int, float | None]:
    """New tokens and mean log-probability of one choice: from its token log-probabilities
    (vLLM, hosted APIs), else from codelift serve's per-choice fields, else the usage split."""
    logprobs = choice.logprobs.token_logprobs if choice.logprobs and choice.logprobs.token_logprobs else None
    if logprobs:
        return len(logprobs), sum(logprobs) / len(logprobs)
    extra = choice.model_extra or {}
    return extra.get("completion_tokens", fallback_count), extra.get("mean_logprob")


class OpenAIGenerator(Generator):
    backend = "openai"
    OPTIONS = ("endpoint", "endpoint_model", "api_key_env", "concurrency", "max_retries", "timeout", "progress")

    def __init__(self, model: str, *, endpoint: str | None = None, endpoint_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16, max_retries: int = 4,
                 timeout: float = 600.0, progress: bool = True):
        import openai

        if not endpoint:
            raise CodeliftError("--backend openai needs --endpoint URL, e.g. http://127.0.0.1:8000/v1.")
        if concurrency < 1:
            raise CodeliftError(f"concurrency must be at least 1, got {concurrency}.")
        began = time.perf_counter()
        self.endpoint, self.concurrency, self.progress = endpoint, concurrency, progress
        self.client = openai.OpenAI(base_url=endpoint, api_key=os.environ.get(api_key_env) or "none",
                                    max_retries=max_retries, timeout=timeout)
        served = [m.id for m in self._call(self.client.models.list).data]
        # One served model: use it whatever MODEL is called here (a folder path, a label).
        self.endpoint_model = endpoint_model or (served[0] if len(served) == 1 else model)
        self.tokenizer = local_tokenizer(model)
        self.start_seconds = time.perf_counter() - began

    def _call(self, request, **kwargs):
        """One request, with the client's retries; failures become one clear sentence."""
        import openai

        try:
            return request(**kwargs)
        except openai.APIConnectionError as e:
            raise CodeliftError(f"cannot connect to {self.endpoint} ({e.__cause__ or e}); is the server running "
                                f"and is --endpoint its base URL (ending in /v1)?") from None
        except openai.APIStatusError as e:
            raise CodeliftError(f"{self.endpoint} answered HTTP {e.status_code}: {e.message}") from None

    def generate(self, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 0.95, stop: Sequence[str] = (), seed: int = 42) -> list[Generation]:
        check_sampling(n, max_new_tokens, temperature, top_p)

        def complete(i: int) -> Generation:
            answer = self._call(self.client.completions.create, model=self.endpoint_model, prompt=prompts[i], n=n,
                                max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + i,
                                stop=list(stop[:MAX_STOP]) or None, logprobs=0)
            choices = sorted(answer.choices, key=lambda c: c.index)
            fallback = answer.usage.completion_tokens // n if answer.usage else 0
            counts, means = zip(*(choice_stats(c, fallback) for c in choices))
            texts = [truncate_at_stop(c.text, stop) for c in choices]
            return Generation(prompts[i], texts, list(counts), 0.0, list(means))

        began = time.perf_counter()
        results = []
        with Progress(disable=not self.progress, transient=True) as bar, ThreadPoolExecutor(self.concurrency) as pool:
            job = bar.add_task("generating", total=len(prompts))
            for result in pool.map(complete, range(len(prompts))):
                results.append(result)
                bar.advance(job)
        for result in results:  # requests overlap: each prompt's share of the wall time
            result.seconds = (time.perf_counter() - began) / len(results)
        return results

    def close(self) -> None:
        self.client.close()
