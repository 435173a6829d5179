"""`codelift run`: the recipe, one line per stage, every artifact under one folder.

data -> teacher (given, or fine-tuned) -> student (given, or the teacher pruned) -> SFT -> KD
-> preference optimisation on the student's own judged answers -> plan distillation -> knowledge-base index -> evaluation of every variant (the ablation) ->
report. Each stage writes its own folder and hands the next what it made. A stage is finished
when its run.json carries the fingerprint of the settings and inputs it was made from: a re-run
skips finished stages, resumes an interrupted one (SFT and evaluation continue from their
checkpoints and logs) and refuses to build on a folder made with other settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple
from pathlib import Path

import torch
from pydantic import BaseModel
from rich.console import Console

from codelift.config import EvalConfig, EvalSettings, EvalStage, RunConfig
from codelift.data import load_sources
from codelift.data.loaders import check_source_spec
from codelift.data.prepare import prepare
from codelift.errors import CodeliftError
from codelift.evaluate.ablation import Variant, ablation_table
from codelift.evaluate.run import check_benchmark_spec, evaluate_model, generation_pending, open_generator
from codelift.hardware import peak_memory
from codelift.io import TRUST_REMOTE_CODE_ENV, file_sha256, read_jsonl, run_manifest, write_json, write_jsonl
from codelift.models import check_same_vocabulary, load_tokenizer, prepare_model, prune_model
from codelift.rag import build_index
from codelift.train.sft import train_sft


def run_pipeline(cfg: RunConfig, out: Path, *, data_dir: Path | None = None, console: Console | None = None) -> dict:
    """Run every configured stage into `out`; returns the ablation (also in eval/ablation.json)."""
    check_run(cfg, data_dir)
    if cfg.trust_remote_code:
        os.environ[TRUST_REMOTE_CODE_ENV] = "1"
    stages = Stages(out, RunContext(data_dir, cfg.report_to, console or Console()))
    write_json(out / "config.json", run_manifest(cfg.model_dump(), stage="run"))
    models = train_models(cfg, stages)
    index = stages.run("index", build_knowledge_index, cfg.rag, enabled=cfg.rag.enabled)
    # stages that are usually off join the inputs only when they ran, so earlier eval folders still resume
    optional = [stage for stage in (models.prefer, models.forward_plan) if stage.ran]
    evaluation = stages.run("eval", evaluate_variants, cfg.eval, *models[:4], models.plan, index, *optional)
    return json.loads(Path(evaluation.outputs["ablation"]).read_text())


class Models(NamedTuple):
    """The stages that make models; a stage that is off hands on its input, so `plan` always holds the
    final student. `forward_plan` is plan distillation on forward plans (CodePLAN's baseline), beside it."""

    teacher: Stage
    student: Stage
    sft: Stage
    kd: Stage
    prefer: Stage
    plan: Stage
    forward_plan: Stage


def train_models(cfg: RunConfig, stages: Stages) -> Models:
    data = stages.run("data", prepare_data, cfg.data)
    teacher = stages.run("teacher", make_teacher, cfg.teacher, data, enabled=cfg.teacher.model is not None)
    student = stages.run("student", make_student, cfg.student, teacher)
    sft = stages.run("sft", fine_tune, cfg.sft, student, data, enabled=cfg.sft.enabled)
    kd = stages.run("distill", distill, cfg.distill, sft, teacher, data, enabled=cfg.distill.enabled)
    prefer = stages.run("prefer", prefer_passing, cfg.prefer, kd, data, enabled=cfg.prefer.enabled)
    plan = stages.run("plan", plan_distill, cfg.plan, prefer, teacher, data, enabled=cfg.plan.enabled)
    forward = cfg.plan.model_copy(update={"generate": cfg.plan.generate.model_copy(update={"direction": "forward"}),
                                          "plans_file": None, "compare_forward": False})
    forward_plan = stages.run("plan-forward", plan_distill, forward, prefer, teacher, data,
                              enabled=cfg.plan.enabled and cfg.plan.compare_forward)
    return Models(teacher, student, sft, kd, prefer, plan, forward_plan)


# --- Validation of the whole run, before any work ------------------------------------------------

def check_run(cfg: RunConfig, data_dir: Path | None) -> None:
    """What the config's own checks cannot see: data specs against the loaders, and teacher/student
    pairs that must share a tokenizer."""
    for where, specs in (("data.train", cfg.data.train), ("data.validation", [cfg.data.validation]),
                         ("rag.knowledge_base", cfg.rag.knowledge_base if cfg.rag.enabled else [])):
        for spec in specs:
            check_source_spec(spec, where)
    for spec in cfg.eval.benchmarks:
        check_benchmark_spec(spec)
    if cfg.plan.enabled and cfg.plan.plans_file and not Path(cfg.plan.plans_file).is_file():
        raise CodeliftError(f"plan.plans_file: '{cfg.plan.plans_file}': file not found; expected the plans JSONL "
                            f"that `codelift plan generate` writes.")
    if cfg.plan.enabled and cfg.plan.compare_forward and cfg.teacher.model is None:
        raise CodeliftError("plan.compare_forward: forward plans are written by the teacher; set teacher.model.")
    logit_kd = cfg.distill.enabled and cfg.distill.mode != "sequence"  # sequence KD learns from text
    needs_same_tokenizer = logit_kd or (cfg.eval.kl_to_teacher and cfg.teacher.model is not None)
    if needs_same_tokenizer and cfg.student.keep_layers is None:
        check_same_tokenizer(cfg)


def check_same_tokenizer(cfg: RunConfig) -> None:
    """KD and KL compare distributions token by token: the two vocabularies must be identical."""
    need = "distill.mode" if cfg.distill.enabled and cfg.distill.mode != "sequence" else "eval.kl_to_teacher"
    check_same_vocabulary(load_tokenizer(cfg.teacher.model), load_tokenizer(cfg.student.model), cfg.teacher.model,
                          cfg.student.model, where=need, way_out="pick a pair that shares it, prune the teacher "
                          "(student.keep_layers), or use distill.mode: sequence and eval.kl_to_teacher: false")


# --- Stages: each reads its settings and inputs, writes into its folder, returns its outputs -------

@dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares (not `rag.Context`, a prompt's retrieved examples)."""

    data_dir: Path | None
    report_to: str
    console: Console


@dataclass(frozen=True)
class Stage:
    """What a stage hands the next: its folder, its outputs (paths), and whether it ran at all
    (a disabled stage hands on its first input's outputs unchanged)."""

    name: str
    folder: Path
    outputs: dict
    fingerprint: str
    ran: bool = True
    cost: dict = field(default_factory=dict)  # wall_seconds, peak_memory_mb (and peak_gpu_memory_mb on CUDA)


@dataclass(frozen=True)
class Stages:
    """Runs stages into `out/<stage>` (or, keyed, into `out/<stage>-<fingerprint>`, so runs with
    other settings downstream share the folders of the stages they have in common)."""

    out: Path
    ctx: RunContext
    keyed: bool = False

    def run(self, name: str, make: Callable[..., dict], settings: BaseModel, *inputs: Stage,
            enabled: bool = True) -> Stage:
        fingerprint = stage_fingerprint(name, settings, inputs)
        if not enabled:
            passed_on = inputs[0] if inputs else None
            return Stage(name, self.out, passed_on.outputs if passed_on else {},
                         passed_on.fingerprint if passed_on else fingerprint, ran=False)
        folder = self.out / (f"{name}-{fingerprint}" if self.keyed else name)
        self.ctx.console.rule(f"{name}")
        done = finished(folder)
        if done is not None and done["fingerprint"] == fingerprint:
            check_outputs(folder, name, done.get("checksums", {}))
            self.ctx.console.print(f"already done -> {folder}")
            return Stage(name, folder, done["outputs"], fingerprint, cost=done["cost"])
        check_started(folder, name, fingerprint)
        with measure() as cost:
            outputs = make(folder, settings, *inputs, ctx=self.ctx)
        manifest_path = folder / "run.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else run_manifest(
            settings.model_dump(), stage=name)
        manifest["pipeline"] = {"stage": name, "fingerprint": fingerprint, "outputs": outputs, "cost": cost,
                                "inputs": {i.name: str(i.folder) for i in inputs if i.ran},
                                "checksums": output_checksums(folder, outputs)}
        write_json(manifest_path, manifest)
        self.ctx.console.print(f"{name}: {cost['wall_seconds']:.0f} s, peak {cost['peak_memory_mb']:.0f} MiB -> {folder}")
        return Stage(name, folder, outputs, fingerprint, cost=cost)


def stage_fingerprint(name: str, settings: BaseModel, inputs: tuple[Stage, ...] = ()) -> str:
    """What a stage's folder was made from: its settings (trackers change no artifact; a setting marked
    `config.ADDED_LATER` only when it is not at its default) and its inputs'."""
    dump = fingerprinted(settings)
    dump.pop("report_to", None)
    made_from = [name, dump, [i.fingerprint for i in inputs]]
    return hashlib.sha256(json.dumps(made_from).encode()).hexdigest()[:16]


def fingerprinted(settings: BaseModel) -> dict:
    """The settings as JSON, leaving out (at every depth) a setting added later that is at its default."""
    dump = {}
    for key, field_info in type(settings).model_fields.items():
        value = getattr(settings, key)
        if (field_info.json_schema_extra or {}).get("added_later") and value == field_info.default:
            continue
        dump[key] = fingerprinted(value) if isinstance(value, BaseModel) else \
            settings.model_dump(mode="json", include={key})[key]
    return dump


def finished(folder: Path) -> dict | None:
    """The pipeline record of a finished stage folder, else None."""
    path = folder / "run.json"
    return json.loads(path.read_text()).get("pipeline") if path.is_file() else None


def output_checksums(folder: Path, outputs: dict) -> dict[str, str]:
    """SHA-256 of every file a stage hands on that it wrote itself (inside its folder; a shipped
    model it passes on is not its own), by path relative to the folder."""
    files = []
    for value in outputs.values():
        path = Path(value) if isinstance(value, str) else None
        if path is not None and path.exists() and path.resolve().is_relative_to(folder.resolve()):
            files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f.resolve().relative_to(folder.resolve())): file_sha256(f) for f in files}


