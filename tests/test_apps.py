"""APPS problems: loading APPS's own records, judging standard-input and call-based programs in the
sandbox, and scores per difficulty. No APPS data is here: the fixtures below are written in its format."""

import json

import pytest

from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.evaluate import score_samples
from codelift.evaluate.run import load_benchmark
from codelift.prompts import task_instruction

SUM_LINES = {"problem_id": 7, "difficulty": "introductory",
             "question": "Read n, then n integers on one line; print their sum.\n\nExample\nInput\n3\n1 2 3\nOutput\n6",
             "starter_code": "", "solutions": json.dumps(["n = int(input())\nprint(sum(map(int, input().split())))"]),
             # APPS gives an input or output as text or as a list of lines
             "input_output": json.dumps({"inputs": ["3\n1 2 3\n", ["2", "10 -3"]], "outputs": ["6\n", ["7"]]})}
TWO_SUM = {"problem_id": 4001, "difficulty": "interview", "question": "Return the indices of two numbers adding to target.",
           "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n",
           "solutions": "",
           "input_output": json.dumps({"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 3], 6]],
                                       "outputs": [[[0, 1]], [[0, 1]]]})}
SQUARE = {"problem_id": 9, "difficulty": "competition", "question": "Return x squared.", "starter_code": "def square(x):",
          "solutions": json.dumps(["def square(x):\n    return x * x"]),
          "input_output": json.dumps({"fn_name": "square", "inputs": [[2], [-3]], "outputs": [4, [9]]})}

STDIN_RIGHT = "import sys\nnums = sys.stdin.read().split()\nprint(sum(map(int, nums[1:])))   \n"
STDIN_MAIN = ("def main():\n    input()\n    total = sum(int(v) for v in input().split())\n    print(total)\n    exit()\n"
              "\nif __name__ == '__main__':\n    main()\n")
TWO_SUM_RIGHT = ("class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
                 "        for i, v in enumerate(nums):\n            if target - v in seen:\n"
                 "                return (seen[target - v], i)\n            seen[v] = i\n")


@pytest.fixture
def apps_dir(tmp_path):
    (tmp_path / "apps").mkdir()
    with open(tmp_path / "apps" / "apps-test.jsonl", "w") as f:
        for row in (SUM_LINES, TWO_SUM, SQUARE):
            f.write(json.dumps(row) + "\n")
    return tmp_path


def test_records_become_tasks_of_both_kinds(apps_dir):
    stdin, call, square = load_tasks("apps", "test", data_dir=apps_dir)
    assert [t.task_id for t in (stdin, call, square)] == ["apps/7", "apps/4001", "apps/9"]
    assert [t.difficulty for t in (stdin, call, square)] == ["introductory", "interview", "competition"]
    assert stdin.entry_point == "" and call.entry_point == "twoSum" and len(stdin.tests) == 2
    assert stdin.solution.startswith("n = int(input())") and call.solution == ""
    assert stdin.visible_tests == stdin.tests[:1]
    # the question shows its examples itself: the prompt does not repeat the test snippets
    assert "Standard input" not in task_instruction(stdin) and "_apps_" not in task_instruction(stdin)
    assert "standard input" in task_instruction(stdin) and "class Solution" in task_instruction(call)
    assert load_benchmark("apps", None, apps_dir, None)[0].task_id == "apps/7"  # eval's default split is test


