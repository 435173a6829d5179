"""Repair with test feedback: which candidates go back, what the model is told (real sandbox), and
the evaluation that adds the repairs to the candidates and resumes without asking again."""

import json

import pytest

from codelift.config import EvalConfig
from codelift.data import Task
from codelift.errors import CodeliftError
from codelift.evaluate.repair import outcomes, repair_prompt, repair_targets, reporting
from codelift.evaluate.run import evaluate_model, generation_pending

ADD = Task("t/0", "Add two numbers.", "def add(a, b):\n    return a + b\n",
           tests=["assert add(1, 2) == 3", "assert add(2, 2) == 4"], visible_tests=["assert add(0, 1) == 1",
                                                                                 "assert add(1, 2) == 3"],
           entry_point="add")


def candidate(sample, visible, passed, logprob, code=None):
    return {"sample": sample, "visible_verdict": visible, "visible_passed": passed, "mean_logprob": logprob,
            "completion": code or f"def add(a, b):\n    return {sample}\n", "visible_tests": []}


def test_only_problems_without_a_visible_pass_send_back_their_best_distinct_candidates():
    group = [candidate(0, "failed", 0, -0.1), candidate(1, "failed", 1, -0.9), candidate(2, "error", 1, -0.2),
             candidate(3, "failed", 1, -0.2, code="def add(a, b):\n    return 2\n")]
    assert [c["sample"] for c in repair_targets(group, 2)] == [2, 1]  # most visible tests passed, then likeliest
    assert [c["sample"] for c in repair_targets(group, 9)] == [2, 1, 0]  # sample 3 repeats sample 2's code
    assert repair_targets([*group, candidate(4, "passed", 2, -3.0)], 2) == []
    assert repair_targets([candidate(0, None, 0, -0.1)], 2) == []  # no visible tests: nothing to tell the model


def test_an_equality_assertion_is_rewritten_to_report_what_the_call_returned():
    assert reporting("assert add(1, 2) == 3") == \
        "assert (_codelift_got := add(1, 2)) == 3, repr(_codelift_got)[:300]"
    for kept in ("assert add(1, 2) > 3", "assert add(1, 2) == 3, 'why'", "assert a == b == c", "x = (", "print(1)"):
        assert reporting(kept) == kept


def test_the_model_is_told_the_failing_test_and_what_happened_there():
    wrong = {"completion": "def add(a, b):\n    return b\n", "visible_tests": ["passed", "failed"]}
    broken = {"completion": "def add(a, b):\n    return c\n", "visible_tests": ["error", "not run"]}
    zero = {"completion": "def add(a, b):\n    return 0\n", "visible_tests": ["failed", "failed"]}
    said = outcomes([ADD, ADD, ADD], [wrong, broken, zero], timeout=3.0)  # one problem, different failing tests
    assert said[0] == "The call returned 2 instead."
    assert said[1] == "Running it gives: NameError: name 'c' is not defined"
    assert said[2] == "The call returned 0 instead."
    prompt = repair_prompt(ADD, wrong, said[0], "instruct")
    assert "Add two numbers." in prompt and "return b" in prompt and "2 instead" in prompt
    assert "It fails this test:\n```python\nassert add(1, 2) == 3\n```" in prompt  # the first one it fails


def test_eval_adds_repairs_to_the_candidates_and_resumes_without_asking_again(tiny_model_dir, tmp_path):
    tasks = [ADD.to_dict(), {**ADD.to_dict(), "task_id": "t/1"}]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    out = tmp_path / "eval"
    out.mkdir()
    codes = {"t/0": ["def add(a, b):\n    return 0\n", "def add(a, b):\n    return 1\n"],  # both fail: repaired
             "t/1": ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return 0\n"]}  # one passes: not
    (out / "generations.jsonl").write_text("".join(
        json.dumps({"task_id": task_id, "sample": i, "raw": code, "completion": code, "generation_seconds": 0.1,
                    "new_tokens": 9, "mean_logprob": -0.1 * (i + 1), "prompt_format": "instruct"}) + "\n"
        for task_id, group in codes.items() for i, code in enumerate(group)))
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark=str(tmp_path / "tasks.jsonl"), candidates=2, repairs=1,
                     temperature=0.7, max_new_tokens=8, codebleu=False, dtype="float32")
    assert generation_pending(cfg, out)
    summary = evaluate_model(cfg, out)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["sample"], r.get("repair_of")) for r in rows] == \
        [("t/0", 0, None), ("t/0", 1, None), ("t/0", 2, 1), ("t/1", 0, None), ("t/1", 1, None)]
    assert rows[2]["feedback"] == "The call returned 1 instead." and rows[3]["selected"]
    assert summary["sample_budget"] == "2 samples + up to 1 repairs" and summary["repaired_tasks"] == 1
    assert summary["repairs"] == 1 and summary["chosen_repairs"] in (0, 1)
    logged = (out / "repairs.jsonl").read_bytes()
    assert not generation_pending(cfg, out)
    assert evaluate_model(cfg, out)["filtered_pass@1"] == summary["filtered_pass@1"]
    assert (out / "repairs.jsonl").read_bytes() == logged
    with pytest.raises(CodeliftError, match="--repairs 1"):
        evaluate_model(cfg.model_copy(update={"candidates": 0, "temperature": 0.0}), tmp_path / "bad")
