"""The ablation table: every variant's scores on every benchmark, how sure each is, and what each
stage changed against the variant before it, on the same problems."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from codelift.errors import CodeliftError
from codelift.evaluate.stats import bootstrap_interval, paired_comparison, problem_scores
from codelift.io import read_jsonl

METRICS = ("pass@1", "exact_match", "syntax_valid", "avg_tests_passed", "codebleu", "kl_to_teacher")


@dataclass(frozen=True)
class Variant:
    """One row: a model with a prompt context and a strategy (direct; plan: plan sampling; cot: plan,
    then code, in one answer) or selection among `candidates` samples, the stage that made it (with that
    stage's cost), and the row it is compared with (None: the row above)."""

    name: str
    model: str
    context: str = "none"
    index: str | None = None
    strategy: str = "direct"
    candidates: int = 0  # > 1: that many samples per problem, one chosen on the visible tests
    stage: str = ""
    cost: dict = field(default_factory=dict)
    vs: str | None = None


def ablation_table(variants: list[Variant], folders: dict[str, dict[str, Path]], *, resamples: int = 10_000,
                   confidence: float = 0.95) -> dict:
    """Rows per benchmark from each variant's evaluation folder (summary.json, samples.jsonl)."""
    table = {"confidence": confidence, "bootstrap_samples": resamples, "benchmarks": {}}
    for benchmark, by_variant in folders.items():
        rows = []
        for variant in variants:
            row = variant_row(variant, by_variant[variant.name], resamples, confidence)
            if row["kl_to_teacher"] is None:  # same weights, another prompt context: same KL
                row["kl_to_teacher"] = next((r["kl_to_teacher"] for r in rows if r["model"] == variant.model), None)
            rows.append(compared(row, variant, rows))
        table["benchmarks"][benchmark] = rows
    if len(folders) > 1:
        table["pooled"] = pooled_rows(variants, table["benchmarks"], resamples, confidence)
    return table


def pooled_rows(variants: list[Variant], benchmarks: dict[str, list[dict]], resamples: int,
                confidence: float) -> list[dict]:
    """Every variant over the problems of all benchmarks together (a lift is judged on all of
    them, and a small one only separates from noise there): pass@1 and its interval over the
    pooled problems, the paired test against the same row as per benchmark, and the other
    metrics as problem-weighted means."""
    rows = []
    for i, variant in enumerate(variants):
        parts = [table[i] for table in benchmarks.values()]
        scores = pooled_scores({benchmark: table[i]["scores"] for benchmark, table in benchmarks.items()})
        low, high = bootstrap_interval(list(scores.values()), resamples=resamples, confidence=confidence)
        weighted = {metric: None if any(p[metric] is None for p in parts) else
                    sum(p[metric] * p["problems"] for p in parts) / len(scores)
                    for metric in METRICS if metric != "pass@1"}
        same = {key: parts[0][key] for key in ("variant", "model", "context", "sample_budget", "parameters", "stage",
                                               "stage_wall_seconds", "stage_peak_memory_mb", "stage_peak_gpu_memory_mb")}
        row = {**same, **weighted, "problems": len(scores), "pass@1": sum(scores.values()) / len(scores),
               "ci_low": low, "ci_high": high, "eval_wall_seconds": sum(p["eval_wall_seconds"] or 0 for p in parts),
               "scores": scores}
        rows.append(compared(row, variant, rows))
    return rows


def pooled_scores(by_benchmark: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-problem scores of several benchmarks as one set, each problem keyed `benchmark:task_id`."""
    return {f"{benchmark}:{task_id}": score for benchmark, scores in by_benchmark.items()
            for task_id, score in scores.items()}


def compared(row: dict, variant: Variant, rows: list[dict]) -> dict:
    """`row` with the paired comparison against the row it adds one change to: `variant.vs`, else
    the row above (the first row has none)."""
    if not rows:
        return row
    before = next(r for r in rows if r["variant"] == variant.vs) if variant.vs else rows[-1]
    return row | {"vs": before["variant"], **paired_comparison(before["scores"], row["scores"])}


def folder_scores(folder: Path, every_candidate: bool = False) -> tuple[dict[str, float], dict]:
    """Each problem's pass rate in one evaluation folder, and its summary. A plan-sampled or selection run
    scores the candidate it chose per problem: its pass@1 is the filtered pass@1, marked with its sample
    budget so it is never read as plain pass@1. With `every_candidate` every sampled program counts
    instead: each problem's pass rate at the sampling temperature, unselected."""
    if not (folder / "summary.json").is_file():
        raise CodeliftError(f"{folder}: no summary.json; give a folder written by `codelift eval` (or a run's "
                            f"eval/VARIANT/BENCHMARK folder).")
    summary = json.loads((folder / "summary.json").read_text())
    samples = [row for _, row in read_jsonl(folder / "samples.jsonl")]
    if summary.get("sample_budget"):
        if every_candidate:  # the samples alone (repairs are not draws at the temperature), none chosen
            samples = [row for row in samples if row.get("repair_of") is None]
            summary["sample_budget"] = None
        else:  # its summary already scores the chosen candidates
            samples = [row for row in samples if row["selected"]]
            summary["pass@1"] = summary["filtered_pass@1"]
    scores = problem_scores(samples)
    return scores, summary | {"samples_per_problem": len(samples) / max(len(scores), 1)}


def compare_evaluations(before: Path, after: Path, *, every_candidate: bool = False, resamples: int = 10_000,
                        confidence: float = 0.95) -> list[dict]:
    """Is `after` better than `before` on the same problems? One row per benchmark (and one pooled over all of
    them when there are several): each side's pass rate with its interval, the mean per-problem difference
    with its paired interval, the problems `after` newly solves and breaks, and the exact sign test."""
    pairs = matched_benchmarks(benchmark_folders(before), benchmark_folders(after))
    rows, by_benchmark = [], ({}, {})
    for name, folders in pairs.items():
        (scores_before, summary_before), (scores_after, summary_after) = (folder_scores(f, every_candidate)
                                                                          for f in folders)
        if scores_before.keys() != scores_after.keys():
            raise CodeliftError(f"{name}: {folders[0]} holds {len(scores_before)} problems and {folders[1]} "
                                f"{len(scores_after)}, not the same ones; compare evaluations of the same problems.")
        rows.append(comparison_row(name, scores_before, scores_after, resamples, confidence)
                    | {"score_before": score_name(summary_before), "score_after": score_name(summary_after)})
        by_benchmark[0][name], by_benchmark[1][name] = scores_before, scores_after
    if len(rows) > 1:
        rows.append(comparison_row("pooled", *map(pooled_scores, by_benchmark), resamples, confidence)
                    | {key: rows[0][key] for key in ("score_before", "score_after")})
    return rows


def benchmark_folders(folder: Path) -> dict[str, Path]:
    """An evaluation folder (`samples.jsonl` in it) is one benchmark; a folder of them (a run's
    eval/VARIANT) is one per subfolder, by name."""
    if (folder / "samples.jsonl").is_file():
        return {folder.name: folder}
    found = {path.parent.name: path.parent for path in sorted(folder.glob("*/samples.jsonl"))}
    if not found:
        raise CodeliftError(f"{folder}: no samples.jsonl in it or in its subfolders; give a folder written by "
                            f"`codelift eval` or a run's eval/VARIANT folder.")
    return found


def matched_benchmarks(before: dict[str, Path], after: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """Benchmarks paired by folder name; two single evaluation folders pair whatever their names."""
    if len(before) == len(after) == 1:
        (name, folder), other = next(iter(before.items())), next(iter(after.values()))
        return {name: (folder, other)}
    if before.keys() != after.keys():
        raise CodeliftError(f"the two runs evaluated different benchmarks ({', '.join(before)} against "
                            f"{', '.join(after)}); compare runs of the same benchmarks, or one benchmark folder each.")
    return {name: (folder, after[name]) for name, folder in before.items()}


def comparison_row(name: str, before: dict[str, float], after: dict[str, float], resamples: int,
                   confidence: float) -> dict:
    """Both sides' mean pass rates and the mean per-problem difference, each with its bootstrap interval
    over problems (the difference's is paired), and the sign test."""
    differences = [after[task_id] - before[task_id] for task_id in before]
    row = {"benchmark": name, "problems": len(before)}
    for side, values in (("before", list(before.values())), ("after", list(after.values())),
                         ("difference", differences)):
        low, high = bootstrap_interval(values, resamples=resamples, confidence=confidence)
        row |= {side: sum(values) / len(values), f"{side}_ci_low": low, f"{side}_ci_high": high}
    paired = paired_comparison(before, after)
    return row | {"newly_solved": len(paired["newly_solved"]), "broken": len(paired["broken"]),
                  "p_value": paired["p_value"]}


def score_name(summary: dict) -> str:
    """What a side's numbers are, so a filtered or sampled score is never read as greedy pass@1."""
    if summary.get("sample_budget"):
        return f"filtered pass@1, budget {summary['sample_budget']}"
    per_problem, temperature = summary["samples_per_problem"], summary.get("temperature")
    return ("pass@1" + ("" if per_problem == 1 else f" over {per_problem:g} samples per problem")
            + (f" at T={temperature:g}" if temperature else ""))


def variant_row(variant: Variant, folder: Path, resamples: int, confidence: float) -> dict:
    """One variant's row: its scores (see `folder_scores`), their interval, and what made it."""
    scores, summary = folder_scores(folder)
    budget = summary.get("sample_budget")
    low, high = bootstrap_interval(list(scores.values()), resamples=resamples, confidence=confidence)
    return {"variant": variant.name, "model": variant.model, "context": variant.context, "problems": len(scores),
            "sample_budget": budget,
            **{metric: summary.get(metric) for metric in METRICS}, "ci_low": low, "ci_high": high,
            "parameters": count_parameters(variant.model), "stage": variant.stage,
            "stage_wall_seconds": variant.cost.get("wall_seconds"),
            "stage_peak_memory_mb": variant.cost.get("peak_memory_mb"),
            "stage_peak_gpu_memory_mb": variant.cost.get("peak_gpu_memory_mb"),
            "eval_wall_seconds": summary.get("wall_seconds"), "scores": scores, "em_at_k": largest_em_at_k(summary),
            "by_difficulty": {level: part.get("filtered_pass@1", part.get("pass@1"))
                              for level, part in summary.get("by_difficulty", {}).items()}}


def largest_em_at_k(summary: dict) -> tuple[int, float] | None:
    """(k, EM@k) for the largest k > 1 the row's samples allow (the PEFT study reads EM@10), else None."""
    found = [(int(key.removeprefix("em@")), value) for key, value in summary.items()
             if key.startswith("em@") and value is not None and key != "em@1"]
    return max(found) if found else None


def count_parameters(model: str) -> int | None:
    """Parameters of a model folder, read from its safetensors headers (no weights loaded);
    None for a hub id or a folder without safetensors."""
    from safetensors import safe_open

    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total
