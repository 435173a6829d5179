"""Plan distillation: teacher plans (filters, verification in the sandbox, resume) and the two-task loss."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from codelift.config import PlanConfig, PlanGenerateConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_jsonl
from codelift.models.load import load_tokenizer
from codelift.plans.teacher import check_plan, copied_share, generate_plans, judge_codes, plan_steps, read_plans
from codelift.train.core import training_arguments
from codelift.train.plan_train import CODE, PLAN, TaskCollator, TwoTaskTrainer, plan_examples, train_plan, two_task_loss

GOOD_PLAN = ("Here is the plan:\n1. Read the list of numbers.\n2. Keep a running total,\n   starting from zero.\n"
             "3. Return the total.\n\nThat is all.")


@pytest.fixture(scope="module")
def mbpp_tasks(data_dir):
    return load_tasks("mbpp", "train", data_dir=data_dir)[:8]


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory, mbpp_tasks) -> Path:
    path = tmp_path_factory.mktemp("plan-data") / "train.jsonl"
    write_jsonl(path, (t.to_dict() for t in mbpp_tasks))
    return path


def test_plan_steps_keep_numbered_steps_with_their_continuations_and_drop_prose():
    assert plan_steps(GOOD_PLAN) == ["Read the list of numbers.", "Keep a running total, starting from zero.",
                                     "Return the total."]
    assert plan_steps("Step 1: parse.\nStep 2) loop.") == ["parse.", "loop."]


def test_each_filter_drops_for_its_reason():
    code = "def total(numbers):\n    result = sum(x for x in numbers if x > 0)\n    return result\n"
    cfg = PlanGenerateConfig()
    assert check_plan("  \n", code, cfg) == ("dropped: empty", "")
    assert check_plan("Just sum the numbers and return them.", code, cfg) == ("dropped: not a numbered list", "")
    copy = "1. def total(numbers):\n2. result = sum(x for x in numbers if x > 0)\n3. return result"
    assert copied_share(copy, code) == 1.0
    assert check_plan(copy, code, cfg)[0] == "dropped: copy of the code"
    reason, plan = check_plan(GOOD_PLAN, code, cfg)
    assert reason is None and plan == ("1. Read the list of numbers.\n2. Keep a running total, starting from zero.\n"
                                       "3. Return the total.")
    assert copied_share(plan, code) == 0.0


def test_verification_keeps_a_plan_only_when_its_code_passes_the_tests_in_the_sandbox(mbpp_tasks):
    first, second = mbpp_tasks[:2]
    pending = [(first, {"plan": "1. a\n2. b"}), (second, {"plan": "1. c\n2. d"})]
    judge_codes(pending, [first.solution, "def wrong(*args):\n    return None\n"])
    assert pending[0][1]["reason"] == "kept: verified" and pending[0][1]["verification"] == "passed"
    assert pending[1][1]["reason"] == "dropped: failed verification"
    assert pending[1][1]["verification"].startswith(("error", "failed"))


def test_generate_plans_counts_every_answer_resumes_and_refuses_other_settings(tiny_model_dir, tasks_file, tmp_path):
    cfg = PlanGenerateConfig(plans_per_task=2, max_plan_tokens=12, max_code_tokens=12, limit=3)
    out = tmp_path / "plans.jsonl"
    report = generate_plans(str(tiny_model_dir), str(tasks_file), out, cfg, generator_options={"progress": False})
    assert report["tasks"] == 3 and report["answers"] == 6 == sum(report["counts"].values())
    log = out.with_name("plans.jsonl.log").read_text().splitlines()
    assert len(log) == 1 + 3 and json.loads(log[0])["settings"]["prompt_version"] == "plan-v1"
    assert all(len(json.loads(line)["plans"]) == 2 for line in log[1:])
    assert len(out.read_text().splitlines()) == report["kept"]

    report = generate_plans(str(tiny_model_dir), str(tasks_file), out, cfg.model_copy(update={"limit": 5}),
                            generator_options={"progress": False})
    again = out.with_name("plans.jsonl.log").read_text().splitlines()
    assert report["tasks"] == 5 and again[:4] == log and len(again) == 1 + 5  # the first 3 were not asked again
    with pytest.raises(CodeliftError, match="seed"):
        generate_plans(str(tiny_model_dir), str(tasks_file), out, cfg.model_copy(update={"seed": 7}))


def test_forward_plans_are_asked_from_the_problem_alone_and_logged_as_such(tiny_model_dir, tasks_file, mbpp_tasks,
                                                                          tmp_path):
    """CodePLAN's baseline: the teacher never sees the reference; a log of backward plans is not resumed
    as forward ones."""
    from codelift.prompts import plan_prompt

    task = mbpp_tasks[0]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    backward, forward = (plan_prompt(task, tokenizer, direction) for direction in ("backward", "forward"))
    assert task.solution.strip() in backward and task.solution.strip() not in forward
    assert task.instruction.strip() in forward and "Before any code is written" in forward
    cfg = PlanGenerateConfig(max_plan_tokens=8, max_code_tokens=8, limit=2, verify=False)
    out = tmp_path / "plans.jsonl"
    report = generate_plans(str(tiny_model_dir), str(tasks_file), out, cfg.model_copy(update={"direction": "forward"}),
                            generator_options={"progress": False})
    assert report["settings"]["prompt_version"] == "forward-plan-v1" and "direction" not in report["settings"]
    with pytest.raises(CodeliftError, match="prompt_version"):
        generate_plans(str(tiny_model_dir), str(tasks_file), out, cfg, generator_options={"progress": False})


def test_read_plans_names_the_bad_line(tmp_path):
    path = tmp_path / "plans.jsonl"
    path.write_text(json.dumps({"task_id": "a", "plan": "1. x\n2. y"}) + "\n" + json.dumps({"task_id": "b"}) + "\n")
    with pytest.raises(CodeliftError, match="line 2"):
        read_plans(path)


# --- training ------------------------------------------------------------------------------------

def _plans(tasks):
    return {t.task_id: [f"1. Read the problem {i}.\n2. Write `{t.entry_point}`.\n3. Return the answer."]
            for i, t in enumerate(tasks[:6])}


def test_two_task_loss_is_each_task_normalised_by_its_own_tokens_over_the_window(tiny_model_dir, mbpp_tasks,
                                                                               tmp_path):
    """Two micro-batches with different task mixes form one window; the summed step loss and its
    gradients must equal (1 - lambda) * CE_code / N_code + lambda * CE_plan / N_plan computed by hand
    on full float64 logits of the whole window."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    cfg = PlanConfig(method="full", learning_rate=1e-3, max_length=96, prompt_format="instruct", batch_size=4, grad_accum=2, bf16=False,
                     lambda_plan=0.3)
    examples = plan_examples(mbpp_tasks, _plans(mbpp_tasks), tokenizer, cfg)
    code_rows = [r for r in examples if r["task"] == CODE][:4]
    plan_rows = [r for r in examples if r["task"] == PLAN][:4]
    collate = TaskCollator(tokenizer)
    micro = [collate(code_rows[:3] + plan_rows[:1]), collate(code_rows[3:] + plan_rows[1:])]

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    args = training_arguments(cfg, tmp_path / "run", 8, 1, resuming=False)
    trainer = TwoTaskTrainer(model=model, args=args, train_dataset=examples, eval_dataset=examples,
                             data_collator=collate, token_loss=partial(two_task_loss, lambda_plan=0.3))
    window, count = trainer.get_batch_samples(iter(micro), 2, torch.device("cpu"))
    total = sum(trainer.training_step(model, b, count) for b in window)
    got = [p.grad.clone() for p in model.parameters()]

    reference = LlamaForCausalLM.from_pretrained(tiny_model_dir).double()
    sums = {CODE: 0.0, PLAN: 0.0}
    counts = {CODE: 0, PLAN: 0}
    for batch in micro:
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        for row, task in enumerate(batch["task"].tolist()):
            mask = labels[row] != -100
            sums[task] = sums[task] + torch.nn.functional.cross_entropy(logits[row][mask], labels[row][mask],
                                                                        reduction="sum")
            counts[task] += int(mask.sum())
    assert counts[CODE] > 0 and counts[PLAN] > 0 and count == counts[CODE] + counts[PLAN]
    expected = 0.7 * sums[CODE] / counts[CODE] + 0.3 * sums[PLAN] / counts[PLAN]
    torch.testing.assert_close(total.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    expected.backward()
    for a, b in zip(got, reference.parameters()):
        torch.testing.assert_close(a.double(), b.grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("fmt, user, answer", [("chat", "<|im_start|>user\n", "<|im_start|>assistant\n"),
                                                ("instruct", "### Instruction:\n", "### Response:\n")])
def test_plan_examples_mark_each_task_and_condition_code_on_plans(tiny_model_dir, mbpp_tasks, fmt, user, answer):
    """The task marker opens the user turn (or instruction); the plan is the answer, in the student's format."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plans = _plans(mbpp_tasks)
    rows = plan_examples(mbpp_tasks, plans, tokenizer, PlanConfig(max_length=512, prompt_format=fmt))
    assert rows["task"].count(PLAN) == 6 and rows["task"].count(CODE) == 8 + 6  # "both": with and without
    texts = [tokenizer.decode(r["input_ids"]) for r in rows]
    assert sum(f"{user}[GEN_PLAN]" in t for t in texts) == 6 and sum(f"{user}[GEN_CODE]" in t for t in texts) == 14
    assert sum("Plan:\n1. Read the problem" in t for t in texts) == 6  # code prompts given a plan
    assert sum(f"{answer}1. Read the problem" in t for t in texts) == 6  # the plan task's answers
    only = plan_examples(mbpp_tasks, plans, tokenizer, PlanConfig(max_length=512, code_with_plan="none"))
    assert only["task"].count(CODE) == 8
    twice = plan_examples(mbpp_tasks * 2, plans, tokenizer, PlanConfig(max_length=512, code_with_plan="none"))
    assert twice["task"].count(CODE) == 16 and twice["task"].count(PLAN) == 6  # two answers a task, its plans once


def test_plan_train_runs_on_the_core_and_logs_both_losses(tiny_model_dir, tasks_file, mbpp_tasks, tmp_path):
    plans_file = tmp_path / "plans.jsonl"
    write_jsonl(plans_file, ({"task_id": k, "plan": v[0]} for k, v in _plans(mbpp_tasks).items()))
    cfg = PlanConfig(max_steps=2, batch_size=4, max_length=96, prompt_format="instruct", eval_every_epochs=1.0, eval_before_training=False,
                     bf16=False)
    manifest = train_plan(str(tiny_model_dir), str(tasks_file), str(plans_file), tmp_path / "run", cfg)
    assert manifest["stage"] == "plan" and manifest["steps"] == 2 and manifest["tasks_with_plans"] == 6
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("code_loss" in row and "plan_loss" in row for row in logged)
    assert (tmp_path / "run" / "adapter").is_dir() and (tmp_path / "run" / "run.json").is_file()
    with pytest.raises(CodeliftError, match="none of its plans"):
        other = tmp_path / "other.jsonl"
        write_jsonl(other, [{"task_id": "nope", "plan": "1. a\n2. b"}])
        train_plan(str(tiny_model_dir), str(tasks_file), str(other), tmp_path / "run2", cfg)
