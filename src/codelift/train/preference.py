"""`codelift prefer`: preference optimisation on execution feedback.

Training on verified answers teaches a model what passes; it never shows it what fails. Here the
model itself answers every training task K times, the sandbox runs each answer on the task's
tests, and every task with both outcomes gives pairs (an answer that passed, one that failed). The
model then learns to raise the first over the second relative to itself before training: DPO
(Rafailov et al. 2023) with the chosen answer's per-token NLL added (RPO, Pang et al. 2024), which
keeps DPO from lowering the likelihood of both answers at once. Pairs come from the model's own
samples (on-policy), so what it learns is which of its own habits fail, not a new style.

The recipe: sample and judge (the answers log resumes like the teacher's in sequence KD) -> pairs,
written to `preference_pairs.jsonl` -> encode both answers of each pair in the model's own prompt
format -> the log-probabilities of both under the model before training (the reference: a LoRA
adapter starts as the identity), once, kept in `reference_log_probs.json` -> fit on the training
core with the DPO + NLL loss per pair -> the run manifest with the pair yield.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import track
from transformers import DataCollatorForSeq2Seq, set_seed

from codelift.config import PreferenceConfig
from codelift.data import Task, load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_json, write_jsonl
from codelift.models.adapters import load_for_training
from codelift.models.load import load_tokenizer, prepare_model
from codelift.prompts import task_training_example
from codelift.train.core import StageTrainer, fit, split_examples, use_bf16, with_prompt_format
from codelift.train.data import IGNORE_INDEX, encode_example
from codelift.train.losses import sequence_log_probs
from codelift.train.sequence_kd import FAILED, PASSED, judge_answers, sample_answers


def train_preference(model: str, data: str, out: Path, cfg: PreferenceConfig, *, merge: bool = False) -> dict:
    """Preference-train `model` on pairs of its own passing and failing answers to the tasks in `data`."""
    cfg = cfg.resolved()
    set_seed(cfg.seed)
    model_path = prepare_model(model)
    tokenizer = load_tokenizer(model_path)
    cfg = with_prompt_format(cfg, tokenizer)
    tasks = load_tasks(data)
    out.mkdir(parents=True, exist_ok=True)
    answers = sample_answers(model_path, tasks, out / "answers.jsonl", cfg, role="student")
    outcomes = judge_answers(tasks, answers)
    pairs = preference_pairs(tasks, outcomes, cfg.pairs_per_task)
    report = pair_yield(tasks, outcomes, pairs)
    write_json(out / "preference_yield.json", report)
    if not pairs:
        raise CodeliftError(f"{out / 'preference_yield.json'}: no task has both a passing and a failing answer "
                            f"among {cfg.samples_per_task} samples; sample more per task (--samples-per-task) "
                            f"or at a higher --sample-temperature.")
    write_jsonl(out / "preference_pairs.jsonl", pairs)

    examples = pair_examples(tasks, pairs, tokenizer, cfg)
    train_set, val_set = split_examples(examples, len(tasks), None, cfg, data)
    lm = load_for_training(model_path, cfg)
    collator = PairCollator(tokenizer)
    reference = reference_log_probs(lm, examples, collator, cfg, out / "reference_log_probs.json")
    train_set, val_set = (with_reference(s, reference) for s in (train_set, val_set))
    trainer, manifest = fit("prefer", lm, tokenizer, train_set, val_set, out, cfg,
                            token_loss=partial(preference_loss, beta=cfg.beta, nll_weight=cfg.nll_weight,
                                               chunk_size=cfg.loss_chunk_size),
                            collator=collator, merge_base=model_path if merge else None,
                            title=f"DPO (beta={cfg.beta}, NLL x{cfg.nll_weight}) on {Path(data).name}",
                            trainer_class=PairTrainer)
    if not trainer.is_world_process_zero():
        return {}
    manifest |= {"model": model, "data": data, "preference_yield": report}
    write_json(out / "run.json", manifest)
    return manifest


# --- pairs --------------------------------------------------------------------------------------

def preference_pairs(tasks: list[Task], outcomes: list[dict], pairs_per_task: int) -> list[dict]:
    """Up to `pairs_per_task` pairs per task of a distinct passing and a distinct failing answer,
    each answer used as evenly as the counts allow (in sampling order, so a rerun pairs alike)."""
    passed, failed = defaultdict(list), defaultdict(list)
    for row in outcomes:
        if row["outcome"] == PASSED:
            passed[row["task_id"]].append(row["code"])
        elif row["outcome"] == FAILED:
            failed[row["task_id"]].append(row["code"])
    pairs = []
    for task in tasks:
        good, bad = passed[task.task_id], failed[task.task_id]
        for i in range(min(pairs_per_task, max(len(good), len(bad))) if good and bad else 0):
            pairs.append({"task_id": task.task_id, "chosen": good[i % len(good)], "rejected": bad[i % len(bad)]})
    return pairs


def pair_yield(tasks: list[Task], outcomes: list[dict], pairs: list[dict]) -> dict:
    by_task = defaultdict(set)
    for row in outcomes:
        by_task[row["task_id"]].add(row["outcome"])
    both = sum({PASSED, FAILED} <= seen for seen in by_task.values())
    return {"tasks": len(tasks), "answers": len(outcomes),
            "passed": sum(r["outcome"] == PASSED for r in outcomes),
            "failed": sum(r["outcome"] == FAILED for r in outcomes),
            "tasks_with_both": both, "pairs": len(pairs)}


def pair_examples(tasks: list[Task], pairs: list[dict], tokenizer, cfg: PreferenceConfig):
    """A dataset of encoded pairs, both answers prompted as evaluation prompts the task; `example`
    is the task's index (so a task's pairs stay on one side of the validation split), `row` the pair's."""
    from datasets import Dataset

    index = {t.task_id: i for i, t in enumerate(tasks)}
    rows = []
    for pair in pairs:
        task = tasks[index[pair["task_id"]]]
        row = {"example": index[pair["task_id"]]}
        for side in ("chosen", "rejected"):
            prompt, target, add_eos = task_training_example(task, cfg.prompt_format, tokenizer, answer=pair[side])
            encoded = encode_example(tokenizer, prompt, target, cfg.max_length, add_eos=add_eos)
            row |= {f"{side}_input_ids": encoded["input_ids"], f"{side}_labels": encoded["labels"]}
        if all(any(y != IGNORE_INDEX for y in row[f"{s}_labels"]) for s in ("chosen", "rejected")):
            rows.append(row | {"row": len(rows)})
    return Dataset.from_list(rows)


