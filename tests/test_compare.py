"""`codelift compare`: two evaluations of the same problems, read from the folders `codelift eval`
writes (greedy ones scored here by the real sandboxed scorer), checked against scipy and hand counts."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from codelift.cli import app
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.evaluate.ablation import compare_evaluations, folder_scores
from codelift.evaluate.run import score_file
from codelift.io import write_json, write_jsonl

# Which of the first 6 MBPP validation problems each side solves: after newly solves 2, 3, 4 and breaks 0.
SOLVES = {"before": {0, 1}, "after": {1, 2, 3, 4}}


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> Path:
    """Two run-style folders, each holding the same greedy evaluation under two benchmark names."""
    root = tmp_path_factory.mktemp("compare")
    tasks = load_tasks("mbpp", "validation", data_dir=data_dir)[:6]
    for side, solved in SOLVES.items():
        samples = [{"task_id": t.task_id, "completion": t.solution if i in solved else
                    f"def {t.entry_point}(*a):\n    return None"} for i, t in enumerate(tasks)]
        write_jsonl(root / f"{side}.jsonl", samples)
        for benchmark in ("mbpp-validation", "again"):
            score_file(root / f"{side}.jsonl", "mbpp", "validation", root / side / benchmark, k=[1], timeout=5,
                       codebleu=False, data_dir=data_dir)
    return root


def test_each_benchmark_and_the_pool_get_rates_intervals_and_the_sign_test(runs):
    rows = compare_evaluations(runs / "before", runs / "after", resamples=2000)
    assert [r["benchmark"] for r in rows] == ["again", "mbpp-validation", "pooled"]
    one, pooled = rows[0], rows[2]
    assert (one["problems"], one["before"], one["after"]) == (6, pytest.approx(2 / 6), pytest.approx(4 / 6))
    assert (one["newly_solved"], one["broken"]) == (3, 1)
    assert one["p_value"] == pytest.approx(scipy_stats.binomtest(3, 4, 0.5).pvalue)
    assert one["difference"] == pytest.approx(2 / 6)
    assert (pooled["problems"], pooled["newly_solved"], pooled["broken"]) == (12, 6, 2)
    # the paired interval is the percentile bootstrap of the per-problem differences (scipy's, independently)
    differences = np.array([1.0, 1.0, 1.0, -1.0, 0.0, 0.0] * 2)  # problems 2, 3, 4 up, 0 down, 1 and 5 the same
    reference = scipy_stats.bootstrap((differences,), np.mean, n_resamples=20_000, method="percentile",
                                      rng=np.random.default_rng(1)).confidence_interval
    assert pooled["difference"] == pytest.approx(differences.mean())
    assert pooled["difference_ci_low"] == pytest.approx(reference.low, abs=0.05)
    assert pooled["difference_ci_high"] == pytest.approx(reference.high, abs=0.05)
    assert pooled["p_value"] == pytest.approx(scipy_stats.binomtest(6, 8, 0.5).pvalue)
    assert one["score_before"] == one["score_after"] == "pass@1"


def test_two_single_folders_pair_whatever_their_names(runs):
    rows = compare_evaluations(runs / "before" / "again", runs / "after" / "mbpp-validation", resamples=500)
    assert len(rows) == 1 and (rows[0]["newly_solved"], rows[0]["broken"]) == (3, 1)


def selection_folder(folder: Path, passed: dict[str, list[bool]], chosen: dict[str, int]) -> Path:
    """A selection run's files as `codelift eval --candidates N` writes them (the fields compare reads)."""
    rows = [{"task_id": task, "sample": i, "passed": ok, "selected": i == chosen[task]}
            for task, verdicts in passed.items() for i, ok in enumerate(verdicts)]
    write_jsonl(folder / "samples.jsonl", rows)
    every = [ok for verdicts in passed.values() for ok in verdicts]
    write_json(folder / "summary.json", {"filtered_pass@1": sum(rows[i]["passed"] for i in range(len(rows))
                                                                 if rows[i]["selected"]) / len(passed),
                                         "sample_budget": 4, "candidate_pass@1": sum(every) / len(every),
                                         "temperature": 0.7})
    return folder


def test_a_selection_run_scores_its_chosen_candidate_or_every_candidate(tmp_path):
    before = selection_folder(tmp_path / "a", {"t1": [True, False, False, False], "t2": [False] * 4,
                                               "t3": [True] * 4}, chosen={"t1": 1, "t2": 0, "t3": 0})
    after = selection_folder(tmp_path / "b", {"t1": [True, True, True, False], "t2": [False, True, False, False],
                                              "t3": [True, True, False, True]}, chosen={"t1": 0, "t2": 1, "t3": 2})
    chosen = compare_evaluations(before, after, resamples=500)[0]
    assert (chosen["before"], chosen["after"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (chosen["newly_solved"], chosen["broken"]) == (2, 1)  # t1, t2 up; t3 down
    assert chosen["score_before"] == "filtered pass@1, budget 4"
    every = compare_evaluations(before, after, every_candidate=True, resamples=500)[0]
    assert every["before"] == pytest.approx((1 / 4 + 0 + 1) / 3) and every["after"] == pytest.approx((3 / 4 + 1 / 4 + 3 / 4) / 3)
    assert (every["newly_solved"], every["broken"]) == (2, 1)  # t1 0.25 -> 0.75, t2 0 -> 0.25, t3 1 -> 0.75
    assert every["score_after"] == "pass@1 over 4 samples per problem at T=0.7"


def test_every_candidate_leaves_out_repairs_which_are_not_draws_at_the_temperature(tmp_path):
    folder = selection_folder(tmp_path / "a", {"t1": [False, False]}, chosen={"t1": 0})
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    write_jsonl(folder / "samples.jsonl", rows + [{"task_id": "t1", "sample": 2, "passed": True, "selected": False,
                                                  "repair_of": 0}])
    scores, summary = folder_scores(folder, every_candidate=True)
    assert scores == {"t1": 0.0} and summary["samples_per_problem"] == 2


def test_different_problems_or_benchmarks_or_no_evaluation_are_one_clear_error(runs, tmp_path):
    short = tmp_path / "short"
    rows = [json.loads(line) for line in (runs / "after" / "again" / "samples.jsonl").read_text().splitlines()]
    write_jsonl(short / "samples.jsonl", rows[:5])
    (short / "summary.json").write_text((runs / "after" / "again" / "summary.json").read_text())
    with pytest.raises(CodeliftError, match="holds 6 problems and .* 5, not the same ones"):
        compare_evaluations(runs / "before" / "again", short)
    with pytest.raises(CodeliftError, match="different benchmarks"):  # two benchmarks against one (short)
        compare_evaluations(runs / "before", tmp_path)
    with pytest.raises(CodeliftError, match="no samples.jsonl"):
        compare_evaluations(runs / "before", tmp_path / "nothing")


def test_the_command_prints_the_table_and_writes_the_rows(runs, tmp_path):
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(app, ["compare", str(runs / "before"), str(runs / "after"), "--json", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pooled" in result.output and "+6 / -2" in result.output
    assert [r["benchmark"] for r in json.loads(out.read_text())] == ["again", "mbpp-validation", "pooled"]
