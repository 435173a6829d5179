"""`codelift run`: the stages in order, every artifact under one folder.

model -> data (clean, decontaminate) -> SFT -> knowledge-base index -> evaluation of the base
model, the fine-tuned one, and the fine-tuned one with retrieval -> ablation table. Each stage
skips work its output folder already holds (SFT and eval resume), so a re-run continues.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from codelift.config import RunConfig
from codelift.data import load_sources
from codelift.data.prepare import prepare
from codelift.evaluate.run import EvalConfig, evaluate_model
from codelift.io import run_manifest, write_json, write_jsonl
from codelift.models import prepare_model
from codelift.rag import build_index
from codelift.train.sft import train_sft

ABLATION_METRICS = ("pass@1", "avg_tests_passed", "syntax_valid", "codebleu")


def run_pipeline(cfg: RunConfig, out: Path, *, data_dir: Path | None, console: Console) -> dict:
    console.rule("1. model")
    model_path = prepare_model(cfg.model)
    console.print(f"{cfg.model} -> {model_path}")

    console.rule("2. data")
    kept = []
    for spec in cfg.train:
        source, _, split = spec.partition(":")
        tasks, counts, _ = prepare(source, split or None, out / "data" / f"{source}-{split}.jsonl", data_dir=data_dir)
        dropped = ", ".join(f"{reason} {n}" for reason, n in counts.items() if reason != "kept" and n)
        console.print(f"{spec}: kept {counts['kept']} of {sum(counts.values())} (dropped: {dropped or 'none'})")
        kept += tasks
    train_file, validation_file = out / "data" / "train.jsonl", out / "data" / "validation.jsonl"
    write_jsonl(train_file, (t.to_dict() for t in kept))
    write_jsonl(validation_file, (t.to_dict() for t in load_sources([cfg.validation], data_dir)))

    console.rule(f"3. SFT ({cfg.sft.method})")
    sft_dir = out / "sft"
    merged = sft_dir / ("model" if cfg.sft.method == "full" else "merged")
    if not (merged / "config.json").is_file():
        train_sft(model_path, str(train_file), sft_dir, cfg.sft, validation=str(validation_file),
                  merge=cfg.sft.method != "full")
    console.print(f"fine-tuned model -> {merged}")

    console.rule("4. knowledge-base index")
    index_dir = out / "index"
    if not (index_dir / "manifest.json").is_file():
        build_index(load_sources(cfg.knowledge_base, data_dir), index_dir)
    console.print(f"{', '.join(cfg.knowledge_base)} -> {index_dir}")

    console.rule("5. evaluation")
    variants = {"base": (model_path, "none"), "sft": (str(merged), "none"), "sft+rag": (str(merged), "rag")}
    results = {}
    for name, (model, context) in variants.items():
        eval_cfg = EvalConfig(model=model, benchmark=cfg.benchmark, split=cfg.split, mode=cfg.mode,
                              limit=cfg.eval_limit, context=context, examples=cfg.examples,
                              index=str(index_dir) if context != "none" else None)
        results[name] = evaluate_model(eval_cfg, out / "eval" / name, data_dir=data_dir)
        console.print(f"{name}: pass@1 {results[name]['pass@1']:.3f}")

    table = Table(title=f"{cfg.benchmark} {cfg.split} ({results['base']['tasks']} problems, {cfg.mode} prompts)")
    table.add_column("variant")
    for metric in ABLATION_METRICS:
        table.add_column(metric, justify="right")
    for name, summary in results.items():
        table.add_row(name, *(f"{summary[m]:.3f}" if summary.get(m) is not None else "-" for m in ABLATION_METRICS))
    console.print(table)
    ablation = {name: {m: summary.get(m) for m in ABLATION_METRICS} for name, summary in results.items()}
    write_json(out / "ablation.json", ablation)
    write_json(out / "run.json", run_manifest(cfg.model_dump(), stage="run"))
    return ablation
