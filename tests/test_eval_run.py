import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from codelift.cli import app
from codelift.config import EvalConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.evaluate.kl import kl_to_teacher
from codelift.evaluate.run import evaluate_model
from codelift.models import load_model


def lines(path):
    return path.read_text().splitlines()


def full_logits_kl(student, teacher, tokenizer, tasks, temperature):
    """The reference: whole [seq, vocab] logits of both models, torch's kl_div, masked to the answer."""
    from codelift.prompts import default_format
    from codelift.train.data import encode_task

    total, count = 0.0, 0
    for task in tasks:
        example = encode_task(task, tokenizer, default_format(tokenizer), 512)
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor(example["labels"])[1:]
        with torch.no_grad():
            t = F.log_softmax(teacher(input_ids=ids).logits[0, :-1, :len(tokenizer)] / temperature, -1)
            s = F.log_softmax(student(input_ids=ids).logits[0, :-1, :len(tokenizer)] / temperature, -1)
        per_position = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
        total, count = total + per_position[labels != -100].sum().item(), count + int((labels != -100).sum())
    return total / count


def test_kl_to_teacher_is_zero_for_itself_and_positive_for_a_pruned_copy(tiny_model_dir, tmp_path):
    from codelift.models import prune_model

    tasks = load_tasks("humaneval")[:2]
    model, tokenizer = load_model(str(tiny_model_dir))
    assert kl_to_teacher(model, model, tokenizer, tasks, max_length=512) == pytest.approx(0.0, abs=1e-6)
    prune_model(str(tiny_model_dir), 2, tmp_path / "student")
    student, _ = load_model(str(tmp_path / "student"))
    kl = kl_to_teacher(student, model, tokenizer, tasks, max_length=512, chunk_size=7)  # chunks cut mid-answer
    assert kl > 1e-4
    assert kl == pytest.approx(full_logits_kl(student, model, tokenizer, tasks, 1.0), rel=1e-4)
    assert kl_to_teacher(student, model, tokenizer, tasks, temperature=2.0) == pytest.approx(
        full_logits_kl(student, model, tokenizer, tasks, 2.0), rel=1e-4)
    with pytest.raises(CodeliftError, match="no reference-solution token fits"):
        kl_to_teacher(student, model, tokenizer, tasks, max_length=16)


def config(model, **kw):
    return EvalConfig(model=str(model), benchmark="humaneval", limit=3, max_new_tokens=8, codebleu=False, **kw)


def test_eval_writes_samples_and_resumes_without_redoing_work(tiny_model_dir, tmp_path):
    summary = evaluate_model(config(tiny_model_dir), tmp_path)
    rows = [json.loads(line) for line in lines(tmp_path / "samples.jsonl")]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r["verdict"] in ("passed", "failed", "error", "timeout") and "generation_seconds" in r for r in rows)
    assert summary["tasks"] == 3 and summary["pass@1"] == pytest.approx(sum(r["passed"] for r in rows) / 3)

    # A kill during generation leaves one whole line and a cut one: only the rest is generated.
    generated = lines(tmp_path / "generations.jsonl")
    (tmp_path / "generations.jsonl").write_text(generated[0] + "\n" + generated[1][:20])
    judged = lines(tmp_path / "judged.jsonl")
    (tmp_path / "judged.jsonl").write_text(judged[0] + "\n")
    evaluate_model(config(tiny_model_dir), tmp_path)
    assert lines(tmp_path / "generations.jsonl")[0] == generated[0]
    assert len(lines(tmp_path / "generations.jsonl")) == 3 and len(lines(tmp_path / "judged.jsonl")) == 3
    again = [json.loads(line) for line in lines(tmp_path / "samples.jsonl")]
    assert [r["completion"] for r in again] == [r["completion"] for r in rows]  # greedy: same text again

    with pytest.raises(CodeliftError, match="other settings \\(temperature differ\\)"):
        evaluate_model(config(tiny_model_dir, temperature=0.5), tmp_path)


