"""Configuration for every stage: pydantic models, YAML in, validated, one clear error out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codelift.errors import CodeliftError

Method = Literal["full", "lora", "ia3", "prompt", "prefix", "qlora4", "qlora8"]
ReportTo = Literal["none", "tensorboard", "trackio", "wandb", "mlflow"]
# How a prompt is rendered, in training and evaluation alike: the model's chat template, the
# `### Instruction:` template, or raw completion. None: chat where the tokenizer has a chat template.
PromptFormat = Literal["chat", "instruct", "raw"]

# Learning rates of the PEFT study for code models, per method.
DEFAULT_LEARNING_RATE = {"full": 5e-5, "lora": 3e-4, "ia3": 3e-4, "qlora4": 3e-4, "qlora8": 3e-4,
                         "prompt": 3e-3, "prefix": 3e-2}
# The QLoRA recipe: r=8, alpha=32 on q/k/v/o, dropout 0.05, cosine, 5% warm-up, accumulation 8,
# paged 8-bit AdamW (bitsandbytes runs it on CPU too).
QLORA_PRESET = dict(lora_r=8, lora_alpha=32, lora_dropout=0.05, lr_scheduler="cosine", warmup_ratio=0.05,
                    grad_accum=8, optimizer="paged_adamw_8bit")


# Marks a setting added after run folders were made: at its default it is left out of a stage's
# fingerprint (`pipeline.stage_fingerprint`), so those folders still resume.
ADDED_LATER = {"added_later": True}

class SFTConfig(BaseModel):
    """Supervised fine-tuning. Fields left unset take the chosen method's preset."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "lora"
    learning_rate: float | None = None
    epochs: float = 5.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: Literal["adamw", "adafactor", "paged_adamw_8bit", "adamw_8bit"] = "adamw"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    num_virtual_tokens: int = 20
    eval_every_epochs: float = 0.2
    eval_before_training: bool = True  # the "before" validation loss, at step 0
    max_length: int = 512
    prompt_format: PromptFormat | None = None  # examples rendered exactly as eval prompts them
    group_by_length: bool = True
    bf16: bool | None = None  # None: on where the hardware has fast bf16
    loss_chunk_size: int = 256  # response tokens whose logits exist at once
    # Recompute each layer in the backward pass instead of keeping its activations, which dominate
    # memory once the loss is chunked (1.4 MiB saved per token without, 0.18 MiB with, measured on
    # SmolLM2-135M LoRA); TRL's SFT turns it on by default too.
    gradient_checkpointing: bool = True
    report_to: ReportTo = "none"  # experiment tracker the Trainer logs to
    seed: int = 42
    # Bit-for-bit reruns on GPU as the CodeGen study ran: every RNG seeded, deterministic kernels only
    # (torch.use_deterministic_algorithms), cuDNN benchmarking off, the cuBLAS workspace setting. Slower.
    deterministic: bool = Field(False, json_schema_extra=ADDED_LATER)

    def resolved(self) -> SFTConfig:
        """This config with the method's defaults filled into the fields the user left unset."""
        preset: dict = {"learning_rate": DEFAULT_LEARNING_RATE[self.method]}
        if self.method.startswith("qlora"):
            preset |= QLORA_PRESET
        if self.method == "prefix":  # its virtual keys/values do not survive layer recomputation
            if self.gradient_checkpointing and "gradient_checkpointing" in self.model_fields_set:
                raise CodeliftError("gradient_checkpointing does not work with prefix tuning; set it to false.")
            preset["gradient_checkpointing"] = False
        chosen = {k: v for k, v in preset.items() if k not in self.model_fields_set or getattr(self, k) is None}
        return self.model_copy(update=chosen)


class DistillConfig(SFTConfig):
    """Knowledge distillation: every SFT setting, plus the teacher signal and how it is mixed.

    Loss per response token = alpha * T^2 * D(p_teacher^T || p_student^T) + (1 - alpha) * CE.
    """

    mode: Literal["logit", "sequence", "on-policy"] = "logit"
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    divergence: Literal["forward", "reverse", "jsd"] = "forward"
    beta: float = Field(0.5, ge=0, le=1)  # jsd mixture weight; 0 / 1 are forward / reverse KL
    cache_tail: Literal["bucket", "renormalize"] = "bucket"  # how a top-k cache treats the rest
    lmbda: float = Field(0.5, ge=0, le=1)  # on-policy: fraction of steps on the student's own samples
    max_new_tokens: int = 256  # sequence and on-policy generation
    generation_backend: Literal["hf", "vllm"] = "hf"  # sequence: how the teacher answers
    # sequence: the teacher answers each task K times (1: greedy; more: sampled at sample_temperature);
    # up to keep_per_task distinct answers that pass the task's tests are kept.
    samples_per_task: int = Field(1, ge=1)
    sample_temperature: float = Field(0.8, gt=0)
    keep_per_task: int = Field(1, ge=1)
    filter_by_tests: bool = True  # sequence: false keeps answers that fail their tests too
    include_unverified: bool = False  # sequence: keep compiling answers of tasks without tests (Code Alpaca)
    token_kd: bool = False  # sequence: also logit KD toward the teacher on the kept answers (one tokenizer)


