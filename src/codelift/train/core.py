"""The training core that every training stage (SFT, KD, plans) runs on.

A stage brings its data, its model and a *token loss*: a function of (model, batch) that returns
summed losses over the batch's response tokens. The core does the rest the same way for all of
them: a resumable seeded order, the Hugging Face Trainer (so `accelerate launch` spreads any stage
over processes), normalisation by the response tokens of the whole gradient-accumulation window
and all processes, crash-safe checkpoints, the best checkpoint by validation loss, saving,
merging, metrics, loss curves and the run manifest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from codelift.config import SFTConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.hardware import fast_bf16, peak_memory
from codelift.io import atomic_path, run_manifest, trust_remote_code, write_bytes, write_jsonl
from codelift.plots import curves
from codelift.models.adapters import parameter_counts
from codelift.prompts import default_format
from codelift.train.callbacks import CommitCheckpoints, Throughput, TrainingProgress, last_committed_checkpoint
from codelift.train.data import IGNORE_INDEX, sft_examples

OPTIMIZERS = {"adamw": "adamw_torch", "adafactor": "adafactor", "paged_adamw_8bit": "paged_adamw_8bit",
              "adamw_8bit": "adamw_bnb_8bit"}
TokenLoss = Callable[[torch.nn.Module, dict], dict]  # -> {"loss": sum, "tokens": count, part: sum, ...}


def use_bf16(choice: bool | None) -> bool:
    """The bf16 setting of a stage: the user's choice, else whether the hardware has fast bf16."""
    return fast_bf16() if choice is None else choice


# --- data ---------------------------------------------------------------------------------------

def split_validation(count: int, seed: int, fraction: float = 0.05) -> set[int]:
    """Indexes of a seeded `fraction` (at least one) of `count` tasks, held out for validation."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return set(order[:max(1, round(count * fraction))])


def with_prompt_format(cfg: SFTConfig, tokenizer) -> SFTConfig:
    """`cfg` with its prompt format decided for this tokenizer, so run.json records the one used."""
    return cfg.model_copy(update={"prompt_format": default_format(tokenizer, cfg.prompt_format)})


def training_sets(data: str, validation: str | None, tokenizer, cfg: SFTConfig):
    """(train, validation) encoded datasets in `cfg`'s prompt format; each row's `example` is its
    task's line in `data`."""
    fmt = default_format(tokenizer, cfg.prompt_format)
    tasks = load_tasks(data)
    held_out = sft_examples(load_tasks(validation), tokenizer, fmt, cfg.max_length) if validation else None
    return split_examples(sft_examples(tasks, tokenizer, fmt, cfg.max_length), len(tasks), held_out, cfg, data)


def split_examples(examples, task_count: int, validation_examples, cfg: SFTConfig, source: str):
    """(train, validation): the given validation examples, else a seeded 5% of the tasks held out,
    every row of a task on the same side (rows carry their task's index as `example`)."""
    if validation_examples is not None:
        train_set, val_set = examples, validation_examples
    else:
        held = split_validation(task_count, cfg.seed)
        train_set = examples.filter(lambda row: row["example"] not in held)
        val_set = examples.filter(lambda row: row["example"] in held)
    if len(train_set) == 0 or len(val_set) == 0:
        raise CodeliftError(f"{source}: no training or validation example keeps a response token within "
                            f"max_length={cfg.max_length}; raise max_length.")
    return train_set, val_set


# --- the trainer ---------------------------------------------------------------------------------

class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone. The stock sampler draws
    from the global RNG, which evaluations consume too, so a resumed run would see other batches."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this at every epoch start
        self.generator.manual_seed(self.seed + epoch)


class StageTrainer(Trainer):
    """The Hugging Face Trainer with a resumable length-grouped order and a stage's token loss.

    The token loss returns sums; they are divided by `num_items_in_batch`, the response tokens of
    the whole accumulation window on all processes, which the Trainer counts because we declare
    that the loss takes it. Parts of the loss (CE, KD) are logged apart at every logging step.
    """

    length_column = "input_ids"  # what length-grouped batching measures

    def __init__(self, *args, token_loss: TokenLoss, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_loss = token_loss
        self.model_accepts_loss_kwargs = True  # -> the Trainer counts num_items_in_batch
        self._loss_shifts_labels = True  # count labels[:, 1:], the predicted positions
        self.loss_is_scaled_for_ga = True  # ... and does not divide by accumulation steps again
        self._parts: dict[str, float] = {}
        self._parts_since = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sums = self.token_loss(model, inputs)
        count = num_items_in_batch if num_items_in_batch is not None else max(sums["tokens"], 1)
        loss = sums["loss"] / count
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:  # parts are logged per optimizer step, scaled as the loss is
            scale = count if self.loss_is_scaled_for_ga else count * self.current_gradient_accumulation_steps
            for name, value in sums.items():
                if name not in ("loss", "tokens"):
                    self._parts[name] = self._parts.get(name, 0.0) + float(value.detach() / scale)
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self._parts:
            steps = max(self.state.global_step - self._parts_since, 1)
            logs.update({f"{name}_loss": round(value / steps, 6) for name, value in self._parts.items()})
            self._parts, self._parts_since = {}, self.state.global_step
        super().log(logs, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                               [len(ids) for ids in dataset[self.length_column]], self.args.data_seed)


def training_arguments(cfg: SFTConfig, out: Path, train_size: int, world_size: int,
                       resuming: bool) -> TrainingArguments:
    steps_per_epoch = math.ceil(train_size / (cfg.batch_size * cfg.grad_accum * world_size))
    every = max(1, round(cfg.eval_every_epochs * steps_per_epoch))
    bf16 = use_bf16(cfg.bf16)
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed, full_determinism=cfg.deterministic,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        optim=OPTIMIZERS[cfg.optimizer], weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps", eval_steps=every, eval_on_start=cfg.eval_before_training and not resuming,
        save_strategy="steps", save_steps=every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=1, report_to=cfg.report_to, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
        remove_unused_columns=False, prediction_loss_only=True,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False})


