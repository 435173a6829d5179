"""Plan sampling: selection on visible tests only (real sandbox, hand-written candidates), and the
`--strategy plan` evaluation end to end on a tiny model."""

import dataclasses
import json

import pytest

from codelift.config import EvalConfig
from codelift.data import Task, load_tasks
from codelift.data.loaders import load_humaneval
from codelift.errors import CodeliftError
from codelift.evaluate.run import evaluate_model
from codelift.evaluate.score import score_samples, summarize
from codelift.evaluate.selection import choose, run_visible_tests, select_candidate
from codelift.generate import make_generator
from codelift.plans.sampling import plan_sampled_rows, plan_summary

# mbpp/517 largest_pos; visible: assert largest_pos([1,2,3,4,-1]) == 4
FITS_VISIBLE_ONLY = "def largest_pos(list1):\n    return 4\n"  # passes the visible test, fails the hidden ones
WRONG = "def largest_pos(list1):\n    return 0\n"
RIGHT = "def largest_pos(list1):\n    return max(list1)\n"


def _candidates(*codes, logprobs=None):
    return [{"completion": code, "mean_logprob": (logprobs or [None] * len(codes))[i]} for i, code in enumerate(codes)]


@pytest.fixture(scope="module")
def largest_pos(data_dir):
    [task] = [t for t in load_tasks("mbpp", "validation", data_dir=data_dir) if t.task_id == "mbpp/517"]
    return task


def test_selection_uses_the_visible_tests_only(largest_pos):
    """The hidden tests are replaced by ones no program passes: the verdicts and the choice stay the same,
    and the chosen program (first to pass the visible test) is one that the hidden tests reject."""
    chosen = []
    for task in (largest_pos, dataclasses.replace(largest_pos, tests=["assert False"] * 3)):
        [group] = [_candidates(WRONG, FITS_VISIBLE_ONLY, RIGHT)]
        run_visible_tests([task], [group], timeout=3.0)
        chosen.append((select_candidate(group), [(c["visible_verdict"], c["visible_passed"]) for c in group]))
    assert chosen[0] == chosen[1] == (1, [("failed", 0), ("passed", 1), ("passed", 1)])
    hidden, _ = score_samples([largest_pos], [{"task_id": "mbpp/517", "completion": c}
                                             for c in (FITS_VISIBLE_ONLY, RIGHT)], k=[1])
    assert [row["passed"] for row in hidden] == [False, True]  # selection could not have known


def test_without_a_visible_pass_most_tests_then_highest_log_probability_wins():
    def candidate(passed, logprob):
        return {"visible_verdict": "failed", "visible_passed": passed, "mean_logprob": logprob}

    assert select_candidate([candidate(0, -0.1), candidate(2, -2.0), candidate(2, -1.0), candidate(1, -0.01)]) == 2
    assert select_candidate([candidate(0, None), candidate(0, -3.0)]) == 1
    assert select_candidate([candidate(1, -1.0), candidate(1, -1.0)]) == 0


def test_humaneval_visible_tests_are_the_docstring_examples():
    task = load_humaneval()[0]
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    group = _candidates("    return True\n", body)
    run_visible_tests([task], [group], timeout=3.0)
    assert task.visible_tests and [c["visible_verdict"] for c in group] == ["failed", "passed"]
    assert group[1]["visible_tests"] == ["passed"] * len(task.visible_tests)


def test_plan_sampled_rows_give_n_by_m_candidates_and_one_choice(tiny_model_dir, largest_pos):
    with make_generator(str(tiny_model_dir), "hf", progress=False, dtype="float32") as generator:
        rows = choose([largest_pos], plan_sampled_rows(generator, [largest_pos], plans=2, codes_per_plan=2,
                                                       plan_temperature=0.6, temperature=0.6, max_new_tokens=12),
                      timeout=3.0)
        with pytest.raises(CodeliftError, match="identical"):
            plan_sampled_rows(generator, [largest_pos], plans=2, codes_per_plan=2, plan_temperature=0.6,
                              temperature=0.0, max_new_tokens=12)
    assert len(rows) == 4 and sum(r["selected"] for r in rows) == 1 and [r["sample"] for r in rows] == [0, 1, 2, 3]
    assert [r["plan_index"] for r in rows] == [0, 0, 1, 1] and rows[0]["plan"] != rows[2]["plan"]
    assert all(r["visible_verdict"] in ("passed", "failed", "error", "timeout") for r in rows)


