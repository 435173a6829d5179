"""APPS (Hendrycks et al. 2021): programming problems judged by input/output pairs.

A problem is one of two kinds. A *standard-input* program reads its input and prints its answer; a
*call-based* one (LeetCode style) defines `fn_name`, maybe as a method of `class Solution`. Both
become ordinary tasks whose tests are Python snippets the sandbox runs after the program, so every
stage that judges, chooses or repairs handles them unchanged:

- call-based: the program is the candidate itself; each test calls the function with one input's
  arguments and compares the result as APPS's checker does (a tuple counts as a list, and an
  expected value wrapped in a one-element list also matches unwrapped);
- standard input: running the candidate at import would read an empty stdin, so the sandbox runs
  `runnable_program` instead, which only compiles it; each test then runs the compiled candidate
  as `__main__` on one input and compares what it printed: exactly, else with line ends and
  trailing whitespace normalised (APPS's checker also accepts those).
"""

from __future__ import annotations

import json

from codelift.data.task import Task
from codelift.errors import CodeliftError

DIFFICULTIES = ("introductory", "interview", "competition")
FIELDS = ("problem_id", "question", "input_output")

# Defined before every test (the task's test_setup); the names start with `_apps_` to keep clear of
# the candidate's own. `exit`/`quit` are given because the sandbox's interpreter starts without
# `site`, which is what defines them, and APPS solutions call them.
HELPERS = '''
def _apps_same_output(got, expected):
    if got == expected:
        return True
    def lines(text):
        rows = [row.rstrip() for row in text.replace("\\r\\n", "\\n").split("\\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows
    return lines(got) == lines(expected)

def _apps_stdio(stdin_text):
    import io, sys
    stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode()), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = stdin, stdout
    try:
        exec(_apps_code, {"__name__": "__main__", "exit": sys.exit, "quit": sys.exit})
    except SystemExit:
        pass
    finally:
        sys.stdin, sys.stdout = saved
    return stdout.buffer.getvalue().decode("utf-8", "replace")

def _apps_same_result(got, expected):
    if isinstance(got, tuple):
        got = list(got)
    return got == expected or (isinstance(expected, list) and len(expected) == 1 and got == expected[0])

def _apps_call(name, args):
    solution = globals().get("Solution")
    if isinstance(solution, type) and hasattr(solution, name):
        return getattr(solution(), name)(*args)
    return globals()[name](*args)
'''


def apps_task(row: dict, where: str) -> Task:
    """One APPS record as a task; `where` names the file and line (or hub row) in errors."""
    for name in FIELDS:
        if name not in row:
            raise CodeliftError(f"{where}: missing field '{name}'; APPS records need {', '.join(FIELDS)}.")
    cases = _json_field(row, "input_output", where)
    inputs, outputs = (cases.get("inputs"), cases.get("outputs")) if isinstance(cases, dict) else (None, None)
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise CodeliftError(f"{where}: field 'input_output' must be a JSON object with equally long 'inputs' and "
                            f"'outputs' lists (and 'fn_name' for a call-based problem).")
    fn_name = cases.get("fn_name") or ""
    tests = [_call_test(fn_name, given, expected) if fn_name else _stdio_test(given, expected)
             for given, expected in zip(inputs, outputs)]
    solutions = _json_field(row, "solutions", where) or [""]
    starter = (row.get("starter_code") or "").strip()
    return Task(task_id=f"apps/{row['problem_id']}", instruction=_instruction(row["question"], starter, fn_name),
                solution=str(solutions[0]), tests=tests, entry_point=fn_name, visible_tests=tests[:1],
                source="apps", test_setup=HELPERS.strip() + "\n", difficulty=str(row.get("difficulty") or ""))


def is_stdin_task(task: Task) -> bool:
    return task.source == "apps" and not task.entry_point


def runnable_program(task: Task, program: str) -> str:
    """What the sandbox runs as the program: the candidate, or for a standard-input task a program
    that compiles the candidate (a syntax error is its error, with the candidate's line) for the
    tests to run on each input."""
    if not is_stdin_task(task):
        return program
    return f"_apps_code = compile({program!r}, '<program>', 'exec')\n"


def _json_field(row: dict, name: str, where: str):
    """APPS stores `input_output` and `solutions` as JSON text (empty where a problem has none)."""
    value = row.get(name)
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise CodeliftError(f"{where}: field '{name}' is not valid JSON ({e}).") from None


def _text(value) -> str:
    """An APPS input or output: text, or a list of lines."""
    return "\n".join(map(str, value)) + "\n" if isinstance(value, list) else str(value)


def _stdio_test(given, expected) -> str:
    return f"assert _apps_same_output(_apps_stdio({_text(given)!r}), {_text(expected)!r})\n"


def _call_test(fn_name: str, args, expected) -> str:
    return f"assert _apps_same_result(_apps_call({fn_name!r}, {args!r}), {expected!r})\n"


def _instruction(question: str, starter: str, fn_name: str) -> str:
    parts = [question.strip()]
    if starter:
        parts.append(f"Start from this code:\n```python\n{starter}\n```")
    parts.append(f"Write `{fn_name}`: it is called with the inputs and its return value is checked." if fn_name
                 else "Read the input from standard input and print the answer to standard output.")
    return "\n\n".join(parts)
