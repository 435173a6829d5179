"""Benchmark: logit distillation three ways on the same pair, data, steps and settings.

Variants, each in its own process so its peak memory (ru_maxrss, read by the parent through
wait4) is its own, run one after another:

- codelift online: `codelift distill --teacher T` (teacher loaded, run on every batch);
- codelift cached: `codelift distill cache` once (timed and sized apart), then
  `codelift distill --teacher-cache CACHE` (no teacher in memory);
- TRL: `trl.experimental.gkd.GKDTrainer` with lmbda=0 (supervised / off-policy KD; TRL 1.16's
  `DistillationTrainer` always generates on-policy and has no off-policy setting), beta=0
  (forward KL, the same divergence as ours), on the very encoded examples codelift trains on
  (completion-only labels), with gradient checkpointing on, as both train by default
  (`--trl-checkpointing off,on` runs TRL both ways).

All share the student (LoRA r=16 on q/k/v/o, codelift's LoRA learning rate), optimizer steps,
batch size, max_length, seed and precision (bf16 autocast where the CPU has AVX512-BF16, the
teacher held in the same dtype). tokens/s counts non-padding tokens over optimizer-step time only
(codelift's Throughput callback in every variant). Held-out KL is one function for all: the exact
full-vocabulary KL(teacher || student) at T = 1 per response token of MBPP validation
(`codelift.evaluate.kl.kl_to_teacher`, fp32), on each variant's merged student.

    PYTHONPATH=src .venv/bin/python bench/distill_throughput.py            # SmolLM2-135M -> its 10-layer copy
    PYTHONPATH=src .venv/bin/python bench/distill_throughput.py --steps 10 --trl-checkpointing on,off
    PYTHONPATH=src .venv/bin/python bench/distill_throughput.py --steps 60 --student DIR --teacher DIR

TRL's GKDTrainer takes no KD temperature: its `temperature` is the sampling temperature of
on-policy steps and its loss is always at T = 1 and pure KD (no CE term), while codelift optimises
alpha * T^2 * KL at T = 2 + (1 - alpha) * CE. Speed and memory do not depend on that; the objective
differs, so compare TRL's held-out KL with that in mind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from processes import run_measured
from rich.console import Console
from rich.table import Table

from codelift.hardware import machine

ROOT = Path(__file__).resolve().parents[1]
CODELIFT = [sys.executable, "-m", "codelift.cli"]


def prepare(work: Path, args) -> tuple[Path, Path, str]:
    """(training tasks, held-out tasks, student) under `work`; the student is pruned if not given."""
    train, heldout = work / "train.jsonl", work / "heldout.jsonl"
    for split, path in (("train", train), ("validation", heldout)):
        subprocess.run(CODELIFT + ["data", "prepare", "mbpp", "--split", split, "--out", str(path)],
                       check=True, capture_output=True)
    from codelift.models.load import prepare_model

    student = prepare_model(args.student) if args.student else None  # an embedded name -> its folder, for TRL too
    if student is None:
        student = str(work / "student")
        subprocess.run(CODELIFT + ["model", "prune", args.teacher, "--keep-layers", str(args.keep_layers),
                                   "--out", student], check=True, capture_output=True)
    return train, heldout, student


def distill_config(args, work: Path) -> Path:
    """The settings every codelift run shares; one evaluation at the end, no checkpoints."""
    path = work / "distill.yaml"
    path.write_text(f"method: lora\nmax_steps: {args.steps}\nbatch_size: {args.batch_size}\ngrad_accum: 1\n"
                    f"max_length: {args.max_length}\ntemperature: {args.temperature}\ndivergence: forward\n"
                    f"alpha: {args.alpha}\neval_every_epochs: 100\neval_before_training: false\n")
    return path


def run_codelift(name: str, teacher_flags: list[str], student: str, train: Path, work: Path, config: Path) -> dict:
    out = work / name
    seconds, peak = run_measured(CODELIFT + ["distill", "--student", student, "--data", str(train), "--out", str(out),
                                             "--config", str(config), "--merge", *teacher_flags],
                                 work / f"{name}.log")
    run = json.loads((out / "run.json").read_text())
    return {"tokens_per_s": run["tokens_per_second"], "peak_mb": peak, "train_peak_mb": run["peak_memory_mb"],
            "wall_s": seconds, "steps": run["steps"], "merged": str(out / "merged")}


def finished_codelift_run(folder: str) -> dict:
    """A codelift distill run folder made earlier by this bench (same settings): its figures and merged
    student. Its whole-process peak was not observed, only the training peak in its run.json."""
    run = json.loads((Path(folder) / "run.json").read_text())
    return {"tokens_per_s": run["tokens_per_second"], "peak_mb": None, "train_peak_mb": run["peak_memory_mb"],
            "wall_s": None, "steps": run["steps"], "merged": str(Path(folder) / "merged")}


def trl_worker(teacher: str, student: str, train: Path, out: Path, steps: int, batch: int, max_length: int,
               temperature: float, gradient_checkpointing: bool) -> None:
    """GKDTrainer, lmbda=0, beta=0, on codelift's own encoded training examples; writes result.json."""
    import resource

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from codelift.config import DistillConfig
    from codelift.models.load import load_tokenizer
    from codelift.train.callbacks import Throughput
    from codelift.hardware import fast_bf16
    from codelift.train.core import training_sets
    from codelift.train.data import IGNORE_INDEX

    ours = DistillConfig(method="lora", max_length=max_length, batch_size=batch).resolved()
    tokenizer = load_tokenizer(student)
    train_set, _ = training_sets(str(train), None, tokenizer, ours)  # the same rows codelift trains on
    bf16 = fast_bf16()
    args = GKDConfig(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=batch,
                     learning_rate=ours.learning_rate, seed=ours.seed, max_length=max_length, lmbda=0.0, beta=0.0,
                     temperature=temperature, disable_dropout=False, bf16=bf16, use_cpu=True,
                     gradient_checkpointing=gradient_checkpointing, report_to="none", logging_steps=1,
                     save_strategy="no", eval_strategy="no", include_num_input_tokens_seen="non_padding",
                     lr_scheduler_type=ours.lr_scheduler, max_grad_norm=ours.max_grad_norm,
                     weight_decay=ours.weight_decay, dataloader_num_workers=0)
    lora = LoraConfig(task_type="CAUSAL_LM", r=ours.lora_r, lora_alpha=ours.lora_alpha,
                      lora_dropout=ours.lora_dropout, target_modules=ours.target_modules)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.bfloat16 if bf16 else torch.float32)
    throughput = Throughput()
    trainer = GKDTrainer(model=model, teacher_model=teacher_model, args=args,
                         train_dataset=train_set.remove_columns("example"), processing_class=tokenizer,
                         data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX),
                         peft_config=lora, callbacks=[throughput])
    trainer.train()
    train_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
    (out / "result.json").write_text(json.dumps({"tokens_per_s": throughput.tokens_per_second(trainer.state),
                                                 "steps": trainer.state.global_step, "train_peak_mb": train_peak_mb}))


