"""Configuration for every stage: pydantic models, YAML in, validated, one clear error out."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codelift.errors import CodeliftError

Method = Literal["full", "lora", "ia3", "prompt", "prefix", "qlora4", "qlora8"]

# Learning rates of the PEFT study for code models, per method.
DEFAULT_LEARNING_RATE = {"full": 5e-5, "lora": 3e-4, "ia3": 3e-4, "qlora4": 3e-4, "qlora8": 3e-4,
                         "prompt": 3e-3, "prefix": 3e-2}
# The QLoRA recipe: r=8, alpha=32 on q/k/v/o, dropout 0.05, cosine, 5% warm-up, accumulation 8,
# paged 8-bit AdamW (bitsandbytes runs it on CPU too).
QLORA_PRESET = dict(lora_r=8, lora_alpha=32, lora_dropout=0.05, lr_scheduler="cosine", warmup_ratio=0.05,
                    grad_accum=8, optimizer="paged_adamw_8bit")


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
    group_by_length: bool = True
    bf16: bool | None = None  # None: on where the hardware has fast bf16
    loss_chunk_size: int = 1024  # response tokens whose logits exist at once
    report_to: Literal["none", "tensorboard", "trackio", "wandb", "mlflow"] = "none"
    seed: int = 42

    def resolved(self) -> SFTConfig:
        """This config with the method's defaults filled into the fields the user left unset."""
        preset: dict = {"learning_rate": DEFAULT_LEARNING_RATE[self.method]}
        if self.method.startswith("qlora"):
            preset |= QLORA_PRESET
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
    filter_by_tests: bool = False  # sequence: keep only teacher answers that pass the task's tests


class PlanGenerateConfig(BaseModel):
    """`plan generate`: how the teacher writes plans by backward reasoning and how they are checked."""

    model_config = ConfigDict(extra="forbid")

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


class RunConfig(BaseModel):
    """`codelift run`: the recipe end to end. The defaults are a few-minute demonstration on the
    embedded model; raise `sft.max_steps` / `sft.epochs` and `eval_limit` for a real run."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m-instruct"
    train: list[str] = ["mbpp:train", "code_alpaca:train"]
    validation: str = "mbpp:validation"
    sft: SFTConfig = SFTConfig(method="lora", max_steps=20, eval_every_epochs=0.05)
    knowledge_base: list[str] = ["mbpp:train,prompt"]
    benchmark: str = "mbpp"
    split: str = "validation"
    mode: Literal["plain", "instruct", "chat"] = "instruct"
    eval_limit: int | None = 20
    examples: int = 3


def load_config(cls: type[BaseModel], path: Path | None, overrides: dict) -> BaseModel:
    """Build `cls` from a YAML file, then command-line overrides (None means not given)."""
    values = {}
    if path is not None:
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
    values |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**values)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CodeliftError(f"{path or 'options'}: field '{field}': {first['msg']}.") from None
