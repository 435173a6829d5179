"""One generation engine for eval, plans, sequence-level KD and serving.

`make_generator(model, backend)` gives a `Generator` (backends: hf, vllm, openai) whose
`generate(prompts, n=..., stop=...)` returns one `Generation` per prompt. `generate(model,
tokenizer, prompts)` runs the hf decode loop on a model already in memory (e.g. during training).
The interface lives in `core`, each backend in its own module importing it; this package is the
registry that picks one, so no import points back up.
"""

from codelift.errors import CodeliftError
from codelift.generate.core import Generation, Generator, extract_code, truncate_at_stop
from codelift.generate.hf import generate

BACKENDS = ("hf", "vllm", "openai")


def backend_class(backend: str, serving: bool = False) -> type[Generator]:
    if backend == "hf":
        from codelift.generate.hf import HFGenerator

        return HFGenerator
    if backend == "vllm":
        from codelift.generate.vllm import AsyncVLLMGenerator, VLLMGenerator

        return AsyncVLLMGenerator if serving else VLLMGenerator
    if backend == "openai":
        from codelift.generate.openai import OpenAIGenerator

        return OpenAIGenerator
    raise CodeliftError(f"--backend '{backend}': expected one of {', '.join(BACKENDS)}.")


def backend_options(backend: str, **settings) -> dict:
    """Of the settings a command line or config holds for every backend (dtype, batch_size,
    endpoint, ...), the ones `backend` takes; unset (None) ones are left to its defaults."""
    return {k: v for k, v in settings.items() if k in backend_class(backend).OPTIONS and v is not None}


def make_generator(model: str, backend: str = "hf", *, serving: bool = False, **options) -> Generator:
    """The generator of `backend` for `model` (an embedded name, folder, .gguf or hub id; for
    `openai`, a local folder whose tokenizer renders prompts, or any label). Options are the
    backend's own: dtype, batch_size (hf); tensor_parallel_size, dtype, enforce_eager,
    max_model_len, gpu_memory_utilization (vllm); endpoint, endpoint_model, api_key_env,
    concurrency, max_retries, timeout (openai); progress (all). `serving` asks for the engine that
    takes many requests at once where the backend has one (vllm: its async engine, see `concurrent`)."""
    chosen = backend_class(backend, serving)
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(chosen.OPTIONS))
    if unknown:
        raise CodeliftError(f"backend '{backend}' has no option {', '.join(unknown)}; "
                            f"expected some of {', '.join(chosen.OPTIONS)}.")
    return chosen(model, **options)


__all__ = ["BACKENDS", "Generation", "Generator", "backend_options", "extract_code", "generate", "make_generator",
           "truncate_at_stop"]