def check_outputs(folder: Path, name: str, checksums: dict[str, str]) -> None:
    """A finished stage is reused only with the very files it handed on: a changed or damaged one
    is named, never read (folders finished before checksums were recorded have none to check)."""
    for relative, digest in checksums.items():
        path = folder / relative
        problem = ("missing" if not path.is_file() else
                   f"changed or damaged (its SHA-256 is not the one in {folder / 'run.json'})"
                   if file_sha256(path) != digest else "")
        if problem:
            raise CodeliftError(f"{path}: {problem} since the {name} stage finished; remove {folder} (and the stages "
                                f"after it) to redo it.")


def check_started(folder: Path, name: str, fingerprint: str) -> None:
    """A folder is resumed (or redone) only with the settings and inputs that started it."""
    marker = folder / "stage.json"
    if marker.is_file() and json.loads(marker.read_text())["fingerprint"] != fingerprint:
        raise CodeliftError(f"{folder} holds the {name} stage made with other settings or inputs; use another "
                            f"--out, or remove {folder} (and the stages after it) to redo it.")
    write_json(marker, {"stage": name, "fingerprint": fingerprint})


@contextlib.contextmanager
def measure() -> Iterator[dict]:
    """Wall time and peak resident memory (and GPU memory where CUDA runs) of the block. The peak
    is reset first (Linux `clear_refs` 5), so each stage reports its own."""
    cost: dict = {}
    with contextlib.suppress(OSError):  # elsewhere the peak is the process's so far
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    began = time.monotonic()
    yield cost
    cost["wall_seconds"] = round(time.monotonic() - began, 1)
    cost.update(peak_memory())