class PreferenceConfig(SFTConfig):
    """`prefer`: every SFT setting, plus how the model's own answers are sampled and paired.

    Loss per pair = -log sigmoid(beta * (chosen margin - rejected margin)) + nll_weight * the
    chosen answer's mean NLL per token; a margin is log p(answer) now less before training.
    """

    samples_per_task: int = Field(8, ge=2)  # sampled at sample_temperature; pairs need two outcomes
    sample_temperature: float = Field(0.7, gt=0)
    max_new_tokens: int = 384
    generation_backend: Literal["hf", "vllm"] = "hf"
    pairs_per_task: int = Field(2, ge=1)  # (passing, failing) pairs per task, answers spread evenly
    beta: float = Field(0.1, gt=0)  # how far from the reference the preference may pull
    nll_weight: float = Field(1.0, ge=0)  # RPO: 0 is plain DPO
    lora_dropout: float = 0.0  # the margins compare with dropout-free reference scores, so none in training
    epochs: float = 1.0
    group_by_length: bool = False


class PlanGenerateConfig(BaseModel):
    """`plan generate`: how the teacher writes plans by backward reasoning and how they are checked."""

    model_config = ConfigDict(extra="forbid")

    # backward (CodePLAN): the teacher reasons back from the reference solution; forward, its baseline:
    # the teacher plans from the problem alone
    direction: Literal["backward", "forward"] = Field("backward", json_schema_extra=ADDED_LATER)
    plans_per_task: int = Field(1, ge=1)  # 1: greedy; more: sampled at `temperature`, duplicates removed
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_plan_tokens: int = Field(256, ge=1)
    max_code_tokens: int = Field(384, ge=1)  # verification: the teacher's code written from the plan
    verify: bool = True  # keep a plan only if code written from it passes the task's tests
    copy_threshold: float = Field(0.5, gt=0, le=1)  # share of plan words inside word 4-grams of the code: a copy
    min_steps: int = Field(2, ge=1)  # fewer numbered steps: not a numbered list
    limit: int | None = None  # the first N tasks only
    seed: int = 42


class PlanConfig(SFTConfig):
    """`plan train`: every SFT setting, plus the two-task mix.

    Loss per step = (1 - lambda_plan) * L_code + lambda_plan * L_plan, each the mean over its own
    response tokens in the step (the accumulation window, all processes).
    """

    lambda_plan: float = Field(0.5, ge=0, le=1)
    # Code examples: "both" = one without a plan plus one given each kept plan; "plan" = only
    # plan-conditioned ones (tasks without a kept plan still get one without); "none" = never a plan.
    code_with_plan: Literal["both", "plan", "none"] = "both"


class SFTStage(SFTConfig):
    """SFT inside `codelift run`: every `SFTConfig` field, and whether the stage runs at all."""

    enabled: bool = True


class DataStage(BaseModel):
    """Specs are SOURCE:SPLIT[,SPLIT] (`mbpp:train`, `code_alpaca:train`) or a JSON/JSONL file."""

    model_config = ConfigDict(extra="forbid")

    train: list[str] = ["mbpp:train", "code_alpaca:train"]
    validation: str = "mbpp:validation"
    limit: int | None = None  # keep the first N cleaned training tasks (small runs)


class TeacherStage(BaseModel):
    """The larger model: distilled from, evaluated as the ablation's last row, the KL reference."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # none: no teacher, so no KD, KL or teacher row
    sft: SFTStage = SFTStage(enabled=False)  # fine-tune the teacher first


class StudentStage(BaseModel):
    """The model the recipe lifts: a given one, or `keep_layers` evenly spaced layers of the teacher."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m-instruct"
    keep_layers: int | None = None


class DistillStage(DistillConfig):
    """KD inside `codelift run`: every `DistillConfig` field, whether the stage runs at all, and
    whether the teacher runs online or once into a top-k cache that training then reads."""

    enabled: bool = False
    cache_top_k: int | None = None  # logit mode: cache the teacher's top-k log-probs first (None: online)


