"""The `codelift` command line: one sub-command per pipeline stage, parsing only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from codelift.errors import CodeliftError

app = typer.Typer(help="Make small code-generation models better: data, models, SFT, distillation, RAG, evaluation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Load, clean, decontaminate and inspect task data.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare embedded models, prune students, inspect models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
console = Console(emoji=False)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder; else $CODELIFT_DATA; else the hub.")]
Split = Annotated[str | None, typer.Option(help="Split: train, validation, prompt or test (source's default if unset).")]
Fields = Annotated[list[str] | None, typer.Option("--field", help="For a JSON/JSONL file: TASK_FIELD=FILE_FIELD, repeatable.")]


def _parse_fields(pairs: list[str] | None) -> dict[str, str]:
    fields = {}
    for pair in pairs or []:
        task_field, sep, file_field = pair.partition("=")
        if not sep or not task_field or not file_field:
            raise CodeliftError(f"--field '{pair}': expected TASK_FIELD=FILE_FIELD, e.g. instruction=question.")
        fields[task_field] = file_field
    return fields


def _table(title: str, rows: dict, column: str = "value") -> Table:
    table = Table(title=title)
    table.add_column("")
    table.add_column(column, justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    return table


@data_app.command("prepare")
def data_prepare(source: Annotated[str, typer.Argument(help="humaneval, mbpp, mbpp-sanitized, code_alpaca or a JSON/JSONL file.")],
                 out: Annotated[Path, typer.Option(help="Where to write the cleaned tasks (JSONL).")],
                 split: Split = None, data_dir: DataDir = None, field: Fields = None,
                 decontaminate: Annotated[bool, typer.Option(help="Drop records overlapping HumanEval and MBPP validation/test.")] = True):
    """Clean a source into task JSONL: Python only, parseable, deduplicated, decontaminated."""
    from codelift.data.prepare import prepare

    kept, counts, references = prepare(source, split, out, data_dir=data_dir, fields=_parse_fields(field),
                                       decontaminate=decontaminate)
    console.print(_table(f"{source} -> {out}", {**counts, "total in": sum(counts.values())}, "records"))
    if decontaminate:
        console.print(f"decontaminated against: {', '.join(references)}")


@data_app.command("show")
def data_show(source: str, split: Split = None, data_dir: DataDir = None, field: Fields = None,
              n: Annotated[int, typer.Option("-n", help="How many records.")] = 3):
    """Print a few task records."""
    from rich.syntax import Syntax

    from codelift.data import load_tasks

    tasks = load_tasks(source, split, data_dir=data_dir, fields=_parse_fields(field))
    console.print(f"[bold]{len(tasks)} tasks[/bold]")
    for task in tasks[:n]:
        console.rule(task.task_id)
        console.print(task.instruction)
        console.print(Syntax(task.solution, "python"))
        for test in task.tests[:3]:
            console.print(f"[dim]{test.strip()[:200]}")


@model_app.command("prepare")
def model_prepare(name: Annotated[str, typer.Argument(help="smollm2-135m-instruct, gemma-3-270m, a folder, a .gguf file or a hub id.")]):
    """Turn an embedded GGUF (or any .gguf) into a cached Hugging Face folder, once."""
    from codelift.models import prepare_model

    console.print(prepare_model(name))


@model_app.command("prune")
def model_prune(source: str, out: Annotated[Path, typer.Option(help="Folder for the pruned model.")],
                keep_layers: Annotated[int, typer.Option(help="Decoder layers to keep, evenly spaced.")]):
    """Build a depth-pruned student: evenly spaced decoder layers of SOURCE, same tokenizer."""
    from codelift.models import prune_model

    kept = prune_model(source, keep_layers, out)
    console.print(f"kept layers {kept} -> {out}")


@model_app.command("info")
def model_info_cmd(name: str):
    """Print parameters, layers, vocabulary size and more."""
    from codelift.models import load_model, model_info

    console.print(_table(name, model_info(*load_model(name))))


@app.command()
def generate(model: str, prompt: str,
             chat: Annotated[bool, typer.Option(help="Wrap the prompt in the model's chat template.")] = False,
             max_new_tokens: int = 256, temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0):
    """Print a completion of PROMPT and the generation speed."""
    from codelift.generate import generate as run_generation
    from codelift.models import load_model
    from codelift.prompts import chat_prompt

    lm, tokenizer = load_model(model)
    text = chat_prompt(prompt, tokenizer) if chat else prompt
    result = run_generation(lm, tokenizer, [text], max_new_tokens=max_new_tokens, temperature=temperature)[0]
    console.print(result.completions[0], markup=False, highlight=False)
    console.print(f"[dim]{result.new_tokens} tokens in {result.seconds:.1f} s "
                  f"({result.new_tokens / max(result.seconds, 1e-9):.1f} tokens/s)")


@app.command()
def sft(model: Annotated[str, typer.Option(help="Model to fine-tune: embedded name, folder, .gguf or hub id.")],
        data: Annotated[str, typer.Option(help="Training tasks (JSONL from `codelift data prepare`).")],
        out: Annotated[Path, typer.Option(help="Run folder: checkpoints, adapter/model, metrics, plots.")],
        method: Annotated[str | None, typer.Option(help="full, lora, ia3, prompt, prefix, qlora4 or qlora8 (default lora).")] = None,
        config: Annotated[Path | None, typer.Option(help="YAML with SFT settings; options given here win.")] = None,
        validation: Annotated[str | None, typer.Option(help="Validation tasks; default: a seeded 5% of --data.")] = None,
        epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
        learning_rate: Annotated[float | None, typer.Option(help="Default depends on the method.")] = None,
        optimizer: Annotated[str | None, typer.Option(help="adamw, adafactor, paged_adamw_8bit or adamw_8bit.")] = None,
        grad_accum: int | None = None, weight_decay: float | None = None, max_grad_norm: float | None = None,
        max_length: int | None = None, seed: int | None = None,
        merge: Annotated[bool, typer.Option(help="Also write the adapter merged into the base as a plain folder.")] = False):
    """Supervised fine-tuning (loss on response tokens only) with full, LoRA, IA3, prompt, prefix or QLoRA.

    Re-running the same command resumes from the last committed checkpoint."""
    from codelift.config import SFTConfig, load_config
    from codelift.train.sft import train_sft

    overrides = dict(method=method, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                     learning_rate=learning_rate, optimizer=optimizer, grad_accum=grad_accum,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, max_length=max_length, seed=seed)
    cfg = load_config(SFTConfig, config, overrides)
    manifest = train_sft(model, data, out, cfg, validation=validation, merge=merge)
    if manifest:
        keys = ("trainable_parameters", "total_parameters", "best_validation_loss", "steps", "tokens_per_second",
                "peak_memory_mb")
        console.print(_table(f"sft {manifest['config']['method']} -> {out}", {k: manifest[k] for k in keys}))


@app.command()
def run(data_dir: DataDir = None, model: str = "smollm2-135m-instruct",
        out: Annotated[Path, typer.Option(help="Folder for every artifact of the run.")] = Path("runs/default")):
    """The whole recipe on the embedded defaults (so far: prepare model and data, solve one problem)."""
    from codelift.pipeline import run_pipeline

    run_pipeline(model=model, data_dir=data_dir, out=out, console=console)


def main() -> None:
    """Entry point: user errors print one sentence and exit 2, without a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown the command's own output
    try:
        app()
    except CodeliftError as e:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