def prepare_data(folder: Path, settings, *, ctx: RunContext) -> dict:
    """Clean (and decontaminate) every training source into one train.jsonl; copy the validation set."""
    kept = []
    for spec in settings.train:
        source, _, split = spec.partition(":")
        tasks, counts, _ = prepare(source, split or None, folder / f"{Path(source).stem}-{split}.jsonl",
                                   data_dir=ctx.data_dir)
        dropped = ", ".join(f"{reason} {n}" for reason, n in counts.items() if reason != "kept" and n)
        ctx.console.print(f"{spec}: kept {counts['kept']} of {sum(counts.values())} (dropped: {dropped or 'none'})")
        kept += tasks
    if settings.limit:
        kept = kept[:settings.limit]
    train, validation = folder / "train.jsonl", folder / "validation.jsonl"
    write_jsonl(train, (t.to_dict() for t in kept))
    write_jsonl(validation, (t.to_dict() for t in load_sources([settings.validation], ctx.data_dir)))
    return {"train": str(train), "validation": str(validation), "train_tasks": len(kept)}


def make_teacher(folder: Path, settings, data: Stage, *, ctx: RunContext) -> dict:
    """The teacher as given, or fine-tuned on the training data first."""
    if not settings.sft.enabled:
        return {"model": prepare_model(settings.model)}
    train_sft(settings.model, data.outputs["train"], folder, tracked(settings.sft, ctx.report_to),
              validation=data.outputs["validation"], merge=settings.sft.method != "full")
    return {"model": prepare_model(str(folder))}


