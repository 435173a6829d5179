"""`codelift sft`: supervised fine-tuning with any method of the PEFT family.

The recipe: resolve the config -> load tasks -> encode (loss on response tokens only) -> load
the model for the method -> train with the Hugging Face Trainer (so `accelerate launch` spreads
it over processes or GPUs unchanged), evaluating and checkpointing every fraction of an epoch
-> keep the checkpoint with the lowest validation loss -> save adapter / model, merged folder,
metrics, loss curve and run manifest.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler

from codelift.config import SFTConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.io import atomic_path, run_manifest, write_json, write_jsonl
from codelift.models.adapters import load_for_training, parameter_counts
from codelift.models.load import load_tokenizer, prepare_model
from codelift.train.callbacks import CommitCheckpoints, Throughput, last_committed_checkpoint
from codelift.train.data import sft_examples

OPTIMIZERS = {"adamw": "adamw_torch", "adafactor": "adafactor", "paged_adamw_8bit": "paged_adamw_8bit",
              "adamw_8bit": "adamw_bnb_8bit"}


def fast_bf16() -> bool:
    """bf16 pays on CUDA GPUs that support it and on CPUs with AVX512-BF16 (2x here)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def split_validation(tasks: list, seed: int, fraction: float = 0.05) -> tuple[list, list]:
    """Hold out a seeded `fraction` (at least one task) when no validation file is given."""
    order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:max(1, round(len(tasks) * fraction))])
    return [t for i, t in enumerate(tasks) if i not in held], [t for i, t in enumerate(tasks) if i in held]


def training_arguments(cfg: SFTConfig, out: Path, train_size: int, world_size: int,
                       resuming: bool) -> TrainingArguments:
    steps_per_epoch = math.ceil(train_size / (cfg.batch_size * cfg.grad_accum * world_size))
    every = max(1, round(cfg.eval_every_epochs * steps_per_epoch))
    bf16 = fast_bf16() if cfg.bf16 is None else cfg.bf16
    return TrainingArguments(
        output_dir=str(out / "checkpoints"), seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
        optim=OPTIMIZERS[cfg.optimizer], weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps", eval_steps=every, eval_on_start=cfg.eval_before_training and not resuming,
        save_strategy="steps", save_steps=every, save_total_limit=2,
        load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=1, report_to=cfg.report_to, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0)


def train_sft(model: str, data: str, out: Path, cfg: SFTConfig, *, validation: str | None = None,
              merge: bool = False) -> dict:
    """Fine-tune `model` on the tasks in `data`; returns the run manifest written to run.json."""
    cfg = cfg.resolved()
    set_seed(cfg.seed)
    model_path = prepare_model(model)
    tokenizer = load_tokenizer(model_path)

    train_tasks = load_tasks(data)
    if validation:
        val_tasks = load_tasks(validation)
    else:
        train_tasks, val_tasks = split_validation(train_tasks, cfg.seed)
    train_set = sft_examples(train_tasks, tokenizer, cfg.max_length)
    val_set = sft_examples(val_tasks, tokenizer, cfg.max_length)
    if len(train_set) == 0 or len(val_set) == 0:
        raise CodeliftError(f"{data}: no training or validation example keeps a response token within "
                            f"max_length={cfg.max_length}; raise max_length.")

    lm = load_for_training(model_path, cfg)
    trainable, total = parameter_counts(lm)
    resume = last_committed_checkpoint(out / "checkpoints")
    args = training_arguments(cfg, out, len(train_set), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                              resuming=resume is not None)
    throughput = Throughput()
    trainer = SeededOrderTrainer(model=lm, args=args, train_dataset=train_set, eval_dataset=val_set,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
                      callbacks=[CommitCheckpoints(), throughput])
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate()

    if not trainer.is_world_process_zero():
        return {}
    weights_dir = out / ("model" if cfg.method == "full" else "adapter")
    with atomic_path(weights_dir, is_dir=True) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if merge:
        merge_into_base(model_path, weights_dir, cfg, out / "merged", tokenizer)

    history = trainer.state.log_history
    write_jsonl(out / "metrics.jsonl", history)
    plot_losses(history, out / "loss.png", title=f"SFT ({cfg.method}) on {Path(data).name}")
    manifest = run_manifest(cfg.model_dump(), stage="sft", model=model, data=data, validation=validation,
                            trainable_parameters=trainable, total_parameters=total,
                            best_checkpoint=trainer.state.best_model_checkpoint,
                            best_validation_loss=trainer.state.best_metric, final_validation_loss=final_eval["eval_loss"],
                            train_loss=result.training_loss, steps=trainer.state.global_step,
                            tokens_seen=trainer.state.num_input_tokens_seen,
                            tokens_per_second=throughput.tokens_per_second(trainer.state),
                            peak_memory_mb=peak_memory_mb(), bf16=args.bf16, processes=args.world_size)
    write_json(out / "run.json", manifest)
    return manifest


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
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, quantization_config=quantization)
    if quantization is not None:
        base = base.dequantize().to(torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    with atomic_path(target, is_dir=True) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label in ((train, "train loss"), (val, "validation loss")):
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if label.startswith("val") else None)
    ax.set(xlabel="optimizer step", ylabel="loss (response tokens)", title=title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch) alone. The stock sampler draws
    from the global RNG, which evaluations consume too, so a resumed run would see other batches."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this at every epoch start
        self.generator.manual_seed(self.seed + epoch)


class SeededOrderTrainer(Trainer):
    """The Hugging Face Trainer with a resumable length-grouped order."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                               [len(ids) for ids in dataset["input_ids"]], self.args.data_seed)
