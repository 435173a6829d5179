"""The ablation table: every variant's scores on every benchmark, how sure each is, and what each
stage changed against the variant before it, on the same problems."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from codelift.evaluate.stats import bootstrap_interval, paired_comparison, problem_scores
from codelift.io import read_jsonl

METRICS = ("pass@1", "syntax_valid", "avg_tests_passed", "codebleu", "kl_to_teacher")


@dataclass(frozen=True)
class Variant:
    """One row: a model with a prompt context and an evaluation mode (None: the harness's; "plan":
    plan sampling) or selection among `candidates` samples, the stage that made it (with that
    stage's cost), and the row it is compared with (None: the row above)."""

    name: str
    model: str
    context: str = "none"
    index: str | None = None
    mode: str | None = None
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
            if rows:
                before = next(r for r in rows if r["variant"] == variant.vs) if variant.vs else rows[-1]
                row |= {"vs": before["variant"], **paired_comparison(before["scores"], row["scores"])}
            rows.append(row)
        table["benchmarks"][benchmark] = rows
    return table


def variant_row(variant: Variant, folder: Path, resamples: int, confidence: float) -> dict:
    """A plan-sampled or selection row scores the candidate it chose per problem: its pass@1 is the filtered
    pass@1, marked with its sample budget so it is never read as plain pass@1."""
    summary = json.loads((folder / "summary.json").read_text())
    samples = [row for _, row in read_jsonl(folder / "samples.jsonl")]
    budget = summary.get("sample_budget")
    if budget:  # its summary already scores the chosen candidates
        samples = [row for row in samples if row["selected"]]
        summary["pass@1"] = summary["filtered_pass@1"]
    scores = problem_scores(samples)
    low, high = bootstrap_interval(list(scores.values()), resamples=resamples, confidence=confidence)
    return {"variant": variant.name, "model": variant.model, "context": variant.context, "problems": len(scores),
            "sample_budget": budget,
            **{metric: summary.get(metric) for metric in METRICS}, "ci_low": low, "ci_high": high,
            "parameters": count_parameters(variant.model), "stage": variant.stage,
            "stage_wall_seconds": variant.cost.get("wall_seconds"),
            "stage_peak_memory_mb": variant.cost.get("peak_memory_mb"),
            "eval_wall_seconds": summary.get("wall_seconds"), "scores": scores}


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
