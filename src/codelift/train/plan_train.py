"""`codelift plan train`: multi-task fine-tuning on code and plans (CodePLAN), on the training core.

The recipe: resolve the config -> read the kept plans of `plan generate` -> make two kinds of
examples, told apart by a marker in the prompt: `[GEN_CODE]` (the problem, optionally a plan ->
the reference code) and `[GEN_PLAN]` (the problem -> a plan) -> fit on the training core with
(1 - lambda) * L_code + lambda * L_plan per step -> write the run manifest.

How the two tasks are normalised. The core divides what the token loss returns as `loss` by N,
the response tokens of the whole gradient-accumulation window on all processes. Here each task is
averaged over its *own* response tokens of the window, N_code and N_plan (N = N_code + N_plan).
`TwoTaskTrainer` counts them when it collects the window's micro-batches and writes them into each
micro-batch as `window_tokens`; the token loss of a micro-batch then returns

    loss = N * ((1 - lambda) * CE_code / N_code + lambda * CE_plan / N_plan)

with CE_* summed over this micro-batch's tokens of each task. After the core's division by N and
the sum over the window's micro-batches, the optimised value is exactly
(1 - lambda) * L_code + lambda * L_plan, whatever the mix of tasks in each micro-batch (tested
against a hand computation). A task absent from a whole window adds 0; its weight does not pass
to the other. Evaluation batches have no window: each batch is its own.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from transformers import set_seed

from codelift.config import PlanConfig
from codelift.data import Task, load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_json
from codelift.models.adapters import load_for_training
from codelift.models.load import load_tokenizer, prepare_model
from codelift.plans.teacher import read_plans
from codelift.prompts import code_answer, default_format, student_code_instruction, student_plan_instruction, training_example
from codelift.train.core import ExampleCollator, StageTrainer, fit, split_examples, with_prompt_format
from codelift.train.data import IGNORE_INDEX, encode_example
from codelift.train.losses import chunked_sums, cross_entropy_sum, output_logits, response_states

CODE, PLAN = 0, 1  # the `task` column of an example


def train_plan(student: str, data: str, plans_file: str, out: Path, cfg: PlanConfig, *,
               validation: str | None = None, merge: bool = False) -> dict:
    """Fine-tune `student` on code and plan generation; returns the manifest written to run.json."""
    cfg = cfg.resolved()
    set_seed(cfg.seed)
    model_path = prepare_model(student)
    tokenizer = load_tokenizer(model_path)
    cfg = with_prompt_format(cfg, tokenizer)
    tasks, plans = load_tasks(data), read_plans(plans_file)
    if not any(t.task_id in plans for t in tasks):
        raise CodeliftError(f"{plans_file}: none of its plans belongs to a task of {data}; give the plans that "
                            f"`codelift plan generate` wrote for that file.")
    train_set, val_set = plan_sets(tasks, plans, validation, tokenizer, cfg)
    lm = load_for_training(model_path, cfg)
    trainer, manifest = fit("plan", lm, tokenizer, train_set, val_set, out, cfg,
                            token_loss=partial(two_task_loss, lambda_plan=cfg.lambda_plan,
                                               chunk_size=cfg.loss_chunk_size),
                            collator=TaskCollator(tokenizer), merge_base=model_path if merge else None,
                            title=f"plan distillation (lambda={cfg.lambda_plan}, {cfg.method}) on {Path(data).name}",
                            trainer_class=TwoTaskTrainer)
    if not trainer.is_world_process_zero():
        return {}
    manifest |= {"student": student, "data": data, "plans": plans_file, "validation": validation,
                 "examples": {"code": train_set["task"].count(CODE), "plan": train_set["task"].count(PLAN)},
                 "tasks_with_plans": sum(t.task_id in plans for t in tasks)}
    write_json(out / "run.json", manifest)
    return manifest


# --- data ----------------------------------------------------------------------------------------

def plan_examples(tasks: list[Task], plans: dict[str, list[str]], tokenizer, cfg: PlanConfig):
    """Encoded examples of both tasks; `example` is the task's index in `tasks`, `task` CODE or PLAN."""
    from datasets import Dataset

    fmt = default_format(tokenizer, cfg.prompt_format)
    if fmt == "raw":
        raise CodeliftError("plan training needs an instruction format (the task marker is an instruction); "
                            "set prompt_format to chat or instruct.")

    def encode(instruction: str, answer: str) -> dict:
        prompt, target, add_eos = training_example(instruction, answer, fmt, tokenizer)
        return encode_example(tokenizer, prompt, target, cfg.max_length, add_eos=add_eos)

    rows, planned = [], set()
    for i, task in enumerate(tasks):
        task_plans = plans.get(task.task_id, [])
        code_plans = {"both": [""] + task_plans, "plan": task_plans or [""], "none": [""]}[cfg.code_with_plan]
        code = code_answer(task.solution) if fmt == "chat" else task.solution
        rows += [encode(student_code_instruction(task, plan), code) | {"example": i, "task": CODE} for plan in code_plans]
        if task.task_id not in planned:  # a task with several answers (distill's teacher data) asks for its plans once
            planned.add(task.task_id)
            rows += [encode(student_plan_instruction(task), plan) | {"example": i, "task": PLAN} for plan in task_plans]
    return Dataset.from_list([r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])])