class PreferStage(PreferenceConfig):
    """Preference optimisation inside `codelift run`, after KD: every `PreferenceConfig` field and
    whether the stage runs at all."""

    enabled: bool = False


class PlanStage(PlanConfig):
    """Plan distillation inside `codelift run`: the teacher writes verified plans for the first
    `generate.limit` training tasks, then the student (after KD) trains on code and plans (every
    `PlanConfig` field). How the result is sampled at evaluation is `eval.plans` / `codes_per_plan`."""

    enabled: bool = False
    generate: PlanGenerateConfig = PlanGenerateConfig()
    generation_backend: Literal["hf", "vllm"] = "hf"  # how the teacher writes and verifies plans
    plans_file: str | None = None  # plans written before (`plan generate`, e.g. by a stronger endpoint): no teacher
    # also train a student on forward plans (the teacher plans from the problem alone), as CodePLAN
    # compares against backward ones: a "+forward-plan" row weighed against the "+plan" row
    compare_forward: bool = Field(False, json_schema_extra=ADDED_LATER)


class RagStage(BaseModel):
    """The knowledge base indexed for the `+rag` rows of the ablation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    knowledge_base: list[str] = ["mbpp:train,prompt"]
    index: Literal["hnsw", "flat", "ivf"] = "hnsw"
    embedder: str | None = None  # default: the packaged all-MiniLM-L6-v2
    # what is embedded per task: full (problem, function name, code) or instruction (the problem alone,
    # the PEFT study's instruction-only documents)
    document: Literal["full", "instruction"] = Field("full", json_schema_extra=ADDED_LATER)


class EvalSettings(BaseModel):
    """How every evaluation prompts, samples and judges: one `codelift eval` and each row of a run's
    ablation take these settings, declared here once."""

    model_config = ConfigDict(extra="forbid")

    prompt_format: PromptFormat | None = None
    n_samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    max_new_tokens: int = 384
    batch_size: int = 32  # hf backend: rows (prompt x sample) per batch (32 decodes 1.3x faster than 16 here)
    timeout: float = 3.0  # wall-clock seconds per program
    backend: Literal["hf", "vllm", "openai"] = "hf"  # vllm: the `vllm` extra, fastest on a GPU
    dtype: str | None = None  # hf/vllm weights dtype; None: the fastest on this machine
    tensor_parallel_size: int | None = None  # vllm: GPUs per model replica
    codebleu: bool = True
    examples: int = 3  # ICL examples or RAG hits per prompt
    # the plan strategy: N distinct plans per problem, M programs from each, one chosen on the visible tests
    plans: int = Field(4, ge=0)
    codes_per_plan: int = Field(1, ge=1)
    plan_temperature: float = Field(0.6, ge=0)
    # > 1: sample this many programs per problem and keep the one chosen on the visible tests (reported
    # as filtered pass@1 with its budget); in a run, the "+select" rows
    candidates: int = Field(0, ge=0)
    # with candidates: where none passes the visible tests, this many are repaired with the failing test's
    # outcome and join the candidates (budget: candidates + repairs programs per problem)
    repairs: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        if isinstance(values, dict) and "mode" in values:
            raise ValueError("mode: renamed; the prompt format is prompt_format (chat, instruct or raw; plain is "
                             "raw), the plan and cot strategies are rows of their own (plan.enabled, "
                             "chain_of_thought) or `codelift eval --strategy`")
        return values


class EvalConfig(EvalSettings):
    """One `codelift eval`: a model on a benchmark, and how it is asked (strategy, context, backend)."""

    model: str
    benchmark: str
    split: str | None = None
    # direct: the problem's prompt; plan: plan sampling (a plan-trained model: N plans x M programs);
    # cot: asked to plan, then code, in one answer (CodePLAN's chain-of-thought baseline)
    strategy: Literal["direct", "plan", "cot"] = "direct"
    num_beams: int = Field(0, ge=0)  # > 1: beam search, the beams as the samples (EM@k and pass@k read off them)
    k: list[int] = [1]
    limit: int | None = None
    seed: int = 42
    kl_teacher: str | None = None
    context: Literal["none", "icl", "rag"] = "none"
    index: str | None = None  # the knowledge base's index folder (ICL draws from its documents)
    endpoint: str | None = None  # openai: base URL such as http://127.0.0.1:8000/v1
    endpoint_model: str | None = None  # openai: the served model's name (default: MODEL)
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key


class EvalStage(EvalSettings):
    """One harness for every variant: same benchmarks, prompts and generation settings."""

    benchmarks: list[str] = ["mbpp:validation"]  # humaneval, mbpp[:SPLIT], mbpp-sanitized[:SPLIT], apps[:SPLIT] or a file
    limit: int | None = 20  # first N problems of each benchmark
    kl_to_teacher: bool = True
    teacher: bool = True  # evaluate the teacher as the last row
    candidate_temperature: float = Field(0.8, gt=0)  # the "+select" rows sample at this temperature
    select_teacher: bool = True  # the teacher+select row too (costs `candidates` times the teacher's own row)
    # a "+cot" row: the final student asked to plan, then code, in one answer, without plan training
    # (CodePLAN's chain-of-thought baseline)
    chain_of_thought: bool = False
    bootstrap_samples: int = 10_000
    confidence: float = 0.95

    @model_validator(mode="after")
    def _runnable_in_a_run(self) -> EvalStage:
        if self.backend == "openai":
            raise ValueError("backend: a run evaluates the models it trains: expected hf or vllm, not openai")
        if self.plans < 1:
            raise ValueError("plans: the plan rows sample at least 1 plan per problem")
        return self


# What `codelift tune` may change, one setting per round, unless the config declares its own.
TUNE_SPACE = {"sft.learning_rate": [1e-4, 3e-4, 1e-3],
              "sft.lora_r": [8, 16, 32],
              "sft.target_modules": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
                                     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]],
              "sft.epochs": [1, 2, 3]}


class TuneStage(BaseModel):
    """`codelift tune`: train, score on the validation split, change one setting, repeat."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["pass@1", "avg_tests_passed", "syntax_valid", "codebleu", "exact_match"] = "pass@1"
    target: float | None = None
    max_rounds: int = 6
    patience: int = 2  # stop after this many rounds without a better score
    limit: int | None = None  # validation problems per round (default: eval.limit)
    space: dict[str, list[Any]] = TUNE_SPACE  # dotted setting -> values to try (e.g. distill.alpha)


