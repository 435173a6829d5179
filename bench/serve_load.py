"""`codelift serve` under load: N concurrent clients for T seconds against a real server on loopback.

Each client (the official `openai` client, no retries) sends HumanEval chat prompts in turn to
`/v1/completions`, greedy, and honours Retry-After when refused; every request is bounded in time
and so is the whole run. Before the load, every prompt is answered alone: each 200 answer under
load must be the same text. The server's RSS is read once a second to show whether memory stays
flat over a soak (`--seconds 600`).

The table: clients, queue bound, seconds, requests/s, tokens/s, latency p50/p95/p99 of the 200
answers, the count of each status, answers equal to the prompt answered alone, and the server's RSS
once warm (a quarter of the run in, at most 60 s: the first full batches allocate) -> at the end (max).

    python bench/serve_load.py [--model smollm2-135m-instruct] [--backend hf] [--clients 32] [--max-queue 8]
                               [--seconds 60] [--max-tokens 64] [--prompts 32]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.hardware import machine
from codelift.models import prepare_model
from codelift.models.load import load_tokenizer
from codelift.prompts import render_prompt
from serving import running_server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def client_loop(url: str, prompts: list[str], first: int, args, stop: float) -> list[tuple]:
    """One client until `stop`: (status, seconds, completion tokens, prompt index, text) per request."""
    rows, i = [], first
    with openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=args.request_timeout) as client:
        while time.monotonic() < stop:
            index, began = i % len(prompts), time.monotonic()
            i += 1
            try:
                answer = client.completions.create(model="served", prompt=prompts[index], max_tokens=args.max_tokens,
                                                   temperature=0)
                rows.append((200, time.monotonic() - began, answer.usage.completion_tokens, index,
                             answer.choices[0].text))
            except openai.APIStatusError as e:
                rows.append((e.status_code, time.monotonic() - began, 0, index, None))
                if e.status_code == 429:
                    time.sleep(float(e.response.headers.get("retry-after", "1")))
            except openai.APIConnectionError:  # includes the client's own timeout
                rows.append(("no answer", time.monotonic() - began, 0, index, None))
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="serve's engine (vllm: its async "
                        "engine, which batches continuously; PYTHONPATH=OLD/src measures an older codelift)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--request-timeout", type=float, default=120, help="client-side bound on one request")
    args = parser.parse_args()
    path = prepare_model(args.model)
    tokenizer = load_tokenizer(path)
    prompts = [render_prompt(t, "chat", tokenizer) for t in load_tasks("humaneval")[:args.prompts]]
    before = machine()
    options = ("--backend", args.backend, "--served-name", "served", "--max-queue", str(args.max_queue),
               "--request-timeout", str(args.request_timeout))
    with running_server(path, *options) as (url, server, start):
        with openai.OpenAI(base_url=url, api_key="none", max_retries=0) as client:
            alone = [client.completions.create(model="served", prompt=p, max_tokens=args.max_tokens,
                                               temperature=0).choices[0].text for p in prompts]
        rss = []
        stop = time.monotonic() + args.seconds
        sampling = threading.Event()

        def sample_rss():
            while not sampling.wait(1.0):
                rss.append(rss_mb(server.pid))

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        began = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            rows = [r for part in pool.map(lambda c: client_loop(url, prompts, c, args, stop), range(args.clients))
                    for r in part]
        seconds = time.monotonic() - began
        sampling.set()
        sampler.join()
    warm = min(int(min(60, args.seconds / 4)), len(rss) - 1)  # one reading a second
    ok = [r for r in rows if r[0] == 200]
    latencies = [r[1] for r in ok]
    statuses = Counter(str(r[0]) for r in rows)
    table = Table(title=f"codelift serve under load: {args.model} ({args.backend} backend), {len(prompts)} HumanEval "
                        f"chat prompts, greedy, {args.max_tokens} tokens; {before} -> server start {start:.0f} s")
    for column in ("clients", "max queue", "seconds", "requests/s", "tokens/s", "p50 s", "p95 s", "p99 s", "statuses",
                   "200 equal to alone", "RSS MiB warm -> end (max)"):
        table.add_column(column, justify="right")
    table.add_row(str(args.clients), str(args.max_queue), f"{seconds:.0f}", f"{len(ok) / seconds:.2f}",
                  f"{sum(r[2] for r in ok) / seconds:.1f}", *(f"{percentile(latencies, q):.2f}" for q in (.5, .95, .99)),
                  ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
                  f"{sum(r[4] == alone[r[3]] for r in ok)}/{len(ok)}",
                  f"{rss[warm]:.0f} -> {rss[-1]:.0f} ({max(rss):.0f})")
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
