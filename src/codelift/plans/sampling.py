"""Plan sampling at inference (`eval` / `generate --strategy plan`): N plans, M programs from each, one
program chosen on the visible tests.

The recipe for each task: the student writes N distinct plans (`[GEN_PLAN]`, temperature 0.6 by
default) -> M programs from each (`[GEN_CODE]` given the plan) -> one is chosen on the visible
tests (`codelift.evaluate.selection`). Prompts are in the format the student was trained in. The
budget is N x M programs per task; its pass rate is reported as "filtered pass@1", never as plain
pass@1. `--plans 0` asks the same model's code task without a plan: the baseline of the same student.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from codelift.data import Task
from codelift.errors import CodeliftError
from codelift.evaluate.selection import selection_summary
from codelift.plans.teacher import plan_steps, render_plan
from codelift.prompts import prompt_stop, student_code_prompt, student_plan_prompt

PLAN_ROUNDS = 3  # draws per task to make up N distinct plans


def clean_plan(text: str) -> str:
    """A sampled plan as the code prompt gets it: renumbered steps, or the text when it has none."""
    steps = plan_steps(text)
    return render_plan(steps) if steps else text.strip()


def distinct_plans(generator, tasks: Sequence[Task], contexts: Sequence[str], n: int, *, temperature: float,
                   max_new_tokens: int, seed: int, fmt: str = "instruct") -> list[list[str]]:
    """Up to `n` distinct non-empty plans per task; tasks short of `n` draw again (PLAN_ROUNDS in all)."""
    plans: list[list[str]] = [[] for _ in tasks]
    for round_ in range(PLAN_ROUNDS):
        short = [i for i in range(len(tasks)) if len(plans[i]) < n]
        if not short:
            break
        drawn = generator.generate([student_plan_prompt(tasks[i], contexts[i], fmt, generator.tokenizer) for i in short],
                                   n=n, max_new_tokens=max_new_tokens, temperature=temperature, stop=prompt_stop(fmt),
                                   seed=seed + 1000 * round_)
        for i, result in zip(short, drawn):
            for text in map(clean_plan, result.completions):
                if text and text not in plans[i] and len(plans[i]) < n:
                    plans[i].append(text)
    return plans


def plan_sampled_rows(generator, tasks: Sequence[Task], *, plans: int, codes_per_plan: int, plan_temperature: float,
                      temperature: float, max_new_tokens: int, seed: int = 42,
                      contexts: Sequence[str] | None = None, fmt: str = "instruct") -> list[dict]:
    """One row per candidate program (`sample` numbered per task), holding its plan and its share of
    the generation time; `evaluate.selection.choose` picks one per task.
    `contexts` (retrieved examples, one per task) go into both the plan and the code prompts, rendered in
    prompt format `fmt` (the student's training format)."""
    from codelift.generate import extract_code

    if plans < 0 or codes_per_plan < 1:
        raise CodeliftError(f"--plans must be 0 or more and --codes-per-plan at least 1, got {plans} and "
                            f"{codes_per_plan}.")
    if codes_per_plan > 1 and temperature == 0:
        raise CodeliftError(f"--codes-per-plan {codes_per_plan} with --temperature 0: greedy programs from one plan "
                            f"are identical; give a sampling temperature such as 0.6.")
    contexts = contexts or [""] * len(tasks)
    task_plans = distinct_plans(generator, tasks, contexts, plans, temperature=plan_temperature,
                                max_new_tokens=max_new_tokens, seed=seed, fmt=fmt) if plans else [[] for _ in tasks]
    task_plans = [found or [""] for found in task_plans]  # --plans 0 or no usable plan: code without one
    pairs = [(t, j, plan) for t, found in enumerate(task_plans) for j, plan in enumerate(found)]
    programs = generator.generate([student_code_prompt(tasks[t], plan, contexts[t], fmt, generator.tokenizer)
                                   for t, _, plan in pairs], n=codes_per_plan, max_new_tokens=max_new_tokens,
                                  temperature=temperature, stop=prompt_stop(fmt), seed=seed)
    rows, numbered = [], Counter()
    for (t, j, plan), result in zip(pairs, programs):
        for text, count, logprob in zip(result.completions, result.token_counts, result.mean_logprobs):
            rows.append({"task_id": tasks[t].task_id, "sample": numbered[t], "plan_index": j, "plan": plan, "raw": text,
                         "completion": extract_code(text), "new_tokens": count, "mean_logprob": logprob,
                         "generation_seconds": round(result.seconds / codes_per_plan, 4)})
            numbered[t] += 1
    return rows


def plan_summary(candidates: dict, rows: Sequence[dict], tasks: Sequence[Task], plans: int, codes_per_plan: int, *,
                 codebleu: bool = False) -> dict:
    """The selection summary of a plan-sampled run, with its budget and how many distinct plans it drew."""
    budget = f"{plans} plans x {codes_per_plan} programs = {max(plans, 1) * codes_per_plan}"
    summary = selection_summary(candidates, rows, tasks, budget, codebleu=codebleu)
    chosen = sum(r["selected"] for r in rows)
    return summary | {"mean_distinct_plans": len({(r["task_id"], r["plan_index"]) for r in rows}) / chosen}