def make_student(folder: Path, settings, teacher: Stage, *, ctx: RunContext) -> dict:
    """The student as given, or `keep_layers` evenly spaced layers of the teacher."""
    if settings.keep_layers is None:
        return {"model": prepare_model(settings.model)}
    kept = prune_model(teacher.outputs["model"], settings.keep_layers, folder / "model")
    ctx.console.print(f"kept teacher layers {kept}")
    return {"model": str(folder / "model")}


def fine_tune(folder: Path, settings, student: Stage, data: Stage, *, ctx: RunContext) -> dict:
    train_sft(student.outputs["model"], data.outputs["train"], folder, tracked(settings, ctx.report_to),
              validation=data.outputs["validation"], merge=settings.method != "full")
    return {"model": prepare_model(str(folder))}


def distill(folder: Path, settings, student: Stage, teacher: Stage, data: Stage, *, ctx: RunContext) -> dict:
    """Distillation from the teacher into the (fine-tuned) student, in `distill.mode`."""
    from codelift.train.distill import train_distill
    from codelift.train.teacher_cache import build_teacher_cache

    cfg = tracked(settings, ctx.report_to)
    if settings.cache_top_k is None:  # online: the teacher runs beside the student at every step
        train_distill(teacher.outputs["model"], student.outputs["model"], data.outputs["train"], folder, cfg,
                      validation=data.outputs["validation"], merge=settings.method != "full")
    else:  # the teacher runs once; the cache covers the training file, so validation is held out of it
        cache = folder / "teacher_cache"
        build_teacher_cache(teacher.outputs["model"], data.outputs["train"], cache, top_k=settings.cache_top_k,
                            batch_size=settings.batch_size, max_length=settings.max_length, bf16=settings.bf16,
                            prompt_format=settings.prompt_format)
        train_distill(None, student.outputs["model"], data.outputs["train"], folder, cfg, teacher_cache=str(cache),
                      merge=settings.method != "full")
    return {"model": prepare_model(str(folder))}


def prefer_passing(folder: Path, settings, student: Stage, data: Stage, *, ctx: RunContext) -> dict:
    """The (distilled) student answers the training tasks, and learns to prefer its passing answers."""
    from codelift.train.preference import train_preference

    train_preference(student.outputs["model"], data.outputs["train"], folder, tracked(settings, ctx.report_to),
                     merge=settings.method != "full")
    return {"model": prepare_model(str(folder))}


def plan_distill(folder: Path, settings, student: Stage, teacher: Stage, data: Stage, *, ctx: RunContext) -> dict:
    """Plans for the training tasks (given in `plan.plans_file`, or written now by the teacher);
    then the student, which has already learnt every task's code, learns code and plans together
    on the tasks that have a plan (on all of them, the few plans would be drowned out)."""
    from codelift.plans.teacher import read_plans
    from codelift.train.plan_train import train_plan

    plans = Path(settings.plans_file) if settings.plans_file else \
        teacher_plans(folder / "plans.jsonl", settings, teacher, data, ctx)
    planned = set(read_plans(plans))
    tasks = folder / "planned_tasks.jsonl"
    write_jsonl(tasks, (row for _, row in read_jsonl(data.outputs["train"]) if row["task_id"] in planned))
    train_plan(student.outputs["model"], str(tasks), str(plans), folder, tracked(settings, ctx.report_to),
               validation=data.outputs["validation"], merge=settings.method != "full")
    return {"model": prepare_model(str(folder)), "plans": str(plans)}


