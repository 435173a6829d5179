"""Generation speed: the loop a user would write against codelift's backends, on the same prompts.

The first N HumanEval problems (default 64) in SmolLM2-135M-Instruct's chat format, greedy, 256
new tokens, no stop sequence (chat answers end at end-of-sequence), in one process:
- baseline: plain `model.generate`, batches of 8 in task order, fp32, left padding;
- codelift hf, one row per --hf DTYPE:BATCH (default: the fastest dtype here, batch 16);
- codelift vllm, in this process (when vLLM is installed);
- codelift openai, against `codelift serve` (hf backend) started here on a free loopback port.
The table: wall seconds of generation, new tokens, new tokens/s, start seconds (load or engine
start), tokens/s against the baseline, and how many greedy answers equal the baseline's.

    python bench/generation.py [--limit 64] [--max-new-tokens 256] [--backends baseline hf vllm openai]
                               [--hf float32:16 bfloat16:16] [--vllm default float32]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch
from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.generate import make_generator
from codelift.generate.hf import best_dtype
from codelift.hardware import machine
from codelift.models import load_model, prepare_model
from codelift.models.load import load_tokenizer
from codelift.prompts import render_prompt
from serving import running_server

MODEL = "smollm2-135m-instruct"


def baseline(path: str, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int, float, float]:
    """What a user writes: model.generate over batches of 8, fp32, left padding."""
    began = time.perf_counter()
    model, tokenizer = load_model(path, dtype=torch.float32)
    start = time.perf_counter() - began
    tokenizer.padding_side = "left"
    texts, tokens, began = [], 0, time.perf_counter()
    for i in range(0, len(prompts), 8):
        inputs = tokenizer(prompts[i:i + 8], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        tokens += int((new != tokenizer.pad_token_id).sum())
    return texts, tokens, time.perf_counter() - began, start


def codelift_backend(path: str, backend: str, prompts: list[str], max_new_tokens: int,
                     **options) -> tuple[list[str], int, float, float]:
    with make_generator(path, backend, progress=False, **options) as gen:
        began = time.perf_counter()
        results = gen.generate(prompts, max_new_tokens=max_new_tokens)
        seconds = time.perf_counter() - began
        return [r.completions[0] for r in results], sum(r.new_tokens for r in results), seconds, gen.start_seconds


def served(path: str, prompts: list[str], max_new_tokens: int) -> tuple[list[str], int, float, float]:
    """`codelift serve` in a subprocess, all prompts in flight at once through the openai backend."""
    with running_server(path) as (url, _, start):
        texts, tokens, seconds, _ = codelift_backend(path, "openai", prompts, max_new_tokens, endpoint=url,
                                                     concurrency=len(prompts))
        return texts, tokens, seconds, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--backends", nargs="+", default=["baseline", "hf", "vllm", "openai"])
    parser.add_argument("--hf", nargs="+", default=[f"{str(best_dtype()).removeprefix('torch.')}:16"],
                        help="hf rows as DTYPE:BATCH")
    parser.add_argument("--vllm", nargs="+", default=["default"],
                        help="vllm rows by weights dtype (default: vLLM's choice, bfloat16 on CPU)")
    args = parser.parse_args()
    path = prepare_model(MODEL)
    tokenizer = load_tokenizer(path)
    prompts = [render_prompt(t, "chat", tokenizer) for t in load_tasks("humaneval")[:args.limit]]
    before = machine()

    runs = {}
    for backend in args.backends:
        if backend == "baseline":
            runs["baseline model.generate fp32 b8"] = baseline(path, prompts, args.max_new_tokens)
        elif backend == "hf":
            for spec in args.hf:
                dtype, batch = spec.split(":")
                runs[f"codelift hf {dtype} b{batch}"] = codelift_backend(path, "hf", prompts, args.max_new_tokens,
                                                                         dtype=dtype, batch_size=int(batch))
        elif backend == "vllm" and importlib.util.find_spec("vllm"):
            for dtype in args.vllm:
                runs[f"codelift vllm {dtype}"] = codelift_backend(path, "vllm", prompts, args.max_new_tokens,
                                                                  dtype=None if dtype == "default" else dtype)
        elif backend == "openai":
            runs["codelift openai -> codelift serve (hf)"] = served(path, prompts, args.max_new_tokens)
        for name, (_, tokens, seconds, start) in runs.items():
            Console(stderr=True).print(f"[dim]{name}: {seconds:.1f} s, {tokens} tokens, {tokens / seconds:.1f} tok/s, "
                                       f"start {start:.1f} s, load {os.getloadavg()[0]:.1f}")

    reference = runs.get("baseline model.generate fp32 b8")
    table = Table(title=f"{len(prompts)} HumanEval chat prompts, greedy, {args.max_new_tokens} new tokens, "
                        f"{MODEL}; {before} -> {os.getloadavg()[0]:.1f}")
    for column in ("backend", "wall s", "new tokens", "tokens/s", "start s", "vs baseline", "same as baseline"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for name, (texts, tokens, seconds, start) in runs.items():
        ratio = f"{tokens / seconds / (reference[1] / reference[2]):.2f}x" if reference else "-"
        same = f"{sum(a == b for a, b in zip(texts, reference[0]))}/{len(texts)}" if reference else "-"
        table.add_row(name, f"{seconds:.1f}", str(tokens), f"{tokens / seconds:.1f}", f"{start:.1f}", ratio, same)
    Console(width=200).print(table)


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    main()
