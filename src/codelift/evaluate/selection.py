"""Choosing one program among a problem's candidates by running them on its visible tests.

Used by `eval --candidates N` (N samples of the same prompt) and by plan sampling (N plans x M
programs). Every candidate runs in the sandbox on the task's *visible* tests only (MBPP: its first
test; HumanEval: the docstring examples turned into assertions); the first that passes them all is
chosen, else the one passing most, then the highest mean log-probability. Selection only ever sees
a copy of the task whose tests are its visible tests (`visible_only`), so the hidden tests cannot
leak into it (tested). The pass rate of the chosen programs is "filtered pass@1" at a budget of N
programs, never plain pass@1 (CodeT: +10 to +18 points pass@1 from choosing by tests).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from codelift.data import Task
from codelift.evaluate.score import score_samples, summarize


def visible_only(task: Task) -> Task:
    """The task as selection may see it: its visible tests are its only tests."""
    return dataclasses.replace(task, tests=list(task.visible_tests))


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


def choose(tasks: Sequence[Task], rows: Sequence[dict], timeout: float) -> list[dict]:
    """The candidate rows (`task_id`, `sample` numbered per task, `completion`) of every task, each
    judged on its task's visible tests, `selected` marking the chosen one of each task. Evaluation
    chooses when it scores, from the candidates its log holds, so visible tests or a rule changed
    since the programs were generated take effect without generating them again."""
    candidates = grouped(tasks, rows)
    run_visible_tests(tasks, candidates, timeout)
    return marked(candidates)


def grouped(tasks: Sequence[Task], rows: Sequence[dict]) -> list[list[dict]]:
    """Copies of the rows, one group per task in `tasks` order, each in `sample` order."""
    groups: dict[str, list[dict]] = {task.task_id: [] for task in tasks}
    for row in sorted(rows, key=lambda r: r["sample"]):
        groups[row["task_id"]].append(dict(row))
    return [groups[task.task_id] for task in tasks]


def marked(candidates: list[list[dict]]) -> list[dict]:
    """Every candidate, already judged on the visible tests, with `selected` set on its group's choice."""
    rows = []
    for group in candidates:
        pick = select_candidate(group)
        rows += [c | {"selected": i == pick} for i, c in enumerate(group)]
    return rows


def selection_summary(candidates: dict, rows: Sequence[dict], tasks: Sequence[Task], budget: str, *,
                      codebleu: bool = False) -> dict:
    """The summary of a selection run scores the candidate chosen per problem, as a run of one
    program per problem is scored. Its pass rate is named filtered pass@1 and carries its sample
    budget, so it is never read as plain pass@1; every candidate's own scores stay, named candidate_*."""
    chosen = [r for r in rows if r["selected"]]
    scored = summarize(chosen, {t.task_id: t for t in tasks}, k=(1,), codebleu=codebleu)
    filtered = {"tasks": scored["tasks"], "filtered_pass@1": scored["pass@1"], "sample_budget": budget,
                **{key: scored[key] for key in ("exact_match", "syntax_valid", "avg_tests_passed", "codebleu",
                                                "verdicts") if key in scored},
                "selected_passed_visible": sum(r["visible_verdict"] == "passed" for r in chosen) / len(chosen),
                "tasks_with_visible_tests": sum(bool(t.visible_tests) for t in tasks)}
    if "by_difficulty" in scored:
        filtered["by_difficulty"] = {level: {"tasks": s["tasks"], "filtered_pass@1": s["pass@1"],
                                             "avg_tests_passed": s["avg_tests_passed"]}
                                     for level, s in scored["by_difficulty"].items()}
    repairs = [r for r in rows if r.get("repair_of") is not None]
    if repairs:  # what repair with test feedback bought: the problems sent back, and how the chosen repairs fared
        filtered |= {"repaired_tasks": len({r["task_id"] for r in repairs}), "repairs": len(repairs),
                     "repairs_passing_visible": sum(r["visible_verdict"] == "passed" for r in repairs),
                     "chosen_repairs": sum(r["selected"] for r in repairs),
                     "chosen_repairs_passed": sum(r["selected"] and r["passed"] for r in repairs)}
    every = {f"candidate_{key}": value for key, value in candidates.items() if key not in ("tasks", "verdicts")}
    return filtered | every
