"""One generation engine for eval, plans, sequence-level KD and serving.

`make_generator(model, backend)` gives a `Generator` (backends: hf, vllm, openai) whose
`generate(prompts, n=..., stop=...)` returns one `Generation` per prompt. `generate(model,
tokenizer, prompts)` runs the hf decode loop on a model already in memory (e.g. during training).
"""

from codelift.generate.core import (BACKENDS, Generation, Generator, backend_options, extract_code, make_generator,
                                   truncate_at_stop)
from codelift.generate.hf import generate

__all__ = ["BACKENDS", "Generation", "Generator", "backend_options", "extract_code", "generate", "make_generator", "truncate_at_stop"]
