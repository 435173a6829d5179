"""The one record every stage reads: a programming task with its reference solution and tests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from codelift.errors import CodeliftError


@dataclass
class Task:
    """A problem, its reference program and the tests that judge a candidate program.

    `solution` is a whole runnable program (for HumanEval: prompt + canonical body).
    `tests` are independent snippets, each run after `test_setup` and the candidate program;
    `visible_tests` are the ones a model may see in its prompt (a subset, or doctest examples).
    `prompt_prefix` is code a completion continues (HumanEval's signature and docstring); empty
    when the model writes the whole program. `difficulty` is the benchmark's own level where it has
    one (APPS: introductory, interview, competition); scores are also reported per level.
    """

    task_id: str
    instruction: str
    solution: str
    tests: list[str] = field(default_factory=list)
    entry_point: str = ""
    visible_tests: list[str] = field(default_factory=list)
    source: str = ""
    test_setup: str = ""
    prompt_prefix: str = ""
    difficulty: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict, where: str = "record") -> Task:
        """Build a task from a prepared JSONL row, naming the missing or mistyped field."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in ("task_id", "instruction", "solution"):
            if name not in row:
                raise CodeliftError(f"{where}: missing field '{name}'; a task needs task_id, instruction and solution.")
        kwargs = {}
        for name, value in row.items():
            if name not in fields:
                continue
            list_field = name in ("tests", "visible_tests")
            if list_field and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise CodeliftError(f"{where}: field '{name}' must be a list of strings, got {type(value).__name__}.")
            if not list_field and not isinstance(value, (str, int)):
                raise CodeliftError(f"{where}: field '{name}' must be a string, got {type(value).__name__}.")
            kwargs[name] = value if list_field else str(value)
        return cls(**kwargs)

    def test_program(self, program: str, test: str | None = None) -> str:
        """The program the sandbox runs: candidate, setup, then one test (or all of them)."""
        tests = [test] if test is not None else self.tests
        return "\n\n".join(part for part in (program, self.test_setup, *tests) if part)