def plan_sets(tasks: list[Task], plans: dict[str, list[str]], validation: str | None, tokenizer, cfg: PlanConfig):
    """(train, validation): a validation file, else a seeded 5% of the tasks (all of a task's examples
    on one side, so no plan of a held-out task is trained on)."""
    held_out = plan_examples(load_tasks(validation), plans, tokenizer, cfg) if validation else None
    return split_examples(plan_examples(tasks, plans, tokenizer, cfg), len(tasks), held_out, cfg, "the plan data")


class TaskCollator(ExampleCollator):
    """Pads like the SFT collator and keeps each row's task as a [batch] tensor."""

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__([{k: v for k, v in f.items() if k != "task"} for f in features])
        batch["task"] = torch.tensor([f["task"] for f in features])
        return batch


# --- the loss ------------------------------------------------------------------------------------

def task_token_counts(batch: dict) -> torch.Tensor:
    """[code, plan] response tokens of a batch, counted as the core counts them (labels[:, 1:])."""
    predicted = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1)
    is_plan = batch["task"].to(predicted.device) == PLAN
    return torch.stack([predicted[~is_plan].sum(), predicted[is_plan].sum()])


class TwoTaskTrainer(StageTrainer):
    """The stage trainer that also counts each task's response tokens over the accumulation window
    (and all processes) and hands the counts to every micro-batch of that window."""

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if batches:
            counts = torch.stack([task_token_counts(b) for b in batches]).sum(0).to(device)
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                counts = self.accelerator.gather(counts).reshape(-1, 2).sum(0)
            for batch in batches:
                batch["window_tokens"] = counts
        return batches, num_items


def two_task_loss(model, batch: dict, *, lambda_plan: float, chunk_size: int = 1024) -> dict:
    """(1 - lambda) * L_code + lambda * L_plan, scaled by N for the core (see the module docstring).

    Parts `code` and `plan` come scaled the same way, so the core logs them as L_code and L_plan."""
    hidden, targets = response_states(model, batch)
    labels = batch["labels"][:, 1:]
    is_plan = (batch["task"].to(labels.device)[:, None] == PLAN).expand_as(labels)[labels != IGNORE_INDEX]
    logits = output_logits(model)
    code_ce, plan_ce = chunked_sums(lambda h, y, p: (cross_entropy_sum(logits(h[~p]), y[~p]),
                                                     cross_entropy_sum(logits(h[p]), y[p])),
                                    hidden, targets, is_plan, chunk_size=chunk_size)
    window = batch.get("window_tokens")
    n_code, n_plan = (window.tolist() if window is not None else [int((~is_plan).sum()), int(is_plan.sum())])
    total = n_code + n_plan
    code = total * code_ce / n_code if n_code else code_ce * 0
    plan = total * plan_ce / n_plan if n_plan else plan_ce * 0
    return {"loss": (1 - lambda_plan) * code + lambda_plan * plan, "tokens": targets.numel(), "code": code,
            "plan": plan}