def test_eval_mode_plan_reports_filtered_pass_at_1_apart_and_records_candidates(tiny_model_dir, data_dir, tmp_path):
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark="mbpp", split="validation", strategy="plan", limit=2,
                     max_new_tokens=12, plans=2, codes_per_plan=1, temperature=0.0, codebleu=False, dtype="float32")
    summary = evaluate_model(cfg, tmp_path / "eval", data_dir=data_dir)
    assert "pass@1" not in summary and summary["sample_budget"] == "2 plans x 1 programs = 2"
    assert 0 <= summary["filtered_pass@1"] <= 1 and "candidate_pass@1" in summary
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and sum(r["selected"] for r in rows) == 2
    assert all({"plan", "visible_verdict", "visible_tests", "verdict"} <= set(r) for r in rows)
    assert summary["tasks"] == 2 and summary["candidate_samples"] == 4 and sum(summary["verdicts"].values()) == 2


def test_plan_summary_scores_the_chosen_candidates_and_keeps_every_candidates_apart():
    def row(task_id, plan_index, selected, passed, syntax, tests_passed, visible):
        return {"task_id": task_id, "plan_index": plan_index, "selected": selected, "passed": passed,
                "verdict": "passed" if passed else "failed", "syntax_valid": syntax, "exact_match": False,
                "tests_passed": tests_passed, "visible_verdict": visible}

    rows = [row("a", 0, False, False, False, 0.0, "failed"), row("a", 1, True, True, True, 1.0, "passed"),
            row("b", 0, True, False, True, 0.5, "failed"), row("b", 0, False, False, False, 0.0, "failed")]
    tasks = {t: Task(t, "prompt", f"def {t}(): pass", ["assert True"]) for t in "ab"}
    summary = plan_summary(summarize(rows, tasks, k=(1,)), rows, list(tasks.values()), plans=2, codes_per_plan=2)
    assert summary["filtered_pass@1"] == 0.5 and "pass@1" not in summary
    assert summary["syntax_valid"] == 1.0 and summary["avg_tests_passed"] == 0.75  # (1 + 0.5) / 2
    assert summary["verdicts"]["passed"] == 1 and summary["verdicts"]["failed"] == 1
    assert summary["candidate_pass@1"] == 0.25 and summary["candidate_syntax_valid"] == 0.5
    assert summary["candidate_avg_tests_passed"] == 0.375  # (a: (0 + 1) / 2 + b: (0.5 + 0) / 2) / 2
    assert summary["selected_passed_visible"] == 0.5 and summary["mean_distinct_plans"] == 1.5
    assert summary["sample_budget"] == "2 plans x 2 programs = 4"


def test_cli_generate_mode_plan_prints_every_candidate_and_the_choice(tiny_model_dir):
    from typer.testing import CliRunner

    from codelift.cli import app

    result = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "Write a function to add two numbers.",
                                      "--strategy", "plan", "--plans", "2", "--max-new-tokens", "8", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert "candidate 1, plan 1" in result.output and "candidate 2, plan 2" in result.output
    assert result.output.count("(chosen)") == 1
    bad = CliRunner().invoke(app, ["plan", "train", "--student", str(tiny_model_dir), "--data", "x.jsonl",
                                   "--plans", "p.jsonl", "--out", "o", "--code-with-plan", "sometimes"])
    assert bad.exit_code != 0 and "code_with_plan" in str(bad.exception or bad.output)


def test_zero_plans_is_the_code_task_without_a_plan(tiny_model_dir, largest_pos):
    with make_generator(str(tiny_model_dir), "hf", progress=False, dtype="float32") as generator:
        [row] = plan_sampled_rows(generator, [largest_pos], plans=0, codes_per_plan=1, plan_temperature=0.6,
                                  temperature=0.0, max_new_tokens=8)
    assert row["plan"] == "" and row["sample"] == 0 and row["plan_index"] == 0


def test_retrieved_examples_go_into_both_the_plan_and_the_code_prompts(tiny_model_dir, largest_pos):
    from codelift.prompts import CONTEXT_HEADER, GEN_CODE, GEN_PLAN

    example = "<example 1>\nProblem: add two numbers\nSolution:\n```python\ndef add(a, b):\n    return a + b\n```"
    prompts = []
    with make_generator(str(tiny_model_dir), "hf", progress=False, dtype="float32") as generator:
        generate = generator.generate

        def recorded(batch, **settings):
            prompts.extend(batch)
            return generate(batch, **settings)

        generator.generate = recorded
        rows = plan_sampled_rows(generator, [largest_pos], plans=1, codes_per_plan=1, plan_temperature=0.6,
                                 temperature=0.0, max_new_tokens=8, contexts=[example])
    assert rows and [GEN_PLAN in p for p in prompts] == [True] * (len(prompts) - 1) + [False]
    assert GEN_CODE in prompts[-1] and all(p.startswith(CONTEXT_HEADER + example) for p in prompts)