def test_the_reference_solution_passes_and_wrong_programs_fail_as_they_should(apps_dir):
    tasks = load_tasks("apps", "test", data_dir=apps_dir)
    samples = [  # (program, expected verdict, per-test statuses)
        ("apps/7", STDIN_RIGHT, "passed", ["passed", "passed"]),          # trailing spaces: normalised
        ("apps/7", STDIN_MAIN, "passed", ["passed", "passed"]),           # __main__ block and exit() run
        ("apps/7", "print(6)\n", "failed", ["passed", "failed"]),         # right on the example only
        ("apps/7", "n = int(input())\nprint(n / 0)\n", "error", ["error", "error"]),
        ("apps/7", "print(6\n", "error", ["not run", "not run"]),         # syntax error: the program's
        ("apps/7", "while True:\n    pass\n", "timeout", ["timeout", "not run"]),
        ("apps/4001", TWO_SUM_RIGHT, "passed", ["passed", "passed"]),     # tuple result, wrapped expectation
        ("apps/4001", "class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]\n",
         "failed", ["failed", "failed"]),
        ("apps/9", json.loads(SQUARE["solutions"])[0], "passed", ["passed", "passed"]),
        ("apps/9", "def square(x):\n    return x + x\n", "failed", ["passed", "failed"]),
    ]
    rows, summary = score_samples(tasks, [{"task_id": t, "solution": p} for t, p, _, _ in samples],
                                  k=(1,), timeout=2.0)
    assert [(r["verdict"], r["tests"]) for r in rows] == [(v, s) for _, _, v, s in samples]
    assert rows[4]["detail"].startswith("program, line 1: SyntaxError")
    assert rows[0]["program"] == STDIN_RIGHT  # rows keep the candidate, not what the sandbox ran around it
    levels = summary["by_difficulty"]
    assert list(levels) == ["introductory", "interview", "competition"]
    assert levels["introductory"]["tasks"] == 1 and levels["introductory"]["samples"] == 6
    assert levels["introductory"]["pass@1"] == pytest.approx(2 / 6)
    assert levels["interview"]["pass@1"] == pytest.approx(1 / 2)
    assert levels["competition"]["avg_tests_passed"] == pytest.approx((1 + 0.5) / 2)


def test_malformed_records_are_named(apps_dir):
    path = apps_dir / "apps" / "apps-train.jsonl"
    path.write_text(json.dumps({**SQUARE, "input_output": "{not json"}) + "\n")
    with pytest.raises(CodeliftError, match=r"apps-train.jsonl, line 1: field 'input_output' is not valid JSON"):
        load_tasks("apps", "train", data_dir=apps_dir)
    path.write_text(json.dumps({**SQUARE, "input_output": json.dumps({"inputs": [[1]], "outputs": []})}) + "\n")
    with pytest.raises(CodeliftError, match="equally long 'inputs' and 'outputs'"):
        load_tasks("apps", "train", data_dir=apps_dir)
    path.write_text(json.dumps({"problem_id": 1, "question": "q"}) + "\n")
    with pytest.raises(CodeliftError, match="line 1: missing field 'input_output'"):
        load_tasks("apps", "train", data_dir=apps_dir)


def test_hub_rows_become_apps_tasks(monkeypatch):
    """The hub is the boundary we cannot reach here: its rows are faked, our conversion is real."""
    monkeypatch.delenv("CODELIFT_DATA", raising=False)
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, config, split: calls.append((repo, split)) or [SQUARE])
    [task] = load_tasks("apps", "test")
    assert calls == [("codeparrot/apps", "test")] and task.entry_point == "square"


def test_scores_per_difficulty_reach_the_ablation_table(apps_dir, tmp_path):
    from codelift.evaluate.ablation import Variant, variant_row
    from codelift.evaluate.run import score_file
    from codelift.report import ablation_cells

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(row) + "\n" for row in (
        {"task_id": "apps/7", "solution": STDIN_RIGHT}, {"task_id": "apps/4001", "solution": "x = 1\n"},
        {"task_id": "apps/9", "solution": "def square(x):\n    return x * x\n"})))
    out = tmp_path / "eval"
    out.mkdir()
    summary = score_file(samples, "apps", None, out, k=[1], timeout=2.0, codebleu=False, data_dir=apps_dir)
    assert {level: part["pass@1"] for level, part in summary["by_difficulty"].items()} == \
        {"introductory": 1.0, "interview": 0.0, "competition": 1.0}
    row = variant_row(Variant("base", "m"), out, resamples=100, confidence=0.95)
    cells = ablation_cells(row)
    assert cells[1].endswith("(introductory 1.000, interview 0.000, competition 1.000)")
    assert cells[3] == "0.333" and cells[4] == "-"  # EM: the square program is the reference; EM@k needs k > 1