def run_trl(name: str, teacher: str, student: str, train: Path, work: Path, args, gradient_checkpointing: bool) -> dict:
    out = work / name
    out.mkdir()
    seconds, peak = run_measured([sys.executable, __file__, "--trl-worker", teacher, student, str(train), str(out),
                                  "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                  "--max-length", str(args.max_length), "--temperature", str(args.temperature)]
                                 + (["--gradient-checkpointing"] if gradient_checkpointing else []),
                                 work / f"{name}.log")
    result = json.loads((out / "result.json").read_text())
    return result | {"peak_mb": peak, "wall_s": seconds, "merged": str(out / "merged")}


def heldout_kl(students: dict[str, str], teacher: str, heldout: Path, max_length: int,
               limit: int | None = None) -> dict[str, float]:
    """Exact KL(teacher || student) at T = 1 per held-out response token, fp32, for each student."""
    import torch
    from transformers import AutoModelForCausalLM

    from codelift.data import load_tasks
    from codelift.evaluate.kl import kl_to_teacher
    from codelift.models.load import load_tokenizer, prepare_model

    teacher_path = prepare_model(teacher)
    tokenizer = load_tokenizer(teacher_path)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    tasks = load_tasks(str(heldout))[:limit]
    return {name: kl_to_teacher(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), teacher_model,
                                tokenizer, tasks, max_length=max_length)
            for name, path in students.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--student", default=None, help="Default: the teacher pruned to --keep-layers layers.")
    parser.add_argument("--keep-layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--trl-checkpointing", default="on", help="TRL runs: off, on or off,on (the first is "
                        "the reference of the ratios; codelift trains without gradient checkpointing).")
    parser.add_argument("--variants", default="online,cached,trl", help="Which to run (comma-separated).")
    parser.add_argument("--online-run", default=None, help="Reuse a finished codelift online run folder of this bench "
                        "(same settings) instead of running it again.")
    parser.add_argument("--heldout-limit", type=int, default=None, help="Held-out KL on the first N MBPP validation "
                        "tasks (default all 90).")
    parser.add_argument("--work", type=Path, default=None, help="Folder for runs (default: a new temp folder).")
    parser.add_argument("--trl-worker", nargs=4, metavar=("TEACHER", "STUDENT", "TRAIN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        teacher, student, train, out = args.trl_worker
        return trl_worker(teacher, student, Path(train), Path(out), args.steps, args.batch_size, args.max_length,
                          args.temperature, args.gradient_checkpointing)

    from codelift.models.load import prepare_model

    console = Console(width=200)  # a pipe or file gets the whole table, not 80 squeezed columns
    work = args.work or Path(tempfile.mkdtemp(prefix="codelift-bench-kd-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher = prepare_model(args.teacher)
    train, heldout, student = prepare(work, args)
    config = distill_config(args, work)
    console.print(f"work folder {work}; {machine()}")
    variants = args.variants.split(",")

    results, cache_note = {}, ""
    if "online" in variants and not args.online_run:
        console.print("codelift online ...")
        results["codelift online"] = run_codelift("online", ["--teacher", teacher], student, train, work, config)
    if "cached" in variants:
        console.print("codelift cache build ...")
        cache = work / "cache"
        seconds, peak = run_measured(CODELIFT + ["distill", "cache", "--teacher", teacher, "--data", str(train),
                                                 "--out", str(cache), "--top-k", str(args.top_k),
                                                 "--max-length", str(args.max_length)], work / "cache.log")
        m = json.loads((cache / "manifest.json").read_text())
        cache_note = (f"teacher cache: {m['examples']} examples, {m['tokens']:,} response tokens, top-{m['top_k']}, "
                      f"{m['bytes']:,} bytes = {m['bytes_per_token']} bytes/token, built in {seconds:.1f} s wall "
                      f"(whole process: start-up, teacher load, {m['tokens'] / seconds:.0f} tokens/s), "
                      f"peak RSS {peak:.0f} MB")
        console.print("codelift cached ...")
        results["codelift cached"] = run_codelift("cached", ["--teacher-cache", str(cache)], student, train, work,
                                                  config)
    if "trl" in variants:
        for setting in args.trl_checkpointing.split(","):
            console.print(f"TRL GKDTrainer, gradient checkpointing {setting} ...")
            results[f"TRL GKD, grad ckpt {setting}"] = run_trl(f"trl-ckpt-{setting}", teacher, student, train, work,
                                                               args, setting == "on")
    if args.online_run:  # read last: it may have been running beside this one
        results = {"codelift online": finished_codelift_run(args.online_run)} | results
    console.print("held-out KL ...")
    kl = heldout_kl({"student before KD": student} | {k: r["merged"] for k, r in results.items()}, teacher, heldout,
                    args.max_length, args.heldout_limit)

    trl = results.get(f"TRL GKD, grad ckpt {args.trl_checkpointing.split(',')[0]}")
    table = Table(title=f"Logit KD: {args.teacher} -> {Path(student).name} (LoRA r=16 q/k/v/o), {args.steps} steps x "
                        f"batch {args.batch_size}, max_length {args.max_length}, forward KL")
    for column in ("run", "steps", "tokens/s", "peak RSS MB", "RSS MB end of training", "wall s", "held-out KL",
                   "tok/s vs TRL", "RSS vs TRL"):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row("student before KD", "", "", "", "", "", f"{kl['student before KD']:.4f}", "", "")
    for name, r in results.items():
        speed = f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x" if trl else ""
        memory = f"{r['peak_mb'] / trl['peak_mb']:.2f}x" if trl and r["peak_mb"] else ""
        table.add_row(name, str(r["steps"]), f"{r['tokens_per_s']:.0f}", f"{r['peak_mb']:.0f}" if r["peak_mb"] else "-",
                      f"{r['train_peak_mb']:.0f}", f"{r['wall_s']:.0f}" if r["wall_s"] else "-", f"{kl[name]:.4f}",
                      speed, memory)
    console.print(table)
    console.print(f"codelift: alpha={args.alpha}, T={args.temperature} (T^2 on the KD term), divergence forward, "
                  f"cache top-k {args.top_k} + tail bucket. TRL: GKDTrainer lmbda=0, beta=0 (forward KL), "
                  f"temperature={args.temperature} (sampling only: its loss is at T=1, KD only), "
                  f"disable_dropout=False. held-out KL: exact, T=1, fp32, {args.heldout_limit or 'all'} MBPP "
                  f"validation tasks.")
    if cache_note:
        console.print(cache_note)
    ours, online = results.get("codelift cached"), results.get("codelift online")
    if ours and trl:
        console.print(f"targets: cached tokens/s vs TRL {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x (>= 2x), "
                      f"peak RSS vs TRL {ours['peak_mb'] / trl['peak_mb']:.2f}x (<= 0.6x)")
    if ours and online:
        console.print(f"held-out KL cached vs online {kl['codelift cached'] / kl['codelift online'] - 1:+.1%} (<= +5%)")
    console.print(f"machine after the run: {machine()}")


if __name__ == "__main__":
    main()
