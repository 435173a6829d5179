"""Sampled generation speed on vLLM: nucleus sampling by vLLM's own sampler and by codelift's, on one engine.

The first N HumanEval problems (default 32) in the student's chat format, 384 new tokens at most, the
chat stop; one vLLM engine (the backend's own defaults: dtype, context cap) runs every row in turn:
- greedy: one answer per problem (what every greedy ablation row does);
- T=0.7, top_p=0.95, S samples per problem, by vLLM's own sampler (SamplingParams.top_p: on CPU it sorts
  the whole vocabulary of every sequence at every step, 151,936 entries per row for Qwen);
- the same by codelift's vllm backend (top_p applied by `generate.nucleus` over each row's top 128);
- T=0.7 without nucleus truncation (top_p=1.0): what sampling costs with no top_p at all.
The table: wall seconds, new tokens, new tokens/s, tokens/s against vLLM's own top_p, and how many
samples equal vLLM's own (same seeds; the same nucleus gives the same tokens).

    python bench/sampling.py [--model qwen2.5-coder-0.5b-instruct] [--limit 32] [--samples 4]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.generate import Generation, make_generator, truncate_at_stop
from codelift.hardware import machine
from codelift.models import prepare_model
from codelift.prompts import prompt_ids, prompt_stop, render_prompt


def vllm_own(gen, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
             stop: Sequence[str], seed: int = 42) -> list[Generation]:
    """The backend's requests (same prompt tokens, seeds, stops) with top_p left to vLLM's sampler."""
    from vllm import SamplingParams

    params = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop),
                             seed=seed + i, logprobs=0) for i in range(len(prompts))]
    outputs = gen.llm.generate([{"prompt_token_ids": prompt_ids(gen.tokenizer, p)} for p in prompts], params,
                               use_tqdm=False)
    eos = gen.tokenizer.eos_token_id
    return [Generation(prompt, [truncate_at_stop(c.text, stop) for c in output.outputs],
                       [len(c.token_ids) - (1 if c.token_ids and c.token_ids[-1] == eos else 0) for c in output.outputs],
                       0.0, []) for prompt, output in zip(prompts, outputs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    args = parser.parse_args()
    path = prepare_model(args.model)
    before = machine()
    rows, texts = {}, {}
    with make_generator(path, "vllm", progress=False) as gen:
        prompts = [render_prompt(t, "chat", gen.tokenizer) for t in load_tasks("humaneval")[:args.limit]]
        common = dict(max_new_tokens=args.max_new_tokens, stop=prompt_stop("chat"))
        sampled = dict(n=args.samples, temperature=0.7)
        runs = {"greedy, 1 per problem": lambda: gen.generate(prompts, **common, temperature=0.0),
                "vLLM's own top_p=0.95": lambda: vllm_own(gen, prompts, top_p=0.95, **sampled, **common),
                "codelift top_p=0.95": lambda: gen.generate(prompts, top_p=0.95, **sampled, **common),
                "no top_p (1.0)": lambda: gen.generate(prompts, top_p=1.0, **sampled, **common)}
        for name, run in runs.items():
            began = time.perf_counter()
            results = run()
            seconds = time.perf_counter() - began
            rows[name] = (seconds, sum(r.new_tokens for r in results))
            texts[name] = [text for r in results for text in r.completions]
            Console(stderr=True).print(f"[dim]{name}: {seconds:.1f} s, {rows[name][1]} tokens, "
                                       f"load {os.getloadavg()[0]:.1f}")
    reference, own = rows["vLLM's own top_p=0.95"], texts["vLLM's own top_p=0.95"]
    table = Table(title=f"{len(prompts)} HumanEval chat prompts, {args.model}, vllm, T=0.7 x {args.samples} samples "
                        f"(greedy: 1), {args.max_new_tokens} new tokens at most; {before} -> {os.getloadavg()[0]:.1f}")
    for column in ("decoding", "wall s", "new tokens", "tokens/s", "vs vLLM's own top_p", "samples equal to vLLM's"):
        table.add_column(column, justify="left" if column == "decoding" else "right")
    for name, (seconds, tokens) in rows.items():
        same = f"{sum(a == b for a, b in zip(texts[name], own))}/{len(own)}" if len(texts[name]) == len(own) else "-"
        table.add_row(name, f"{seconds:.1f}", str(tokens), f"{tokens / seconds:.1f}",
                      f"{tokens / seconds / (reference[1] / reference[0]):.2f}x", same)
    Console(width=200).print(table)


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    main()
