"""Batched generation with stop sequences, and code extraction from the answers."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rich.progress import Progress

_FENCED = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


@dataclass
class Generation:
    prompt: str
    completions: list[str]
    new_tokens: int  # summed over the completions, for speed figures
    seconds: float


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for s in stop if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def extract_code(answer: str) -> str:
    """The first fenced code block of a chat answer (an unclosed one runs to the end);
    the answer itself when it has no fence."""
    match = _FENCED.search(answer)
    return match.group(1).rstrip() + "\n" if match else answer


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 0.95, n: int = 1, stop: Sequence[str] = (), batch_size: int = 8, seed: int = 42,
             progress: bool = True) -> list[Generation]:
    """Generate `n` completions per prompt (greedy when temperature is 0), batched with left
    padding; each completion is cut at its first stop sequence."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    results = []
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("generating", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            began = time.perf_counter()
            inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                 pad_token_id=tokenizer.pad_token_id, stop_strings=list(stop) or None,
                                 tokenizer=tokenizer, top_k=None, **sampling)
            new = out[:, inputs["input_ids"].shape[1]:]
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            counts = (new != tokenizer.pad_token_id).sum(dim=1).tolist()
            seconds = (time.perf_counter() - began) / len(batch)
            for i, prompt in enumerate(batch):
                rows = range(i * n, (i + 1) * n)
                results.append(Generation(prompt, [truncate_at_stop(texts[r], stop) for r in rows],
                                          sum(counts[r] for r in rows), seconds))
            bar.advance(job, len(batch))
    return results