class PairCollator:
    """A batch of B pairs as 2B padded rows, the chosen answers first: one forward pass for both."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict:
        rows = [{"input_ids": f[f"{side}_input_ids"], "attention_mask": [1] * len(f[f"{side}_input_ids"]),
                 "labels": f[f"{side}_labels"]} for side in ("chosen", "rejected") for f in features]
        batch = self.pad(rows)
        if "reference" in features[0]:
            batch["reference_log_probs"] = torch.tensor([f["reference"][j] for j in (0, 1) for f in features])
        return batch


# --- the loss -----------------------------------------------------------------------------------

def preference_loss(model, batch: dict, *, beta: float, nll_weight: float, chunk_size: int = 256) -> dict:
    """Summed over the batch's pairs: -log sigmoid(beta * (chosen margin - rejected margin)), each
    margin the answer's log-probability now less its reference one, plus `nll_weight` times the
    chosen answer's mean NLL per token. `reward_accuracy` counts pairs ranked right."""
    log_probs, tokens = sequence_log_probs(model, batch, chunk_size)
    pairs = log_probs.shape[0] // 2
    gain = log_probs - batch["reference_log_probs"].to(log_probs)
    margin = beta * (gain[:pairs] - gain[pairs:])
    dpo = -F.logsigmoid(margin).sum()
    nll = (-log_probs[:pairs] / tokens[:pairs]).sum()
    return {"loss": dpo + nll_weight * nll, "tokens": pairs, "dpo": dpo, "nll": nll,
            "reward_accuracy": (margin > 0).sum().float()}


class PairTrainer(StageTrainer):
    """The stage trainer with a loss per pair: each micro-batch's mean, which the Trainer divides by
    the accumulation steps (no response-token count applies to a pair)."""

    length_column = "chosen_input_ids"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch=None)


@torch.no_grad()
def reference_log_probs(lm, examples, collator: PairCollator, cfg: PreferenceConfig, path: Path) -> list[list[float]]:
    """[chosen, rejected] log-probability of every pair under `lm` as it is before training, in the
    precision training computes in; measured once and read back when the stage resumes."""
    if path.is_file():
        return json.loads(path.read_text())
    was_training = lm.training
    lm.eval()
    values = []
    rows = list(examples)
    for start in track(range(0, len(rows), cfg.batch_size), description="reference log-probabilities"):
        batch = collator(rows[start:start + cfg.batch_size])
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.bf16)):
            log_probs, _ = sequence_log_probs(lm, batch, cfg.loss_chunk_size)
        half = log_probs.shape[0] // 2
        values += [[c, r] for c, r in zip(log_probs[:half].tolist(), log_probs[half:].tolist())]
    lm.train(was_training)
    write_json(path, values)
    return values


def with_reference(subset, reference: list[list[float]]):
    """`subset` of the pair dataset with each row's reference log-probabilities (looked up by `row`)."""
    return subset.map(lambda row: {"reference": reference[row["row"]]})
