"""`codelift run`: the stages in order on the embedded defaults, every artifact under one folder."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from codelift.data import load_tasks
from codelift.data.prepare import prepare
from codelift.generate import extract_code, generate
from codelift.io import run_manifest, write_json, write_jsonl
from codelift.models import load_model, prepare_model
from codelift.prompts import render_prompt

TRAIN_SOURCES = (("mbpp", "train"), ("code_alpaca", "train"))


def run_pipeline(*, model: str, data_dir: Path | None, out: Path, console: Console) -> None:
    console.rule("1. model")
    model_path = prepare_model(model)
    console.print(f"{model} -> {model_path}")

    console.rule("2. data")
    for source, split in TRAIN_SOURCES:
        kept, counts, _ = prepare(source, split, out / "data" / f"{source}-{split}.jsonl", data_dir=data_dir)
        dropped = ", ".join(f"{reason} {n}" for reason, n in counts.items() if reason != "kept" and n)
        console.print(f"{source} {split}: kept {counts['kept']} of {sum(counts.values())} (dropped: {dropped or 'none'})")

    console.rule("3. generate one solution")
    task = load_tasks("mbpp", "validation", data_dir=data_dir)[0]
    lm, tokenizer = load_model(model_path)
    result = generate(lm, tokenizer, [render_prompt(task, "chat", tokenizer)], max_new_tokens=256)[0]
    code = extract_code(result.completions[0])
    console.print(f"[bold]{task.task_id}[/bold]: {task.instruction}")
    console.print(code, markup=False, highlight=False)
    write_jsonl(out / "samples.jsonl", [{"task_id": task.task_id, "completion": code}])
    write_json(out / "run.json", run_manifest({"model": model, "data_dir": str(data_dir) if data_dir else None},
                                              tokens_per_second=result.new_tokens / max(result.seconds, 1e-9)))
    console.print(f"artifacts in {out}")
