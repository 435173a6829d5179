"""Benchmark: the hf backend's greedy decoding by weights dtype and batch size, on one model and prompts.

Each setting loads the model once and answers the same HumanEval chat prompts (greedy, up to
--max-tokens new tokens); tokens/s counts the new tokens over the generation time, and the ratio is
against the first setting (the old default, fp32 in batches of 16). `--profile` adds the top operators
of one short batch of the first setting (torch.profiler): where a decoding step's time goes.

    PYTHONPATH=src .venv/bin/python bench/hf_generate.py --model qwen2.5-coder-0.5b-instruct --prompts 32
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.generate.hf import HFGenerator
from codelift.hardware import machine
from codelift.prompts import render_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--settings", default="float32:16,bfloat16:16,float32:32,bfloat16:32",
                        help="dtype:batch_size pairs, the first the reference of the ratios")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    console = Console(width=200)
    console.print(machine())
    tasks = load_tasks("humaneval")[:args.prompts]
    rows = []
    for setting in args.settings.split(","):
        dtype, batch = setting.split(":")
        with HFGenerator(args.model, dtype=dtype, batch_size=int(batch), progress=False) as generator:
            prompts = [render_prompt(t, "chat", generator.tokenizer) for t in tasks]
            began = time.perf_counter()
            results = generator.generate(prompts, max_new_tokens=args.max_tokens)
            seconds = time.perf_counter() - began
            rows.append((dtype, batch, seconds, sum(r.new_tokens for r in results)))
            if args.profile and len(rows) == 1:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                    generator.generate(prompts[:8], max_new_tokens=64)
                console.print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    table = Table(title=f"hf backend, {args.model}: {args.prompts} HumanEval chat prompts, greedy, "
                        f"up to {args.max_tokens} new tokens; {machine()}")
    for column in ("dtype", "batch", "seconds", "new tokens", "tokens/s", "vs first"):
        table.add_column(column, justify="left" if column == "dtype" else "right")
    reference = rows[0][3] / rows[0][2]
    for dtype, batch, seconds, tokens in rows:
        table.add_row(dtype, batch, f"{seconds:.1f}", str(tokens), f"{tokens / seconds:.1f}",
                      f"{tokens / seconds / reference:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
