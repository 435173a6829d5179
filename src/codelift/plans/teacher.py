"""`codelift plan generate`: plans that a teacher writes by reasoning backwards from a solution, checked.

The recipe: load the tasks (the shortest reference solution of each task_id) -> the teacher, shown
one worked example, the problem and that solution, writes the numbered step-by-step plan a
programmer would follow to arrive at it -> plans that are empty, not a numbered list, or mostly a
copy of the code are dropped, and duplicates -> verification: the teacher writes code from the
problem and the plan alone (never the reference), and the plan is kept only if that code passes the
task's tests in the sandbox -> each chunk of tasks is appended to a log, so a killed run resumes
where it stopped -> the kept plans, each with its provenance, and a table of kept and dropped per
reason.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from rich.progress import track

from codelift.config import PlanGenerateConfig
from codelift.data import Task, load_tasks
from codelift.data.clean import tokens
from codelift.errors import CodeliftError
from codelift.io import append_rows, resume_log, write_json, write_jsonl
from codelift.prompts import (PLAN_PROMPT_VERSION, code_from_plan_prompt, default_format, plan_prompt,
                              prompt_stop)

TASK_CHUNK = 16  # tasks between appends to the log (what a kill can lose)
COPY_NGRAM = 4  # word n-grams shared with the reference code count as copied
REASONS = ("kept: verified", "kept: no tests to verify", "kept: not verified (--no-verify)", "dropped: empty",
           "dropped: not a numbered list", "dropped: copy of the code", "dropped: duplicate",
           "dropped: failed verification")
_STEP = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*(\S.*)$", re.I)


def plan_steps(answer: str) -> list[str]:
    """The numbered steps of an answer, each with the lines that continue it. Prose before the list
    or after a blank line is left out; the numbering itself is re-made by `render_plan`."""
    steps: list[str] = []
    attached = False
    for line in answer.splitlines():
        if found := _STEP.match(line):
            steps.append(found.group(1).strip())
            attached = True
        elif not line.strip():
            attached = False
        elif attached:
            steps[-1] += " " + line.strip()
    return steps


def render_plan(steps: list[str]) -> str:
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))


def copied_share(plan: str, code: str, n: int = COPY_NGRAM) -> float:
    """The share of the plan's words (step numbers left out) that lie inside a word n-gram also found
    in the code."""
    words = tokens("\n".join(plan_steps(plan)) or plan)
    code_grams = {tuple(g) for g in _grams(tokens(code), n)}
    covered = [False] * len(words)
    for i, gram in enumerate(_grams(words, n)):
        if tuple(gram) in code_grams:
            covered[i:i + n] = [True] * n
    return sum(covered) / len(words) if words else 0.0


def _grams(words: list[str], n: int) -> list[list[str]]:
    return [words[i:i + n] for i in range(len(words) - n + 1)]


def check_plan(answer: str, reference: str, cfg: PlanGenerateConfig) -> tuple[str | None, str]:
    """(why the answer is dropped, or None; the plan as a clean numbered list)."""
    if not answer.strip():
        return "dropped: empty", ""
    steps = plan_steps(answer)
    if len(steps) < cfg.min_steps:
        return "dropped: not a numbered list", ""
    plan = render_plan(steps)
    if copied_share(plan, reference) >= cfg.copy_threshold:
        return "dropped: copy of the code", plan
    return None, plan


def training_tasks(data: str, limit: int | None) -> list[Task]:
    """One task per task_id, with the shortest of its reference solutions (files may repeat a task)."""
    chosen: dict[str, Task] = {}
    for task in load_tasks(data):
        known = chosen.get(task.task_id)
        if known is None or len(task.solution.strip()) < len(known.solution.strip()):
            chosen[task.task_id] = task
    tasks = list(chosen.values())
    return tasks[:limit] if limit else tasks


def generate_plans(teacher: str, data: str, out: Path, cfg: PlanGenerateConfig, *, backend: str = "hf",
                   generator_options: dict | None = None) -> dict:
    """Write the kept plans to `out` (JSONL) and `<out>.report.json`; returns the report."""
    tasks = training_tasks(data, cfg.limit)
    if not tasks:
        raise CodeliftError(f"{data}: no tasks to write plans for.")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_name(out.name + ".log")
    settings = {"teacher": teacher, "backend": backend, "prompt_version": PLAN_PROMPT_VERSION[cfg.direction],
                **cfg.model_dump(exclude={"limit", "direction"})}  # the prompt version names the direction
    done = resume_log(log, settings)
    missing = [t for t in tasks if t.task_id not in done]
    began = time.monotonic()
    if missing:
        from codelift.generate import make_generator

        with make_generator(teacher, backend, **(generator_options or {})) as generator:
            for start in track(range(0, len(missing), TASK_CHUNK), description=f"plans ({len(missing)} tasks)"):
                rows = plan_chunk(generator, missing[start:start + TASK_CHUNK], cfg)
                append_rows(log, rows)
                done |= {row["task_id"]: row for row in rows}
    counts = Counter({reason: 0 for reason in REASONS})
    kept = []
    for task in tasks:
        for j, outcome in enumerate(done[task.task_id]["plans"]):
            counts[outcome["reason"]] += 1
            if outcome["reason"].startswith("kept"):
                kept.append({"task_id": task.task_id, "plan": outcome["plan"], "sample": j,
                             "provenance": {"teacher": teacher, "backend": backend,
                                            "prompt_version": PLAN_PROMPT_VERSION[cfg.direction],
                                            "verification": outcome["verification"],
                                            "teacher_code": outcome.get("code"), "temperature": outcome["temperature"],
                                            "seed": cfg.seed}})
    write_jsonl(out, kept)
    report = {"tasks": len(tasks), "answers": sum(counts.values()), "kept": len(kept),
              "tasks_with_a_plan": len({row["task_id"] for row in kept}), "counts": dict(counts),
              "seconds_this_run": round(time.monotonic() - began, 1), "settings": settings}
    write_json(out.with_name(out.stem + ".report.json"), report)
    return report


def plan_chunk(generator, tasks: list[Task], cfg: PlanGenerateConfig) -> list[dict]:
    """Plans for `tasks`: written, filtered, deduplicated and verified; one log row per task."""
    tokenizer = generator.tokenizer
    if tokenizer is None:
        raise CodeliftError("the teacher's prompts are rendered with its tokenizer; with --backend openai give "
                            "--teacher as a local model folder (or embedded name) whose tokenizer the server uses.")
    stop = prompt_stop(default_format(tokenizer))
    temperature = 0.0 if cfg.plans_per_task == 1 else cfg.temperature
    answers = generator.generate([plan_prompt(t, tokenizer, cfg.direction) for t in tasks],
                                 n=cfg.plans_per_task, max_new_tokens=cfg.max_plan_tokens, temperature=temperature,
                                 top_p=cfg.top_p, stop=stop, seed=cfg.seed)
    rows = []
    for task, answer in zip(tasks, answers):
        outcomes, seen = [], set()
        for text in answer.completions:
            reason, plan = check_plan(text, task.solution, cfg)
            key = " ".join(tokens(plan))
            if reason is None and key in seen:
                reason = "dropped: duplicate"
            seen.add(key)
            outcomes.append({"answer": text, "plan": plan, "reason": reason, "temperature": temperature})
        rows.append({"task_id": task.task_id, "plans": outcomes})
    verify(generator, tasks, rows, cfg, stop)
    return rows


def verify(generator, tasks: list[Task], rows: list[dict], cfg: PlanGenerateConfig, stop: tuple[str, ...]) -> None:
    """Decide the plans that passed the filters: the teacher writes code from problem + plan (greedy)
    and the task's tests judge it in the sandbox."""
    from codelift.generate import extract_code

    pending = []
    for task, row in zip(tasks, rows):
        for outcome in row["plans"]:
            if outcome["reason"] is not None:
                continue
            if not cfg.verify:
                outcome.update(reason="kept: not verified (--no-verify)", verification="not run")
            elif not task.tests:
                outcome.update(reason="kept: no tests to verify", verification="not run: no tests")
            else:
                pending.append((task, outcome))
    if not pending:
        return
    answers = generator.generate([code_from_plan_prompt(task, o["plan"], generator.tokenizer) for task, o in pending],
                                 max_new_tokens=cfg.max_code_tokens, stop=stop, seed=cfg.seed)
    judge_codes(pending, [extract_code(answer.completions[0]) for answer in answers])