def test_eval_scores_samples_from_any_tool(tmp_path):
    tasks = load_tasks("humaneval")[:3]
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": t.task_id, "completion": t.solution[len(t.prompt_prefix):]} for t in tasks]
    rows.append({"task_id": tasks[0].task_id, "completion": "    return not True\n"})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["eval", "--benchmark", "humaneval", "--samples", str(samples),
                                      "--out", str(tmp_path / "out"), "--no-codebleu"])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in lines(tmp_path / "out" / "samples.jsonl")]
    assert [r["verdict"] for r in scored] == ["passed", "passed", "passed", "failed"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pass@1"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_candidates_are_sampled_judged_on_the_visible_tests_and_one_chosen_per_problem(tiny_model_dir, tmp_path, data_dir):
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark="mbpp", split="validation", limit=3, max_new_tokens=8,
                     candidates=3, temperature=0.8, codebleu=False, k=[1, 3])
    summary = evaluate_model(cfg, tmp_path / "select", data_dir=data_dir)
    samples = [json.loads(line) for line in lines(tmp_path / "select" / "samples.jsonl")]
    assert len(samples) == 9 and [s["sample"] for s in samples] == [0, 1, 2] * 3
    assert [sum(s["selected"] for s in samples[i:i + 3]) for i in (0, 3, 6)] == [1, 1, 1]
    assert all(s["visible_verdict"] is not None and s["prompt_format"] == "chat" for s in samples)
    assert summary["sample_budget"] == "3 samples" and "pass@1" not in summary
    assert summary["tasks"] == 3 and 0 <= summary["filtered_pass@1"] <= 1 and "candidate_pass@3" in summary
    assert summary["prompt_format"] == "chat"
    for bad, message in (({"temperature": 0.0}, "greedy samples are identical"), ({"candidates": 1}, "expected 0")):
        with pytest.raises(CodeliftError, match=message):
            evaluate_model(cfg.model_copy(update=bad), tmp_path / f"bad-{len(message)}", data_dir=data_dir)


WRONG_ADD, RIGHT_ADD = "def add(a, b):\n    return 0\n", "def add(a, b):\n    return a + b\n"