def teacher_plans(path: Path, settings, teacher: Stage, data: Stage, ctx: RunContext) -> Path:
    """The teacher's verified plans (backward reasoning from the references) for the first
    `plan.generate.limit` training tasks; a run whose plans were all dropped stops here."""
    from codelift.plans.teacher import generate_plans

    report = generate_plans(teacher.outputs["model"], data.outputs["train"], path, settings.generate,
                            backend=settings.generation_backend)
    ctx.console.print(f"plans: kept {report['kept']} of {report['answers']} for {report['tasks']} tasks "
                      f"({', '.join(f'{reason} {n}' for reason, n in report['counts'].items() if n)})")
    if not report["kept"]:
        raise CodeliftError(f"plan: every plan the teacher wrote for the first {report['tasks']} training tasks was "
                            f"dropped (see {path.with_name('plans.report.json')}); raise plan.generate.limit or "
                            f"plan.generate.plans_per_task, give plan.plans_file, or use a stronger teacher.")
    return path


def tracked(settings: BaseModel, report_to: str) -> BaseModel:
    """A training stage's settings with the run's `report_to`, unless the stage names its own."""
    return settings if "report_to" in settings.model_fields_set else settings.model_copy(update={"report_to": report_to})


def build_knowledge_index(folder: Path, settings, *, ctx: RunContext) -> dict:
    build_index(load_sources(settings.knowledge_base, ctx.data_dir), folder / "index", embedder=settings.embedder,
                kind=settings.index, document=settings.document)
    return {"index": str(folder / "index")}


def evaluate_variants(folder: Path, settings: EvalStage, teacher: Stage, student: Stage, sft: Stage, kd: Stage,
                      plan: Stage, index: Stage, *optional: Stage, ctx: RunContext) -> dict:
    """Every variant on every benchmark with one harness; then the ablation table. The evaluations
    of one model (its benchmarks, its +select and +rag rows) share one generator, so a vLLM engine
    starts once per model rather than once per row and benchmark. `optional` holds the usually-off
    stages that ran (prefer, plan-forward), by name."""
    ran = {stage.name: stage for stage in optional}
    variants = ablation_variants(settings, teacher, student, sft, kd, plan, index, ran.get("plan-forward"),
                                 prefer=ran.get("prefer"))
    pending = [(variant, benchmark) for variant in variants for benchmark in settings.benchmarks
               if not (variant_folder(folder, variant.name, benchmark) / "summary.json").is_file()]
    for model in dict.fromkeys(variant.model for variant, _ in pending):
        jobs = [(variant, benchmark, row_config(settings, variant, benchmark, teacher))
                for variant, benchmark in pending if variant.model == model]
        generating = any(generation_pending(cfg, variant_folder(folder, variant.name, benchmark), ctx.data_dir)
                         for variant, benchmark, cfg in jobs)
        with open_generator(jobs[0][2]) if generating else contextlib.nullcontext() as generator:
            if generator:
                ctx.console.print(f"{model}: {generator.backend} ready in {generator.start_seconds:.0f} s for "
                                  f"{len(jobs)} evaluations")
            for variant, benchmark, cfg in jobs:
                ctx.console.print(f"[bold]{variant.name}[/bold] on {benchmark}")
                summary = evaluate_model(cfg, variant_folder(folder, variant.name, benchmark), data_dir=ctx.data_dir,
                                         generator=generator)
                score = "filtered_pass@1" if variant.strategy == "plan" or variant.candidates else "pass@1"
                ctx.console.print(f"{variant.name}: {score} {summary[score]:.3f}")
    ablation = ablation_table(variants, {b: {v.name: variant_folder(folder, v.name, b) for v in variants}
                                         for b in settings.benchmarks},
                              resamples=settings.bootstrap_samples, confidence=settings.confidence)
    write_json(folder / "ablation.json", ablation)
    return {"ablation": str(folder / "ablation.json")}