def judge_codes(pending: list[tuple[Task, dict]], codes: list[str]) -> None:
    """Run the code written from each plan on its task's tests in the sandbox; keep or drop the plan."""
    from codelift.evaluate.score import score_samples

    judged, _ = score_samples([task for task, _ in pending],
                              [{"task_id": task.task_id, "solution": code} for (task, _), code in zip(pending, codes)],
                              k=[1])
    for (_, outcome), code, result in zip(pending, codes, judged):
        passed = result["passed"]
        outcome.update(code=code, reason="kept: verified" if passed else "dropped: failed verification",
                       verification=result["verdict"] if passed else f"{result['verdict']}: {result['detail']}")


def read_plans(path: str | Path) -> dict[str, list[str]]:
    """task_id -> its kept plans, from a `plan generate` output, checked line by line."""
    from codelift.io import read_jsonl

    plans: dict[str, list[str]] = {}
    for lineno, row in read_jsonl(path):
        if not isinstance(row.get("task_id"), str) or not isinstance(row.get("plan"), str) or not row["plan"].strip():
            raise CodeliftError(f"{path}, line {lineno}: expected task_id and a non-empty plan (strings), as "
                                f"`codelift plan generate` writes them.")
        plans.setdefault(row["task_id"], []).append(row["plan"])
    return plans