def write_add_task(path, visible: str = "assert add(0, 0) == 0") -> None:
    task = {"task_id": "t/0", "instruction": "Add two numbers.", "solution": RIGHT_ADD,
            "tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], "visible_tests": [visible]}
    path.write_text(json.dumps(task) + "\n")


def write_generations(out, programs: list[str]) -> None:
    """A generation log as evaluation writes it, one program per sample of task t/0."""
    out.mkdir(exist_ok=True)
    (out / "generations.jsonl").write_text("".join(
        json.dumps({"task_id": "t/0", "sample": i, "raw": code, "completion": code, "generation_seconds": 0.1,
                    "new_tokens": 9, "mean_logprob": -0.1 * (i + 1), "prompt_format": "chat"}) + "\n"
        for i, code in enumerate(programs)))


def test_selection_is_made_when_scoring_from_the_logged_candidates(tmp_path):
    """A visible test changed after generation changes the choice on the next scoring, and nothing is
    generated again (no model is loaded: the log holds every candidate)."""
    out = tmp_path / "select"
    write_generations(out, [WRONG_ADD, RIGHT_ADD])
    logged = (out / "generations.jsonl").read_bytes()
    cfg = EvalConfig(model="never-loaded", benchmark=str(tmp_path / "tasks.jsonl"), candidates=2, temperature=0.7,
                     codebleu=False)
    write_add_task(tmp_path / "tasks.jsonl")  # both pass add(0, 0): the first is chosen, the hidden tests reject it
    assert evaluate_model(cfg, out)["filtered_pass@1"] == 0.0
    write_add_task(tmp_path / "tasks.jsonl", "assert add(1, 1) == 2")  # only the right program passes it
    summary = evaluate_model(cfg, out)
    rows = [json.loads(line) for line in lines(out / "samples.jsonl")]
    assert summary["filtered_pass@1"] == 1.0 and [r["selected"] for r in rows] == [False, True]
    assert [r["visible_verdict"] for r in rows] == ["failed", "passed"] and (out / "generations.jsonl").read_bytes() == logged


def test_a_logged_verdict_is_reused_only_for_the_program_it_judged(tmp_path):
    """A sample whose program changed since it was judged (a log regenerated by hand, a repair made
    again) is judged again, never given the old program's verdict."""
    write_add_task(tmp_path / "tasks.jsonl")
    cfg = EvalConfig(model="never-loaded", benchmark=str(tmp_path / "tasks.jsonl"), codebleu=False)
    write_generations(tmp_path / "run", [WRONG_ADD])
    assert evaluate_model(cfg, tmp_path / "run")["pass@1"] == 0.0
    write_generations(tmp_path / "run", [RIGHT_ADD])
    assert evaluate_model(cfg, tmp_path / "run")["pass@1"] == 1.0


def test_chain_of_thought_asks_for_a_plan_then_the_code_in_one_answer(tiny_model_dir, tmp_path):
    """CodePLAN's chain-of-thought baseline: the student's own prompt with the request added, nothing else."""
    from codelift.generate import make_generator
    from codelift.prompts import COT_REQUEST, chain_of_thought_prompt, render_prompt

    task = load_tasks("humaneval")[0]
    generator = make_generator(str(tiny_model_dir), "hf", progress=False)
    sent = []
    real_generate = generator.generate
    generator.generate = lambda prompts, **kw: sent.extend(prompts) or real_generate(prompts, **kw)
    with generator:
        summary = evaluate_model(config(tiny_model_dir, strategy="cot"), tmp_path, generator=generator)
    plain = render_prompt(task, "chat", generator.tokenizer)
    assert sent[0] == chain_of_thought_prompt(task, "chat", generator.tokenizer) != plain
    assert COT_REQUEST in sent[0] and sent[0].replace(f"\n\n{COT_REQUEST}", "") == plain
    assert summary["strategy"] == "cot" and summary["tasks"] == 3 and summary["prompt_format"] == "chat"


def test_beams_are_the_samples_best_first_and_distinct(tiny_model_dir, tmp_path):
    """Beam search as the PEFT study read EM@10 / pass@10: B beams per problem, B samples in the summary."""
    from codelift.generate import make_generator

    with make_generator(str(tiny_model_dir), "hf", progress=False) as generator:
        [beams] = generator.beam_search(["def add(a, b):"], beams=3, max_new_tokens=6)
        [greedy] = generator.generate(["def add(a, b):"], max_new_tokens=6)
    assert len(beams.completions) == 3 == len(set(beams.completions))
    assert beams.mean_logprobs == sorted(beams.mean_logprobs, reverse=True)
    assert beams.completions[0] == greedy.completions[0] or beams.mean_logprobs[0] >= greedy.mean_logprobs[0]
    summary = evaluate_model(config(tiny_model_dir, num_beams=3, k=[1, 3], prompt_format="raw"), tmp_path / "beams")
    assert summary["samples"] == 9 and summary["em@3"] is not None and summary["pass@3"] is not None
    with pytest.raises(CodeliftError, match="expected 2 or more beams"):
        evaluate_model(config(tiny_model_dir, num_beams=3, temperature=0.8), tmp_path / "bad")


def test_an_examples_sweep_runs_one_evaluation_per_count_and_plots_them(tiny_model_dir, data_dir, tmp_path):
    from codelift.rag import build_index

    build_index(load_tasks("mbpp", "prompt", data_dir=data_dir), tmp_path / "index", kind="flat", progress=False)
    result = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--benchmark", "mbpp", "--split", "validation",
                                      "--data-dir", str(data_dir), "--limit", "2", "--max-new-tokens", "4",
                                      "--context", "icl", "--index", str(tmp_path / "index"), "--examples", "0,2",
                                      "--out", str(tmp_path / "sweep"), "--no-codebleu"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["examples"] for r in rows] == [0, 2] and all(0 <= r["pass@1"] <= 1 for r in rows)
    no_context = [json.loads(line) for line in lines(tmp_path / "sweep" / "examples-0" / "samples.jsonl")]
    with_two = [json.loads(line) for line in lines(tmp_path / "sweep" / "examples-2" / "samples.jsonl")]
    assert all(r["context_ids"] == [] for r in no_context) and all(len(r["context_ids"]) == 2 for r in with_two)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
