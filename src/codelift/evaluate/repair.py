"""Repair with execution feedback (self-debugging): a problem none of whose N candidates passes its
visible tests sends its R most promising candidates back to the model, each with the first visible
test it fails and what happened there (the value the call returned, or the error), and the
repaired programs join the candidates before one is chosen.

The recipe, per problem: the candidates as judged on the visible tests (`selection.choose`) -> if none
passes them all, take the R distinct candidates passing the most (then the most likely) -> run the
first visible test each fails again, rewritten to report what its call returned -> ask the model
once more, greedily, in the prompt format of its first answer: the task, the failing code, the test
and its outcome -> the repairs become candidates N, N+1, ... Every problem considered is logged
(`repairs.jsonl`, with no repairs where a candidate passed), so a killed run resumes. The budget is
N samples + up to R repairs per problem, and it is reported with the filtered pass@1 it buys.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from codelift.data import Task
from codelift.evaluate.score import score_samples
from codelift.evaluate.selection import grouped, marked, run_visible_tests
from codelift.io import append_rows, read_appended
from codelift.prompts import prompt_stop, render_instruction, task_instruction

REQUEST = ("A previous attempt:\n```python\n{code}\n```\nIt fails this test:\n```python\n{test}\n```\n{outcome}\n"
           "Write the corrected complete code.")


def repair_targets(group: Sequence[dict], repairs: int) -> list[dict]:
    """The candidates a problem sends back: none where one passes every visible test or the problem
    has none, else up to `repairs` distinct ones, passing the most visible tests, then most likely."""
    if not group or group[0]["visible_verdict"] is None or any(c["visible_verdict"] == "passed" for c in group):
        return []
    ranked = sorted(group, key=lambda c: (-c["visible_passed"], -(c["mean_logprob"] if c["mean_logprob"] is not None
                                                                   else -math.inf), c["sample"]))
    targets, seen = [], set()
    for candidate in ranked:
        if candidate["completion"] not in seen and len(targets) < repairs:
            seen.add(candidate["completion"])
            targets.append(candidate)
    return targets


def reporting(test: str) -> str:
    """`assert CALL == VALUE` rewritten so that, failing, its message is what CALL returned."""
    try:
        [node] = ast.parse(test).body
    except (SyntaxError, ValueError):
        return test
    if not (isinstance(node, ast.Assert) and node.msg is None and isinstance(node.test, ast.Compare)
            and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
        return test
    return (f"assert (_codelift_got := {ast.unparse(node.test.left)}) == {ast.unparse(node.test.comparators[0])}, "
            f"repr(_codelift_got)[:300]")


def failing_test(task: Task, candidate: dict) -> str:
    """The first visible test the candidate did not pass."""
    statuses = candidate["visible_tests"] or ["not run"] * len(task.visible_tests)
    return next(test for test, status in zip(task.visible_tests, statuses) if status != "passed")


def outcomes(tasks: Sequence[Task], candidates: Sequence[dict], timeout: float) -> list[str]:
    """What happened at each candidate's first failing visible test, in one sentence for the model."""
    # one probe task per candidate (its own id): two candidates of one problem may fail different tests
    probes = [dataclasses.replace(task, task_id=f"{task.task_id}#{i}", tests=[reporting(failing_test(task, c))])
              for i, (task, c) in enumerate(zip(tasks, candidates))]
    judged, _ = score_samples(probes, [{"task_id": t.task_id, "completion": c["completion"]}
                                       for t, c in zip(probes, candidates)], k=[1], timeout=timeout)
    said = []
    for task, candidate, probe, row in zip(tasks, candidates, probes, judged):
        if row["verdict"] == "failed" and probe.tests[0] != failing_test(task, candidate):
            said.append(f"The call returned {row['message']} instead.")
        elif row["verdict"] == "passed":  # it fails only after the tests before it
            said.append("It fails when run after the tests before it.")
        else:
            said.append(f"Running it gives: {row['detail'].split(': ', 1)[-1]}")  # without "test 0, line 1"
    return said


def repair_prompt(task: Task, candidate: dict, outcome: str, fmt: str, tokenizer=None) -> str:
    request = REQUEST.format(code=candidate["completion"].strip(), test=failing_test(task, candidate), outcome=outcome)
    return render_instruction(f"{task_instruction(task)}\n\n{request}", fmt, tokenizer)


def with_repairs(tasks: Sequence[Task], judged: list[dict], log: Path, open_generator, *, repairs: int,
                 max_new_tokens: int, timeout: float) -> list[dict]:
    """The candidates as `selection.choose` judged them, plus their repairs (numbered after them,
    `repair_of` naming the source), the repairs alone run on the visible tests, and the choice made
    again. Problems `log` holds are not asked again. `open_generator()` gives a context manager
    yielding the generator, entered only when something is to be repaired."""
    from codelift.generate import extract_code

    candidates = grouped(tasks, judged)
    groups = dict(zip((t.task_id for t in tasks), candidates))
    logged = {row["task_id"]: row["repairs"] for row in read_appended(log)}
    jobs = [(task, target) for task in tasks if task.task_id not in logged
            for target in repair_targets(groups[task.task_id], repairs)]
    found = {t.task_id: [] for t in tasks if t.task_id not in logged}
    if jobs:
        said = outcomes([task for task, _ in jobs], [c for _, c in jobs], timeout)
        with open_generator() as generator:
            fmt = jobs[0][1]["prompt_format"]
            results = generator.generate([repair_prompt(task, c, s, fmt, generator.tokenizer)
                                          for (task, c), s in zip(jobs, said)],
                                         max_new_tokens=max_new_tokens, temperature=0.0, stop=prompt_stop(fmt))
        for (task, source), outcome, result in zip(jobs, said, results):
            text = result.completions[0]
            found[task.task_id].append({
                "task_id": task.task_id, "sample": len(groups[task.task_id]) + len(found[task.task_id]),
                "raw": text, "completion": text if fmt == "raw" else extract_code(text),
                "generation_seconds": round(result.seconds, 4), "new_tokens": result.token_counts[0],
                "mean_logprob": result.mean_logprobs[0], "prompt_format": fmt, "repair_of": source["sample"],
                "feedback": outcome})
    if found:
        append_rows(log, [{"task_id": task_id, "repairs": rows} for task_id, rows in found.items()])
    logged |= found
    repaired = grouped(tasks, [row for t in tasks for row in logged[t.task_id]])
    run_visible_tests(tasks, repaired, timeout)
    return marked([group + more for group, more in zip(candidates, repaired)])