def row_config(settings: EvalStage, variant: Variant, benchmark: str, teacher: Stage) -> EvalConfig:
    """The evaluation settings of one ablation row on one benchmark."""
    kl = teacher.outputs.get("model") if settings.kl_to_teacher and variant.context == "none" \
        and not variant.candidates and variant.name != "teacher" else None  # one KL per set of weights
    selection = {"candidates": variant.candidates, "temperature": settings.candidate_temperature,
                 "repairs": settings.repairs} if variant.candidates else {}
    return eval_config(settings, variant.model, benchmark, kl_teacher=kl, strategy=variant.strategy,
                       context=variant.context, index=variant.index, **selection)


def eval_config(settings: EvalStage, model: str, benchmark: str, **changes) -> EvalConfig:
    """The one harness: every evaluation of a run takes `eval:`'s shared settings and samples each
    problem's prompt directly unless `changes` (a row's strategy, context, selection) say otherwise."""
    source, _, split = benchmark.partition(":")
    shared = settings.model_dump(include=set(EvalSettings.model_fields))
    return EvalConfig(**shared | {"model": model, "benchmark": source, "split": split or None, "limit": settings.limit,
                                  "candidates": 0, "repairs": 0} | changes)


def ablation_variants(settings: EvalStage, teacher: Stage, student: Stage, sft: Stage, kd: Stage, plan: Stage,
                      index: Stage, forward_plan: Stage | None = None, *, prefer: Stage | None = None) -> list[Variant]:
    """The rows: the base student, each weight-training stage that ran (names accumulate: sft,
    sft+kd, sft+kd+prefer), that student choosing among samples by their visible tests (eval.candidates), asked to
    plan then code in one answer (eval.chain_of_thought), with retrieval; the plan-trained student with plan sampling, and with
    retrieval too (everything combined), and the student trained on forward plans instead
    (plan.compare_forward); the teacher. Each row is compared with the one it adds
    a single change to."""
    variants = [Variant("base", student.outputs["model"], stage=student.name, cost=student.cost)]
    for stage, tag in ((sft, "sft"), (kd, "kd"), (prefer, "prefer")):
        if stage is not None and stage.ran:
            variants.append(Variant(extended(variants[-1].name, tag), stage.outputs["model"], stage=stage.name,
                                    cost=stage.cost))
    trained = variants[-1]
    if settings.candidates > 1:
        variants.append(Variant(f"{trained.name}+select", trained.model, candidates=settings.candidates))
    if settings.chain_of_thought:
        variants.append(Variant(f"{trained.name}+cot", trained.model, strategy="cot", vs=trained.name))
    with_rag = {"context": "rag", "index": index.outputs.get("index"), "stage": index.name, "cost": index.cost}
    if index.ran:
        variants.append(Variant(f"{trained.name}+rag", trained.model, **with_rag, vs=trained.name))
    if plan.ran:
        planned = Variant(extended(trained.name, "plan"), plan.outputs["model"], strategy="plan", stage=plan.name,
                          cost=plan.cost, vs=trained.name)
        variants.append(planned)
        if index.ran:
            variants.append(Variant(f"{planned.name}+rag", planned.model, strategy="plan", **with_rag))
        if forward_plan is not None and forward_plan.ran:  # CodePLAN's comparison: plans without the solution
            variants.append(Variant(extended(trained.name, "forward-plan"), forward_plan.outputs["model"], strategy="plan",
                                    stage=forward_plan.name, cost=forward_plan.cost, vs=planned.name))
    if teacher.ran and settings.teacher:
        variants.append(Variant("teacher", teacher.outputs["model"], stage=teacher.name, cost=teacher.cost,
                                vs=trained.name))
        if settings.candidates > 1 and settings.select_teacher:
            variants.append(Variant("teacher+select", teacher.outputs["model"], candidates=settings.candidates))
    return variants


def extended(name: str, tag: str) -> str:
    return tag if name == "base" else f"{name}+{tag}"


def variant_folder(folder: Path, variant: str, benchmark: str) -> Path:
    return folder / variant / benchmark.replace(":", "-").replace("/", "_")

