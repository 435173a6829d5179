"""Plan sampling at inference (`eval` / `generate --mode plan`): N plans, M programs from each, one
program chosen on the visible tests.

The recipe for each task: the student writes N distinct plans (`[GEN_PLAN]`, temperature 0.6 by
default) -> M programs from each (`[GEN_CODE]` given the plan) -> every candidate runs in the
sandbox on the task's *visible* tests only (MBPP: its first test; HumanEval: the docstring
examples turned into assertions) -> the first candidate, in generation order, that passes them all
is chosen; when none does, the one that passes the most visible tests, then the one with the
highest mean log-probability. Selection only ever sees a copy of the task whose tests are its
visible tests (`visible_only`), so the hidden tests cannot leak into it (tested). The budget is
N x M programs per task; its pass rate is reported as "filtered pass@1", never as plain pass@1.
`--plans 0` asks the same model's code task without a plan: the baseline of the same student.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from codelift.data import Task
from codelift.errors import CodeliftError
from codelift.evaluate.score import score_samples, summarize
from codelift.plans.teacher import plan_steps, render_plan
from codelift.prompts import student_code_prompt, student_plan_prompt

STOP = ("\n### ",)  # the end of a response in the training template
PLAN_ROUNDS = 3  # draws per task to make up N distinct plans


def visible_only(task: Task) -> Task:
    """The task as selection may see it: its visible tests are its only tests."""
    return dataclasses.replace(task, tests=list(task.visible_tests))


def clean_plan(text: str) -> str:
    """A sampled plan as the code prompt gets it: renumbered steps, or the text when it has none."""
    steps = plan_steps(text)
    return render_plan(steps) if steps else text.strip()


def distinct_plans(generator, tasks: Sequence[Task], contexts: Sequence[str], n: int, *, temperature: float,
                   max_new_tokens: int, seed: int) -> list[list[str]]:
    """Up to `n` distinct non-empty plans per task; tasks short of `n` draw again (PLAN_ROUNDS in all)."""
    plans: list[list[str]] = [[] for _ in tasks]
    for round_ in range(PLAN_ROUNDS):
        short = [i for i in range(len(tasks)) if len(plans[i]) < n]
        if not short:
            break
        drawn = generator.generate([student_plan_prompt(tasks[i], contexts[i]) for i in short], n=n, max_new_tokens=max_new_tokens,
                                   temperature=temperature, stop=STOP, seed=seed + 1000 * round_)
        for i, result in zip(short, drawn):
            for text in map(clean_plan, result.completions):
                if text and text not in plans[i] and len(plans[i]) < n:
                    plans[i].append(text)
    return plans


def select_candidate(candidates: Sequence[dict]) -> int:
    """The chosen candidate's index: the first passing every visible test; else the most visible
    tests passed, then the highest mean log-probability (earliest on ties)."""
    for i, candidate in enumerate(candidates):
        if candidate["visible_verdict"] == "passed":
            return i
    logprob = [c["mean_logprob"] if c["mean_logprob"] is not None else -math.inf for c in candidates]
    return max(range(len(candidates)), key=lambda i: (candidates[i]["visible_passed"], logprob[i], -i))


def run_visible_tests(tasks: Sequence[Task], candidates: list[list[dict]], timeout: float) -> None:
    """Judge every candidate on its task's visible tests in the sandbox, in place."""
    shown = [visible_only(t) for t in tasks]
    jobs = [(task, c) for task, group in zip(shown, candidates) for c in group if task.tests]
    for task, group in zip(shown, candidates):
        if not task.tests:
            for c in group:
                c.update(visible_verdict=None, visible_tests=[], visible_passed=0)
    if not jobs:
        return
    judged, _ = score_samples([task for task, _ in jobs], [{"task_id": t.task_id, "completion": c["completion"]}
                                                          for t, c in jobs], k=[1], timeout=timeout)
    for (_, candidate), row in zip(jobs, judged):
        candidate.update(visible_verdict=row["verdict"], visible_tests=row["tests"],
                         visible_passed=sum(status == "passed" for status in row["tests"]))