def fit(stage: str, model, tokenizer, train_set, val_set, out: Path, cfg: SFTConfig, *, token_loss: TokenLoss,
        collator=None, merge_base: str | None = None, title: str = "",
        trainer_class: type[StageTrainer] | None = None) -> tuple[StageTrainer, dict]:
    """Train, keep the best checkpoint, save weights (and the merged model), metrics and curves.

    Returns the trainer and the manifest; the stage adds what it measured and writes run.json
    last, so a run.json marks a finished stage. Re-running the same call resumes. A stage whose loss
    needs more of the accumulation window than its token count passes its own `trainer_class`.
    """
    trainable, total = parameter_counts(model)
    resume = last_committed_checkpoint(out / "checkpoints")
    args = training_arguments(cfg, out, len(train_set), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                              resuming=resume is not None)
    throughput = Throughput()
    collator = collator or ExampleCollator(tokenizer)
    trainer = (trainer_class or StageTrainer)(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                                              data_collator=collator, callbacks=[CommitCheckpoints(), throughput],
                                              token_loss=token_loss)
    trainer.remove_callback(ProgressCallback)  # its bar prints each log dictionary; ours keeps one line
    trainer.add_callback(TrainingProgress(title or f"{stage} ({cfg.method})", throughput))
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate()
    manifest = run_manifest(cfg.model_dump(), stage=stage, trainable_parameters=trainable, total_parameters=total,
                            best_checkpoint=trainer.state.best_model_checkpoint,
                            best_validation_loss=trainer.state.best_metric,
                            final_validation_loss=final_eval["eval_loss"], train_loss=result.training_loss,
                            steps=trainer.state.global_step, tokens_seen=trainer.state.num_input_tokens_seen,
                            tokens_per_second=throughput.tokens_per_second(trainer.state),
                            **peak_memory(), bf16=args.bf16, processes=args.world_size,
                            deterministic_algorithms=torch.are_deterministic_algorithms_enabled())
    if not trainer.is_world_process_zero():
        return trainer, manifest
    weights_dir = out / ("model" if cfg.method == "full" else "adapter")
    with atomic_path(weights_dir, is_dir=True) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if merge_base:
        merge_into_base(merge_base, weights_dir, cfg, out / "merged", tokenizer)
    history = trainer.state.log_history
    write_jsonl(out / "metrics.jsonl", history)
    write_bytes(out / "loss.png", curves(history, {"loss": "train loss", "eval_loss": "validation loss"},
                                         title or f"{stage} ({cfg.method})", "loss (response tokens)"))
    return trainer, manifest


class ExampleCollator:
    """Pads a batch like the SFT collator (labels padded with -100) and drops the bookkeeping
    `example` column, which stages that look rows up elsewhere (teacher caches) read first."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict:
        return self.pad([{k: v for k, v in f.items() if k != "example"} for f in features])


# --- after training ------------------------------------------------------------------------------

def merge_into_base(model_path: str, adapter_dir: Path, cfg: SFTConfig, target: Path, tokenizer) -> None:
    """Fold the adapter into the base weights and save a plain Hugging Face folder.

    QLoRA: the base is loaded quantised exactly as in training and dequantised, so the adapter
    is added to the very weights it was trained against (NF4 / int8 round-trip), not to the
    original full-precision ones.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from codelift.models.adapters import quantization_config

    if cfg.method in ("prompt", "prefix"):
        raise CodeliftError(f"--merge: {cfg.method} tuning learns virtual tokens, not weight updates; "
                            f"use the adapter in {adapter_dir} instead.")
    if cfg.method == "full":
        raise CodeliftError("--merge applies to adapters; full fine-tuning already wrote a plain model folder.")
    quantization = quantization_config(cfg.method)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, quantization_config=quantization,
                                                trust_remote_code=trust_remote_code())
    if quantization is not None:
        base = base.dequantize().to(torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    with atomic_path(target, is_dir=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
