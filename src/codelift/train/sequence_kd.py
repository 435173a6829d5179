"""Sequence-level distillation (Kim & Rush 2016): the student is fine-tuned on the teacher's answers,
kept only where the task's tests pass them.

What lifts a small code model is not any teacher text but teacher answers verified by execution
(SelfCodeAlign's ablation: the execution filter beats every other). The recipe: the teacher answers
every training task K times (greedy for K = 1, else sampled at `sample_temperature`), appended to
`teacher_answers.jsonl` as it goes so a killed run resumes -> each answer's code runs in the
sandbox on its task's tests -> up to J distinct passing answers per task are kept (tasks without
tests keep code that compiles, marked unverified, only when asked) -> a yield table is printed and
written to `teacher_yield.json` -> the student trains on the kept answers, in its own prompt format:
plain SFT, or with `token_kd` also logit KD toward the teacher on those same sequences (one
tokenizer). It needs no shared vocabulary without `token_kd`, so it works across model families.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import track
from rich.table import Table

from codelift.config import DistillConfig
from codelift.data import Task, load_tasks
from codelift.data.clean import is_python_code
from codelift.errors import CodeliftError
from codelift.io import append_rows, resume_log, write_json, write_jsonl
from codelift.prompts import default_format, prompt_stop, render_prompt

ANSWER_BATCH = 32  # tasks per appended chunk of answers
PASSED, FAILED = "kept: passed the tests", "dropped: failed the tests"  # the two outcomes a sandbox run gives
OUTCOMES = (PASSED, "kept: compiles, unverified", FAILED,
            "dropped: no tests to check", "dropped: no Python code", "dropped: duplicate", "dropped: over keep_per_task")


def train_sequence_kd(teacher: str | None, student: str, data: str, out: Path, cfg: DistillConfig, *,
                      validation: str | None = None, merge: bool = False) -> dict:
    """Fine-tune `student` on the teacher's verified answers (with `token_kd`, `distill.train_distill`
    adds logit KD on the same sequences)."""
    from codelift.train.sft import train_sft

    kept, extra = verified_teacher_data(teacher, student, data, out, cfg)
    return train_sft(student, str(kept), out, cfg, validation=validation, merge=merge, stage="distill", extra=extra)


def verified_teacher_data(teacher: str | None, student: str, data: str, out: Path,
                          cfg: DistillConfig) -> tuple[Path, dict]:
    """The kept answers as a task file (`teacher_data.jsonl`) and what the run manifest records of them."""
    if teacher is None:
        raise CodeliftError("--mode sequence needs --teacher MODEL: the teacher writes the training answers.")
    tasks = load_tasks(data)
    out.mkdir(parents=True, exist_ok=True)
    answers = sample_answers(teacher, tasks, out / "teacher_answers.jsonl", cfg)
    kept, outcomes = keep_answers(tasks, answers, cfg)
    report = yield_report(tasks, kept, outcomes)
    write_json(out / "teacher_yield.json", report)
    Console(stderr=True).print(yield_table(report))
    if not kept:
        raise CodeliftError(f"{out / 'teacher_yield.json'}: none of the teacher's {len(outcomes)} answers was kept; "
                            f"sample more per task (--samples-per-task), use a stronger teacher, or keep unverified "
                            f"answers (--no-filter-by-tests).")
    path = out / "teacher_data.jsonl"
    write_jsonl(path, (task.to_dict() for task in kept))
    return path, {"teacher": teacher, "student": student, "data": data, "teacher_yield": report["answers"]}


def sample_answers(model: str, tasks: list[Task], log: Path, cfg: DistillConfig, *,
                   role: str = "teacher") -> dict[str, list[str]]:
    """task_id -> the answers of `model` (full text): the teacher's here, the student's own in prefer
    (`role` names which in the progress bar). Tasks already in `log` are not asked again, and the log
    is resumed only with the settings that started it (its key stays "teacher", so older logs resume)."""
    from codelift.generate import make_generator

    sampled = cfg.samples_per_task > 1
    settings = {"teacher": model, "samples_per_task": cfg.samples_per_task, "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.sample_temperature if sampled else 0.0, "seed": cfg.seed}
    done = {task_id: row["answers"] for task_id, row in resume_log(log, settings).items()}
    missing = [t for t in tasks if t.task_id not in done]
    if not missing:
        return done
    with make_generator(model, backend=cfg.generation_backend, progress=False) as generator:
        fmt = default_format(generator.tokenizer)
        position = {t.task_id: i for i, t in enumerate(tasks)}  # seeds follow the task, so a resumed run samples alike
        for start in track(range(0, len(missing), ANSWER_BATCH), description=f"{role} answers ({len(missing)} tasks)"):
            batch = missing[start:start + ANSWER_BATCH]
            results = generator.generate([render_prompt(t, fmt, generator.tokenizer) for t in batch],
                                         n=cfg.samples_per_task, max_new_tokens=cfg.max_new_tokens,
                                         temperature=settings["temperature"], stop=prompt_stop(fmt),
                                         seed=cfg.seed + position[batch[0].task_id])
            rows = [{"task_id": t.task_id, "answers": r.completions} for t, r in zip(batch, results)]
            append_rows(log, rows)
            done |= {row["task_id"]: row["answers"] for row in rows}
    return done


def keep_answers(tasks: list[Task], answers: dict[str, list[str]], cfg: DistillConfig) -> tuple[list[Task], list[dict]]:
    """The kept answers as tasks (the teacher's code as solution; several per task when more than one
    distinct answer passes), and one outcome row per answer: task_id, sample, code, outcome."""
    outcomes = judge_answers(tasks, answers, include_unverified=cfg.include_unverified,
                             filter_by_tests=cfg.filter_by_tests)
    kept, per_task = [], Counter()
    by_id = {t.task_id: t for t in tasks}
    for row in outcomes:
        if row["outcome"].startswith("kept"):
            if per_task[row["task_id"]] >= cfg.keep_per_task:
                row["outcome"] = "dropped: over keep_per_task"
                continue
            per_task[row["task_id"]] += 1
            kept.append(dataclasses.replace(by_id[row["task_id"]], solution=row["code"] + "\n"))
    return kept, outcomes


def judge_answers(tasks: list[Task], answers: dict[str, list[str]], *, include_unverified: bool = False,
                  filter_by_tests: bool = True) -> list[dict]:
    """One outcome row per answer (task_id, sample, code, outcome): its code runs in the sandbox on the
    task's tests; an answer without Python code, or repeating an earlier one of its task, is not run."""
    from codelift.evaluate.score import score_samples
    from codelift.generate import extract_code

    outcomes, pending = [], []
    for task in tasks:
        seen = set()
        for j, answer in enumerate(answers[task.task_id]):
            code = extract_code(answer).strip()
            row = {"task_id": task.task_id, "sample": j, "code": code}
            if not is_python_code(code):
                row["outcome"] = "dropped: no Python code"
            elif code in seen:
                row["outcome"] = "dropped: duplicate"
            elif not task.tests:
                row["outcome"] = "kept: compiles, unverified" if include_unverified else "dropped: no tests to check"
            else:
                pending.append((task, row))
            seen.add(code)
            outcomes.append(row)
    if pending:
        judged, _ = score_samples([t for t, _ in pending], [{"task_id": t.task_id, "solution": r["code"] + "\n"}
                                                          for t, r in pending], k=[1])
        for (_, row), result in zip(pending, judged):
            passed = result["passed"] or not filter_by_tests
            row["outcome"] = PASSED if passed else FAILED
    return outcomes


def yield_report(tasks: list[Task], kept: list[Task], outcomes: list[dict]) -> dict:
    counts = Counter(row["outcome"] for row in outcomes)
    return {"tasks": len(tasks), "answers": {name: counts[name] for name in OUTCOMES},
            "kept_answers": len(kept), "tasks_with_a_kept_answer": len({t.task_id for t in kept}),
            "tasks_with_tests": sum(bool(t.tests) for t in tasks)}


def yield_table(report: dict) -> Table:
    table = Table(title=f"teacher answers: {report['kept_answers']} kept for {report['tasks_with_a_kept_answer']} "
                        f"of {report['tasks']} tasks")
    table.add_column("outcome")
    table.add_column("answers", justify="right")
    for name, count in report["answers"].items():
        table.add_row(name, str(count))
    return table