def plan_sampled_rows(generator, tasks: Sequence[Task], *, plans: int, codes_per_plan: int, plan_temperature: float,
                      temperature: float, max_new_tokens: int, timeout: float = 3.0, seed: int = 42,
                      contexts: Sequence[str] | None = None) -> list[dict]:
    """One row per candidate program, `selected` marking the chosen one of each task; each row holds
    its plan, its visible-test verdict and statuses, and its share of the generation time.
    `contexts` (retrieved examples, one per task) go into both the plan and the code prompts."""
    from codelift.generate import extract_code

    if plans < 0 or codes_per_plan < 1:
        raise CodeliftError(f"--plans must be 0 or more and --codes-per-plan at least 1, got {plans} and "
                            f"{codes_per_plan}.")
    if codes_per_plan > 1 and temperature == 0:
        raise CodeliftError(f"--codes-per-plan {codes_per_plan} with --temperature 0: greedy programs from one plan "
                            f"are identical; give a sampling temperature such as 0.6.")
    contexts = contexts or [""] * len(tasks)
    task_plans = distinct_plans(generator, tasks, contexts, plans, temperature=plan_temperature,
                                max_new_tokens=max_new_tokens, seed=seed) if plans else [[] for _ in tasks]
    task_plans = [found or [""] for found in task_plans]  # --plans 0 or no usable plan: code without one
    pairs = [(t, j, plan) for t, found in enumerate(task_plans) for j, plan in enumerate(found)]
    programs = generator.generate([student_code_prompt(tasks[t], plan, contexts[t]) for t, _, plan in pairs], n=codes_per_plan,
                                  max_new_tokens=max_new_tokens, temperature=temperature, stop=STOP, seed=seed)
    candidates: list[list[dict]] = [[] for _ in tasks]
    for (t, j, plan), result in zip(pairs, programs):
        for text, count, logprob in zip(result.completions, result.token_counts, result.mean_logprobs):
            candidates[t].append({"plan_index": j, "plan": plan, "raw": text, "completion": extract_code(text),
                                  "new_tokens": count, "mean_logprob": logprob,
                                  "generation_seconds": round(result.seconds / codes_per_plan, 4)})
    run_visible_tests(tasks, candidates, timeout)
    rows = []
    for task, group in zip(tasks, candidates):
        chosen = select_candidate(group)
        rows += [{"task_id": task.task_id, "sample": i, **c, "selected": i == chosen} for i, c in enumerate(group)]
    return rows


def plan_summary(candidates: dict, rows: Sequence[dict], tasks: Sequence[Task], plans: int, codes_per_plan: int, *,
                 codebleu: bool = False) -> dict:
    """The summary of a plan-sampled run scores the candidate chosen per problem, as a run of one
    program per problem is scored. Its pass rate is named filtered pass@1 and carries its sample
    budget, so it is never read as plain pass@1; every candidate's own scores stay, named candidate_*."""
    chosen = [r for r in rows if r["selected"]]
    scored = summarize(chosen, {t.task_id: t for t in tasks}, k=(1,), codebleu=codebleu)
    filtered = {"tasks": scored["tasks"], "filtered_pass@1": scored["pass@1"],
                "sample_budget": f"{plans} plans x {codes_per_plan} programs = {max(plans, 1) * codes_per_plan}",
                **{key: scored[key] for key in ("exact_match", "syntax_valid", "avg_tests_passed", "codebleu", "verdicts")
                   if key in scored},
                "selected_passed_visible": sum(r["visible_verdict"] == "passed" for r in chosen) / len(chosen),
                "mean_distinct_plans": len({(r["task_id"], r["plan_index"]) for r in rows}) / len(chosen)}
    return filtered | {f"candidate_{key}": value for key, value in candidates.items() if key not in ("tasks", "verdicts")}