class RunConfig(BaseModel):
    """`codelift run`: the recipe end to end. The defaults are a few-minute demonstration on the
    embedded model (no teacher); configs/smoke.yaml adds the teacher and the pruned student."""

    model_config = ConfigDict(extra="forbid")

    data: DataStage = DataStage()
    teacher: TeacherStage = TeacherStage()
    student: StudentStage = StudentStage()
    sft: SFTStage = SFTStage(method="lora", max_steps=20, eval_every_epochs=0.05)
    distill: DistillStage = DistillStage()
    prefer: PreferStage = Field(PreferStage(), json_schema_extra=ADDED_LATER)
    plan: PlanStage = PlanStage()
    rag: RagStage = RagStage()
    eval: EvalStage = EvalStage()
    tune: TuneStage = TuneStage()
    report_to: ReportTo = "none"  # passed to every training stage
    # Let the models and embedders run code from their own repositories (CodeGen2, Jina code embeddings);
    # off by default, since that code runs with your permissions. Recorded in every run.json.
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _stages_fit_together(self) -> RunConfig:
        """Combinations that would otherwise fail hours into a run."""
        for where, stage in (("sft", self.sft), ("teacher.sft", self.teacher.sft), ("prefer", self.prefer),
                             ("plan", self.plan)):
            if stage.enabled and stage.method in ("prompt", "prefix"):
                raise ValueError(f"{where}.method: {stage.method} tuning learns virtual tokens that cannot be merged "
                                 f"into the weights, and the next stages need a plain model folder; use lora, ia3, "
                                 f"qlora4, qlora8 or full")
        needs_teacher = [name for name, on in (("student.keep_layers", self.student.keep_layers is not None),
                                                ("distill.enabled", self.distill.enabled),
                                                ("teacher.sft.enabled", self.teacher.sft.enabled),
                                                ("plan.enabled", self.plan.enabled and not self.plan.plans_file))
                        if on]
        if needs_teacher and self.teacher.model is None:
            raise ValueError(f"{needs_teacher[0]}: needs a teacher; set teacher.model")
        if self.student.keep_layers is not None and "model" in self.student.model_fields_set:
            raise ValueError("student: give either model (a given student) or keep_layers (a pruned copy of the "
                             "teacher), not both")
        if self.distill.enabled and self.distill.cache_top_k is not None and self.distill.mode != "logit":
            raise ValueError(f"distill.cache_top_k: a teacher cache serves logit KD only, not mode "
                             f"{self.distill.mode}; remove cache_top_k or set distill.mode: logit")
        if self.plan.enabled and self.eval.codes_per_plan > 1 and self.eval.temperature == 0:
            raise ValueError(f"eval.codes_per_plan: {self.eval.codes_per_plan} greedy programs from one plan are "
                             f"identical; set eval.temperature (e.g. 0.6) or codes_per_plan: 1")
        if self.eval.repairs and self.eval.candidates < 2:
            raise ValueError("eval.repairs: repairs are made of the +select row's candidates; set eval.candidates "
                             "(2 or more) or repairs: 0")
        if self.rag.enabled and not self.rag.knowledge_base:
            raise ValueError("rag.knowledge_base: empty; list at least one source, or set rag.enabled: false")
        if not self.eval.benchmarks:
            raise ValueError("eval.benchmarks: empty; list at least one benchmark such as mbpp:validation")
        return self


