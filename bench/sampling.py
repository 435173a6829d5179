"""Sampled generation speed on vLLM: what nucleus sampling costs, against greedy decoding, on one engine.

The first N HumanEval problems (default 32) in the student's chat format, 384 new tokens at most, the
chat stop; one vLLM engine (the backend's own defaults: dtype, context cap) runs every row in turn:
- greedy: one answer per problem (what every greedy ablation row does);
- T=0.7, top_p=0.95, S samples per problem (what `--candidates` and teacher answers do today);
- T=0.7 without nucleus truncation (top_p=1.0), S samples per problem.
The table: wall seconds, new tokens, new tokens/s, and tokens/s against the top_p=0.95 row. vLLM's CPU
sampler sorts the whole vocabulary of every sequence at every step to apply top_p (151,936 entries per
row for Qwen); the third row shows what that sort costs.

    python bench/sampling.py [--model qwen2.5-coder-0.5b-instruct] [--limit 32] [--samples 4]
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.generate import make_generator
from codelift.hardware import machine
from codelift.models import prepare_model
from codelift.prompts import prompt_stop, render_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    args = parser.parse_args()
    path = prepare_model(args.model)
    before = machine()
    rows = {}
    with make_generator(path, "vllm", progress=False) as gen:
        prompts = [render_prompt(t, "chat", gen.tokenizer) for t in load_tasks("humaneval")[:args.limit]]
        runs = {"greedy, 1 per problem": dict(n=1, temperature=0.0),
                f"T=0.7 top_p=0.95, {args.samples} per problem": dict(n=args.samples, temperature=0.7, top_p=0.95),
                f"T=0.7 top_p=1.0, {args.samples} per problem": dict(n=args.samples, temperature=0.7, top_p=1.0)}
        for name, settings in runs.items():
            began = time.perf_counter()
            results = gen.generate(prompts, max_new_tokens=args.max_new_tokens, stop=prompt_stop("chat"), **settings)
            seconds = time.perf_counter() - began
            rows[name] = (seconds, sum(r.new_tokens for r in results))
            Console(stderr=True).print(f"[dim]{name}: {seconds:.1f} s, {rows[name][1]} tokens, "
                                       f"load {os.getloadavg()[0]:.1f}")
    reference = rows[f"T=0.7 top_p=0.95, {args.samples} per problem"]
    table = Table(title=f"{len(prompts)} HumanEval chat prompts, {args.model}, vllm, {args.max_new_tokens} new "
                        f"tokens at most; {before} -> {os.getloadavg()[0]:.1f}")
    for column in ("decoding", "wall s", "new tokens", "tokens/s", "vs top_p=0.95"):
        table.add_column(column, justify="left" if column == "decoding" else "right")
    for name, (seconds, tokens) in rows.items():
        table.add_row(name, f"{seconds:.1f}", str(tokens), f"{tokens / seconds:.1f}",
                      f"{tokens / seconds / (reference[1] / reference[0]):.2f}x")
    Console(width=200).print(table)


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    main()
