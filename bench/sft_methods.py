"""Benchmark: one short SFT run per method, and the same LoRA run through TRL's SFTTrainer.

Every run trains the same model on the same encoded examples (codelift's, in the model's own prompt
format: TRL gets the very input_ids and completion-only labels codelift trains on) for the same
number of optimizer steps with the same batch size, learning rate and precision, each in its own
process; peak RSS is each whole process's (wait4), start-up to exit. Validation loss on the same
validation file (response tokens only).

    .venv/bin/python bench/sft_methods.py --steps 15
    .venv/bin/python bench/sft_methods.py --model qwen2.5-coder-0.5b-instruct --methods lora --steps 10

codelift's edge over TRL's defaults comes from length-grouped batches (less padding), with the
same completion-only loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from processes import run_measured
from rich.console import Console
from rich.table import Table

from codelift.hardware import machine

ROOT = Path(__file__).resolve().parents[1]
CODELIFT = str(Path(sys.executable).parent / "codelift")


def prepare_data(work: Path, data_dir: str) -> tuple[Path, Path]:
    env = {**os.environ, "CODELIFT_DATA": data_dir}
    for source, split, name in (("mbpp", "train", "mbpp"), ("code_alpaca", "train", "alpaca"),
                                ("mbpp", "validation", "val")):
        subprocess.run([CODELIFT, "data", "prepare", source, "--split", split, "--out", str(work / f"{name}.jsonl")],
                       env=env, check=True, capture_output=True)
    train = work / "train.jsonl"
    train.write_text((work / "mbpp.jsonl").read_text() + (work / "alpaca.jsonl").read_text())
    return train, work / "val.jsonl"


def run_codelift(method: str, model: str, train: Path, val: Path, out: Path, steps: int, batch: int) -> dict:
    # One evaluation, at the end: the config puts the eval interval past the last step.
    config = out.with_suffix(".yaml")
    config.write_text(f"method: {method}\nmax_steps: {steps}\nbatch_size: {batch}\ngrad_accum: 1\n"
                      f"eval_every_epochs: 100\neval_before_training: false\n")
    _, peak = run_measured([CODELIFT, "sft", "--model", model, "--data", str(train), "--validation", str(val),
                            "--out", str(out), "--config", str(config)], out.with_suffix(".log"))
    run = json.loads((out / "run.json").read_text())
    return {"trainable": run["trainable_parameters"], "peak_mb": peak, "train_peak_mb": run["peak_memory_mb"],
            "tokens_per_s": run["tokens_per_second"], "val_loss": run["final_validation_loss"]}


def trl_worker(model: str, train: Path, val: Path, out: Path, steps: int, batch: int) -> None:
    """The LoRA run through TRL's SFTTrainer on codelift's own encoded rows (their labels mask the
    prompt: completion-only), settings matched to ours; writes result.json."""
    import resource

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq
    from trl import SFTConfig, SFTTrainer

    from codelift.config import SFTConfig as CodeliftConfig
    from codelift.hardware import fast_bf16
    from codelift.models.load import load_tokenizer, prepare_model
    from codelift.train.callbacks import Throughput
    from codelift.train.core import training_sets
    from codelift.train.data import IGNORE_INDEX

    ours = CodeliftConfig(method="lora", batch_size=batch).resolved()
    path = prepare_model(model)
    tokenizer = load_tokenizer(path)
    train_set, val_set = (rows.remove_columns("example")
                          for rows in training_sets(str(train), str(val), tokenizer, ours))
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                     per_device_eval_batch_size=batch, learning_rate=ours.learning_rate, seed=ours.seed,
                     max_length=ours.max_length, completion_only_loss=True, bf16=fast_bf16(), use_cpu=True,
                     report_to="none", logging_steps=1, save_strategy="no", eval_strategy="no",
                     include_num_input_tokens_seen="non_padding", lr_scheduler_type=ours.lr_scheduler,
                     max_grad_norm=ours.max_grad_norm, weight_decay=ours.weight_decay, dataloader_num_workers=0)
    lora = LoraConfig(task_type="CAUSAL_LM", r=ours.lora_r, lora_alpha=ours.lora_alpha,
                      lora_dropout=ours.lora_dropout, target_modules=ours.target_modules)
    throughput = Throughput()
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), args=args,
                         train_dataset=train_set, eval_dataset=val_set, processing_class=tokenizer,
                         data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX),
                         peft_config=lora, callbacks=[throughput])
    trainer.train()
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    result = {"trainable": trainable, "train_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "tokens_per_s": throughput.tokens_per_second(trainer.state), "val_loss": trainer.evaluate()["eval_loss"]}
    (out / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--methods", default="full,lora,ia3,prompt,prefix,qlora4,qlora8")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default=os.environ.get("CODELIFT_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--trl-worker", nargs=3, metavar=("TRAIN", "VAL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        train, val, out = map(Path, args.trl_worker)
        return trl_worker(args.model, train, val, out, args.steps, args.batch_size)

    console = Console(width=200)  # a pipe or file gets the whole table, not 80 squeezed columns
    work = Path(tempfile.mkdtemp(prefix="codelift-bench-sft-"))
    train, val = prepare_data(work, args.data_dir)
    results = {}
    for method in args.methods.split(","):
        console.print(f"codelift {method} ...")
        results[f"codelift {method}"] = run_codelift(method, args.model, train, val, work / method, args.steps,
                                                     args.batch_size)
    console.print("TRL SFTTrainer lora ...")
    (work / "trl").mkdir()
    _, peak = run_measured([sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch-size",
                            str(args.batch_size), "--trl-worker", str(train), str(val), str(work / "trl")],
                           work / "trl.log")
    results["TRL lora"] = json.loads((work / "trl" / "result.json").read_text()) | {"peak_mb": peak}

    table = Table(title=f"SFT methods: {args.model}, {args.steps} steps x batch {args.batch_size}")
    for column in ("run", "trainable params", "peak RSS MB", "RSS MB end of training", "tokens/s", "val loss"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['trainable']:,}", f"{r['peak_mb']:.0f}", f"{r['train_peak_mb']:.0f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['val_loss']:.4f}")
    console.print(table)
    if "codelift lora" in results:
        ours, trl = results["codelift lora"], results["TRL lora"]
        console.print(f"LoRA codelift / TRL: tokens/s {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x "
                      f"(target >= 1.3x), "
                      f"peak RSS {ours['peak_mb'] / trl['peak_mb']:.2f}x (target < 1x); "
                      f"val loss {ours['val_loss']:.4f} vs {trl['val_loss']:.4f}")
    console.print(f"work folder {work}; {machine()}")


if __name__ == "__main__":
    main()