def explicit_defaults(cls: type[BaseModel]) -> dict:
    """The values a model's defaults set on purpose (e.g. the demo's `sft.max_steps`), nested, so
    a file or `--set` changing one setting of a section keeps the section's others."""
    found = {}
    for name, field in cls.model_fields.items():
        if isinstance(field.default, BaseModel):
            found[name] = deep_merge(explicit_defaults(type(field.default)),
                                     field.default.model_dump(exclude_unset=True))
    return found


def deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, recursing into mappings present in both (lists are replaced whole)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_sets(sets: list[str] | tuple[str, ...]) -> dict:
    """`--set sft.lora_r=8 --set eval.benchmarks=[humaneval]` -> nested dict; values read as YAML."""
    pairs = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise CodeliftError(f"--set '{item}': expected KEY.PATH=VALUE, e.g. sft.lora_r=8.")
        try:
            pairs[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise CodeliftError(f"--set '{item}': the value is not valid YAML.") from None
    return nested_settings(pairs)


def nested_settings(pairs: dict[str, Any]) -> dict:
    """{"sft.lora_r": 8} -> {"sft": {"lora_r": 8}}."""
    nested: dict = {}
    for key, value in pairs.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CodeliftError(f"'{key}': {part} was already given a value, so it has no settings.")
        node[leaf] = value
    return nested


def with_settings(cfg: RunConfig, pairs: dict[str, Any]) -> RunConfig:
    """`cfg` with dotted settings changed (the others kept), validated again."""
    values = deep_merge(cfg.model_dump(exclude_unset=True), nested_settings(pairs))
    try:
        return RunConfig(**values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"]))
        changed = ", ".join(f"{k}={v}" for k, v in pairs.items())
        raise CodeliftError(f"{changed}: {field + ': ' if field else ''}"
                            f"{first['msg'].removeprefix('Value error, ')}.") from None


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CodeliftError(f"{path}: config file not found.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise CodeliftError(f"{path}{where}: not valid YAML.") from None
    if not isinstance(values, dict):
        raise CodeliftError(f"{path}: expected a mapping of settings, got {type(values).__name__}.")
    return values


def yaml_line(path: Path, loc: tuple) -> int | None:
    """The line of `path` where the setting at `loc` (a pydantic error location) is written."""
    node = yaml.compose(path.read_text())
    line = None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        found = [(k, v) for k, v in node.value if k.value == str(key)]
        if not found:
            break
        key_node, node = found[0]
        line = key_node.start_mark.line + 1
    return line


def load_config(cls: type[BaseModel], path: Path | None, overrides: dict | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> BaseModel:
    """Build `cls` from its explicit defaults, deep-merged with a YAML file, then command-line
    options (None means not given), then `--set key.path=value` items; validate it all at once."""
    values = explicit_defaults(cls)
    if path is not None:
        values = deep_merge(values, read_yaml(path))
    values = deep_merge(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    values = deep_merge(values, parse_sets(sets))
    try:
        return cls(**values)
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        named, _, rest = message.partition(": ")
        if first["type"] == "value_error" and first["loc"] and named.isidentifier():  # a section's check names its field
            first["loc"], message = (*first["loc"], named), rest
        loc = first["loc"] or tuple(named.split("."))  # a cross-section check names its field
        line = yaml_line(path, loc) if path is not None else None
        where = f"{path}, line {line}" if line else str(path or "options")
        if not first["loc"]:
            raise CodeliftError(f"{where}: {message}.") from None
        raise CodeliftError(f"{where}: field '{'.'.join(map(str, loc))}': {message}.") from None
