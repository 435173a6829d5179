"""Preference optimisation on execution feedback: pairs from judged answers, the DPO + NLL loss
against a float64 computation from full logits, and the stage end to end on a tiny model."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from codelift.config import PreferenceConfig
from codelift.data import Task, load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_jsonl
from codelift.train.losses import sequence_log_probs
from codelift.train.preference import PairCollator, preference_loss, preference_pairs, train_preference


def test_pairs_take_a_passing_and_a_failing_answer_of_one_task_spread_evenly():
    tasks = [Task("t/a", "A.", "", tests=["assert 1"]), Task("t/b", "B.", "", tests=["assert 1"]),
             Task("t/c", "C.", "", tests=["assert 1"])]
    rows = [("t/a", "kept: passed the tests", "a1"), ("t/a", "dropped: failed the tests", "a2"),
            ("t/a", "dropped: failed the tests", "a3"), ("t/a", "dropped: failed the tests", "a4"),
            ("t/a", "dropped: duplicate", "a2"), ("t/b", "kept: passed the tests", "b1"),  # b: nothing failed
            ("t/c", "dropped: failed the tests", "c1"), ("t/c", "dropped: no Python code", "")]  # c: nothing passed
    outcomes = [{"task_id": t, "outcome": o, "code": c} for t, o, c in rows]
    assert preference_pairs(tasks, outcomes, 2) == [{"task_id": "t/a", "chosen": "a1", "rejected": "a2"},
                                                    {"task_id": "t/a", "chosen": "a1", "rejected": "a3"}]
    assert [p["rejected"] for p in preference_pairs(tasks, outcomes, 5)] == ["a2", "a3", "a4"]


def _np_row_log_probs(logits: np.ndarray, input_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the float64 sum of log softmax(logits)[t, labels[t + 1]] over labelled positions."""
    shifted = logits[:, :-1].astype(np.float64)
    log_softmax = shifted - np.log(np.exp(shifted - shifted.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - shifted.max(-1, keepdims=True)
    targets, mask = labels[:, 1:], labels[:, 1:] != -100
    picked = np.take_along_axis(log_softmax, np.where(mask, targets, 0)[..., None], -1)[..., 0]
    return (picked * mask).sum(1), mask.sum(1)


def test_sequence_scores_and_the_pair_loss_match_a_float64_computation_from_full_logits(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    features = []
    for prompt, chosen, rejected in [("Add.", "return a + b", "return a - b"),
                                     ("Sort the list of numbers.", "return sorted(xs)", "xs.sort()\n    return xs, 1")]:
        p = tokenizer(prompt)["input_ids"]
        row = {}
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            ids = tokenizer(text)["input_ids"]
            row |= {f"{side}_input_ids": p + ids, f"{side}_labels": [-100] * len(p) + ids}
        features.append(row | {"reference": [-30.0, -35.0]})
    batch = PairCollator(tokenizer)(features)
    assert batch["input_ids"].shape[0] == 4 and batch["reference_log_probs"].tolist() == [-30, -30, -35, -35]

    with torch.no_grad():
        ours, tokens = sequence_log_probs(model, batch, chunk_size=3)  # chunks cross row boundaries
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = preference_loss(model, batch, beta=0.3, nll_weight=0.7, chunk_size=5)
    expected, counts = _np_row_log_probs(full.numpy(), batch["input_ids"].numpy(), batch["labels"].numpy())
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    assert tokens.tolist() == counts.tolist()

    gain = expected - np.array([-30, -30, -35, -35])
    margin = 0.3 * (gain[:2] - gain[2:])
    dpo = np.log1p(np.exp(-margin)).sum()
    nll = (-expected[:2] / counts[:2]).sum()
    np.testing.assert_allclose(loss["dpo"].item(), dpo, rtol=1e-5)
    np.testing.assert_allclose(loss["nll"].item(), nll, rtol=1e-5)
    np.testing.assert_allclose(loss["loss"].item(), dpo + 0.7 * nll, rtol=1e-5)
    assert loss["tokens"] == 2 and loss["reward_accuracy"].item() == (margin > 0).sum()


@pytest.fixture
def judged_tasks(tmp_path, data_dir) -> Path:
    path = tmp_path / "train.jsonl"
    write_jsonl(path, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:20]))
    return path


def _write_answers(log: Path, model: Path, tasks: list[Task], cfg: PreferenceConfig, answers) -> None:
    """The answers log as a finished sampling run leaves it (the stage resumes it, generating nothing)."""
    settings = {"teacher": str(model), "samples_per_task": cfg.samples_per_task, "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.sample_temperature, "seed": cfg.seed}
    log.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(log, [{"settings": settings}] + [{"task_id": t.task_id, "answers": a} for t, a in zip(tasks, answers)])


def test_the_stage_raises_the_passing_answers_over_the_failing_ones(tiny_model_dir, judged_tasks, tmp_path):
    """Each task's reference passes its tests and a broken copy of it fails; after training the model
    ranks the passing answer higher, relative to the reference, for most training pairs."""
    tasks = load_tasks(str(judged_tasks))
    cfg = PreferenceConfig(samples_per_task=3, max_steps=12, batch_size=2, grad_accum=2, learning_rate=1e-2, max_length=256,
                           beta=2.0, nll_weight=0.0, eval_every_epochs=1.0, eval_before_training=False, bf16=False,
                           pairs_per_task=2)
    out = tmp_path / "prefer"
    broken = [t.solution.replace("return", "return None and", 1) for t in tasks]
    answers = [[f"```python\n{t.solution}```", f"```python\n{b}```", "no code"] for t, b in zip(tasks, broken)]
    _write_answers(out / "answers.jsonl", tiny_model_dir, tasks, cfg, answers)
    manifest = train_preference(str(tiny_model_dir), str(judged_tasks), out, cfg)

    pairs = [json.loads(line) for line in (out / "preference_pairs.jsonl").read_text().splitlines()]
    report = manifest["preference_yield"]
    assert report["answers"] == 60 and report["pairs"] == len(pairs) == report["tasks_with_both"]
    assert report["passed"] >= report["tasks_with_both"] >= 15  # a broken copy may still pass, or equal its source
    assert all("None and" in p["rejected"] and "None and" not in p["chosen"] for p in pairs)
    reference = json.loads((out / "reference_log_probs.json").read_text())
    assert len(reference) == len(pairs) and all(c < 0 and r < 0 for c, r in reference)
    assert manifest["stage"] == "prefer" and manifest["steps"] == 12 and (out / "adapter").is_dir()
    assert manifest["config"]["prompt_format"] == "chat"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accuracy = [h["reward_accuracy_loss"] for h in history if "reward_accuracy_loss" in h]
    dpo = [h["dpo_loss"] for h in history if "dpo_loss" in h]
    # margin 0 at the start; parts are per pair over the accumulation window, like the loss
    assert len(dpo) == 12 and dpo[0] == pytest.approx(math.log(2), abs=0.02)
    assert np.mean(dpo[-3:]) < 0.6 and np.mean(accuracy[-3:]) > 0.6


def test_a_run_without_pairs_stops_naming_the_yield_file(tiny_model_dir, judged_tasks, tmp_path):
    tasks = load_tasks(str(judged_tasks))
    cfg = PreferenceConfig(samples_per_task=2, max_steps=1, batch_size=2, bf16=False)
    out = tmp_path / "none"
    _write_answers(out / "answers.jsonl", tiny_model_dir, tasks, cfg, [[f"```python\n{t.solution}```"] * 2 for t in tasks])
    with pytest.raises(CodeliftError, match=r"preference_yield.json: no task has both a passing and a failing answer"):
        train_preference(str(tiny_model_dir), str(judged_tasks), out, cfg)
    assert json.loads((out / "preference_yield.json").read_text())["passed"] == 20
