"""Sequence-level distillation (Kim & Rush 2016): the student is fine-tuned on the teacher's answers.

It needs no shared vocabulary, so it works across tokenizer families (a Gemma teacher, a SmolLM2
student). The recipe: the teacher answers every training instruction through the generation
engine (greedy, its chat template when it has one), appended to `teacher_answers.jsonl` as it
goes so a killed run resumes -> optionally keep only answers whose code passes the task's tests in
the sandbox -> write the kept tasks with the teacher's code as their solution -> SFT the student
on them with every SFT setting.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import track

from codelift.config import DistillConfig
from codelift.data import Task, load_tasks
from codelift.data.clean import is_python_code
from codelift.errors import CodeliftError
from codelift.evaluate.run import append_rows, read_appended
from codelift.io import write_jsonl
from codelift.prompts import render_prompt
from codelift.train.sft import train_sft

ANSWER_BATCH = 32  # prompts per appended chunk of answers


def train_sequence_kd(teacher: str | None, student: str, data: str, out: Path, cfg: DistillConfig, *,
                      validation: str | None = None, merge: bool = False) -> dict:
    if teacher is None:
        raise CodeliftError("--mode sequence needs --teacher MODEL: the teacher writes the training answers.")
    tasks = load_tasks(data)
    out.mkdir(parents=True, exist_ok=True)
    answers = teacher_answers(teacher, tasks, out / "teacher_answers.jsonl", cfg)
    kept, counts = keep_answers(tasks, answers, cfg.filter_by_tests)
    if not kept:
        raise CodeliftError(f"{data}: none of the teacher's {len(tasks)} answers was kept ({dict(counts)}); "
                            f"without --filter-by-tests or with a stronger teacher there is data to learn from.")
    Console(stderr=True).print("teacher answers: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    teacher_data = out / "teacher_data.jsonl"
    write_jsonl(teacher_data, (task.to_dict() for task in kept))
    return train_sft(student, str(teacher_data), out, cfg, validation=validation, merge=merge, stage="distill",
                     extra={"teacher": teacher, "student": student, "data": data, "teacher_answers": dict(counts)})


def teacher_answers(teacher: str, tasks: list[Task], log: Path, cfg: DistillConfig) -> dict[str, str]:
    """task_id -> the code of the teacher's answer; answers already in `log` are not asked again."""
    from codelift.generate import extract_code, make_generator

    done = {row["task_id"]: row["code"] for row in read_appended(log)}
    missing = [t for t in tasks if t.task_id not in done]
    if not missing:
        return done
    with make_generator(teacher, backend=cfg.generation_backend) as generator:
        tokenizer = generator.tokenizer
        fmt = "chat" if getattr(tokenizer, "chat_template", None) else "instruct"
        for start in track(range(0, len(missing), ANSWER_BATCH), description=f"teacher answers ({len(missing)})"):
            batch = missing[start:start + ANSWER_BATCH]
            results = generator.generate([render_prompt(t, fmt, tokenizer) for t in batch],
                                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                                         stop=("\n### ",) if fmt == "instruct" else ())
            rows = [{"task_id": t.task_id, "answer": r.completions[0], "code": extract_code(r.completions[0])}
                    for t, r in zip(batch, results)]
            append_rows(log, rows)
            done |= {row["task_id"]: row["code"] for row in rows}
    return done


def keep_answers(tasks: list[Task], answers: dict[str, str], filter_by_tests: bool) -> tuple[list[Task], Counter]:
    """The tasks with the teacher's code as solution, and a count per reason kept or dropped."""
    from codelift.evaluate.score import score_samples

    counts: Counter = Counter()
    candidates = []
    for task in tasks:
        code = answers[task.task_id].strip()
        if not is_python_code(code):
            counts["dropped: no Python code"] += 1
        else:
            candidates.append(dataclasses.replace(task, solution=code + "\n"))
    if not filter_by_tests:
        counts["kept"] += len(candidates)
        return candidates, counts
    tested = [t for t in candidates if t.tests]
    counts["kept: no tests to check"] += len(candidates) - len(tested)
    verdicts = {}
    if tested:
        rows, _ = score_samples(tested, [{"task_id": t.task_id, "solution": t.solution} for t in tested], k=[1])
        verdicts = {row["task_id"]: row["passed"] for row in rows}
    counts["kept: passed the tests"] += sum(verdicts.values())
    counts["dropped: failed the tests"] += len(verdicts) - sum(verdicts.values())
    return [t for t in candidates if verdicts.get(t.task_id, not t.tests)], counts

