"""Knowledge distillation on tiny real models: the loss against references, caches, errors, outputs."""

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from codelift.config import DistillConfig, SFTConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_jsonl
from codelift.models.load import load_tokenizer
from codelift.train.core import ExampleCollator, StageTrainer, training_arguments, training_sets
from codelift.train.distill import check_same_vocabulary, train_distill
from codelift.train.losses import cached_kd_loss, logit_kd_loss
from codelift.train.teacher_cache import TeacherCacheCollator, build_teacher_cache, load_teacher_cache

FLOAT32 = DistillConfig(bf16=False, max_length=96, batch_size=4, prompt_format="instruct")  # short prompts: loss math


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("kd-data") / "train.jsonl"
    write_jsonl(path, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:24]))
    return path


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Another tiny model with the same tokenizer: 'the teacher'."""
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-teacher")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(out)
    for f in tiny_model_dir.iterdir():
        if not f.name.startswith(("model", "config")):
            shutil.copy(f, out / f.name)
    return out


def _batch(model_dir, tasks_file, n=4):
    tokenizer = load_tokenizer(str(model_dir))
    train_set, _ = training_sets(str(tasks_file), None, tokenizer, FLOAT32)
    return tokenizer, train_set, ExampleCollator(tokenizer)([train_set[i] for i in range(n)])


def test_online_kd_loss_matches_a_full_logit_float64_reference(tiny_model_dir, teacher_dir, tasks_file):
    tokenizer, _, batch = _batch(tiny_model_dir, tasks_file)
    student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    cfg = FLOAT32.model_copy(update={"temperature": 2.0, "alpha": 0.3, "divergence": "jsd", "beta": 0.4})
    sums = logit_kd_loss(student, batch, teacher=teacher, cfg=cfg, vocab=len(tokenizer))

    with torch.no_grad():  # the plain way: whole [batch, seq, vocab] logits, shifted, masked, in float64
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    p_t, p_s = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    m = 0.4 * p_t + 0.6 * p_s
    kd = (0.4 * (p_t * (p_t / m).log()).sum(-1) + 0.6 * (p_s * (p_s / m).log()).sum(-1))[mask].sum()
    ce = torch.nn.functional.cross_entropy(s[mask], labels[mask], reduction="sum")
    assert sums["tokens"] == mask.sum().item()
    torch.testing.assert_close(sums["kd"].double(), kd, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sums["ce"].double(), ce, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(sums["loss"].double(), 0.3 * 4 * kd + 0.7 * ce, rtol=1e-4, atol=1e-3)


def test_chunked_loss_equals_unchunked_in_value_and_gradients(tiny_model_dir, teacher_dir, tasks_file):
    tokenizer, _, batch = _batch(tiny_model_dir, tasks_file)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    results = []
    for chunk in (7, 100_000):
        student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
        cfg = FLOAT32.model_copy(update={"loss_chunk_size": chunk})
        sums = logit_kd_loss(student, batch, teacher=teacher, cfg=cfg, vocab=len(tokenizer))
        sums["loss"].backward()
        results.append((sums["loss"].detach(), [p.grad.clone() for p in student.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_padded_teacher_vocabulary_gives_the_same_loss(tiny_model_dir, teacher_dir, tasks_file):
    """Qwen pads its embeddings past the tokenizer; padded rows must carry no probability."""
    tokenizer, _, batch = _batch(tiny_model_dir, tasks_file)
    student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    padded = LlamaForCausalLM.from_pretrained(teacher_dir)
    padded.resize_token_embeddings(len(tokenizer) + 64, mean_resizing=False)
    with torch.no_grad():
        padded.get_output_embeddings().weight[len(tokenizer):] = 5.0  # large logits on the padded ids
    plain = logit_kd_loss(student, batch, teacher=teacher, cfg=FLOAT32, vocab=len(tokenizer))
    with_padding = logit_kd_loss(student, batch, teacher=padded, cfg=FLOAT32, vocab=len(tokenizer))
    torch.testing.assert_close(with_padding["loss"], plain["loss"])


def test_one_by_eight_and_eight_by_one_micro_batches_give_the_same_loss_and_gradients(
        tiny_model_dir, teacher_dir, tasks_file, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train_set, val_set = training_sets(str(tasks_file), None, tokenizer, FLOAT32)
    rows = [train_set[i] for i in range(8)]
    collate = ExampleCollator(tokenizer)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    runs = []
    for batch_size, accumulation in ((8, 1), (1, 8)):
        student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
        cfg = FLOAT32.model_copy(update={"batch_size": batch_size, "grad_accum": accumulation, "method": "full",
                                         "learning_rate": 1e-3})
        args = training_arguments(cfg, tmp_path / f"{batch_size}x{accumulation}", 8, 1, resuming=False)
        trainer = StageTrainer(model=student, args=args, train_dataset=train_set, eval_dataset=val_set,
                               data_collator=collate, token_loss=partial(logit_kd_loss, teacher=teacher, cfg=cfg,
                                                                         vocab=len(tokenizer)))
        micro = [collate(rows[i:i + batch_size]) for i in range(0, 8, batch_size)]
        count = trainer._get_num_items_in_batch(micro, torch.device("cpu"))  # the Trainer's own count
        assert count == sum((b["labels"][:, 1:] != -100).sum() for b in micro)
        total = sum(trainer.training_step(student, b, count) for b in micro)
        runs.append((total, [p.grad.clone() for p in student.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cache_with_k_equal_to_vocabulary_equals_the_online_loss(tiny_model_dir, teacher_dir, tmp_path, data_dir):
    small = tmp_path / "small.jsonl"
    write_jsonl(small, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:4]))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    manifest = build_teacher_cache(str(teacher_dir), str(small), tmp_path / "cache", top_k=len(tokenizer),
                                   max_length=96, prompt_format="instruct", log_prob_dtype="float32", bf16=False)
    assert manifest["complete"] and manifest["dtypes"]["ids"] == "uint16"
    cfg = FLOAT32.model_copy(update={"divergence": "reverse"})
    train_set, val_set = training_sets(str(small), None, tokenizer, cfg)
    cache = load_teacher_cache(tmp_path / "cache", tokenizer, (train_set, val_set))
    rows = [train_set[i] for i in range(len(train_set))]
    student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    online = logit_kd_loss(student, ExampleCollator(tokenizer)(rows), teacher=teacher, cfg=cfg, vocab=len(tokenizer))
    cached = cached_kd_loss(student, TeacherCacheCollator(tokenizer, cache)(rows), cfg=cfg, vocab=len(tokenizer))
    torch.testing.assert_close(cached["kd"], online["kd"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached["loss"], online["loss"], rtol=1e-4, atol=1e-4)


def test_cache_is_top_k_of_the_full_log_softmax_resumes_and_refuses_other_data(
        tiny_model_dir, teacher_dir, tasks_file, tmp_path, data_dir):
    cache_dir = tmp_path / "cache"
    manifest = build_teacher_cache(str(teacher_dir), str(tasks_file), cache_dir, top_k=8, max_length=96, prompt_format="instruct",
                                   shard_examples=10, bf16=False)
    assert manifest["shards"] == -(-manifest["examples"] // 10) >= 2
    assert manifest["bytes_per_token"] < 60  # 8 x (2 + 2) + 4 bytes of data per token, plus headers
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train_set, val_set = training_sets(str(tasks_file), None, tokenizer, FLOAT32)
    cache = load_teacher_cache(cache_dir, tokenizer, (train_set, val_set))
    row = train_set[0]
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        logits = teacher(torch.tensor([row["input_ids"]])).logits[0, :-1]
    positions = [i for i, label in enumerate(row["labels"][1:]) if label != -100]
    full = torch.log_softmax(logits[positions], -1)
    ids, log_probs, tail = cache.rows[row["example"]]
    torch.testing.assert_close(log_probs.float(), full.topk(8).values, rtol=2e-3, atol=2e-3)  # float16 storage
    torch.testing.assert_close(tail.exp(), 1 - full.topk(8).values.exp().sum(-1), rtol=1e-4, atol=1e-5)

    # Resume: a missing shard is rebuilt, the others are left as they were.
    kept = (cache_dir / "shard-00000.safetensors").stat().st_mtime_ns
    (cache_dir / "shard-00001.safetensors").unlink()
    build_teacher_cache(str(teacher_dir), str(tasks_file), cache_dir, top_k=8, max_length=96, prompt_format="instruct", shard_examples=10,
                        bf16=False)
    assert (cache_dir / "shard-00001.safetensors").is_file()
    assert (cache_dir / "shard-00000.safetensors").stat().st_mtime_ns == kept
    with pytest.raises(CodeliftError, match="other settings"):
        build_teacher_cache(str(teacher_dir), str(tasks_file), cache_dir, top_k=4, max_length=96, prompt_format="instruct", bf16=False)

    # One flipped byte in a shard's data is named, never read as a log-probability.
    shard = cache_dir / "shard-00001.safetensors"
    damaged = bytearray(shard.read_bytes())
    damaged[-3] ^= 0x01
    shard.write_bytes(bytes(damaged))
    with pytest.raises(CodeliftError, match=f"{shard}: its bytes do not match the checksum"):
        load_teacher_cache(cache_dir, tokenizer, (train_set, val_set))

    other = tmp_path / "other.jsonl"
    write_jsonl(other, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[30:50]))
    other_train, other_val = training_sets(str(other), None, tokenizer, FLOAT32)
    with pytest.raises(CodeliftError, match="other data"):
        load_teacher_cache(cache_dir, tokenizer, (other_train, other_val))


def _shuffled_tokenizer(source: Path, target: Path) -> Path:
    """The same tokenizer with two token ids swapped: same size, different vocabulary."""
    shutil.copytree(source, target)
    spec = json.loads((target / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["def"], vocab["return"] = vocab["return"], vocab["def"]
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


def test_vocabularies_are_compared_not_their_sizes(tiny_model_dir, tmp_path):
    other = _shuffled_tokenizer(tiny_model_dir, tmp_path / "other")
    a, b = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(other)
    assert len(a) == len(b)
    check_same_vocabulary(a, AutoTokenizer.from_pretrained(tiny_model_dir), "t", "s")
    with pytest.raises(CodeliftError, match=r"49,152 tokens.*49,152 tokens.*--mode sequence"):
        check_same_vocabulary(a, b, "teacher-x", "student-y")


def test_distill_run_writes_outputs_logs_parts_and_measures_heldout_kl(tiny_model_dir, teacher_dir, tasks_file,
                                                                       tmp_path):
    cfg = DistillConfig(max_steps=3, batch_size=4, max_length=96, prompt_format="instruct", eval_every_epochs=0.5, bf16=False)
    manifest = train_distill(str(teacher_dir), str(tiny_model_dir), str(tasks_file), tmp_path / "kd", cfg)
    for name in ("run.json", "metrics.jsonl", "loss.png", "kl.png", "adapter/adapter_model.safetensors"):
        assert (tmp_path / "kd" / name).is_file(), name
    steps = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "loss" in s]
    assert len(logged) == 3 and all("ce_loss" in s and "kd_loss" in s for s in logged)
    for s in logged:  # the logged loss is the objective of its parts
        assert s["loss"] == pytest.approx(0.5 * 4 * s["kd_loss"] + 0.5 * s["ce_loss"], rel=1e-3)
    assert manifest["heldout_kl_before"] > 0 and manifest["heldout_kl_after"] < manifest["heldout_kl_before"]
    assert manifest["heldout_kl_kind"] == "exact" and manifest["steps"] == 3


def test_distill_errors_are_one_clear_sentence(tiny_model_dir, teacher_dir, tasks_file, tmp_path):
    cfg = DistillConfig(max_steps=1)
    with pytest.raises(CodeliftError, match="one of them"):
        train_distill(None, str(tiny_model_dir), str(tasks_file), tmp_path / "x", cfg)
    with pytest.raises(CodeliftError, match="covers --data only"):
        train_distill(None, str(tiny_model_dir), str(tasks_file), tmp_path / "x", cfg,
                      teacher_cache=str(tmp_path), validation=str(tasks_file))
    other = _shuffled_tokenizer(teacher_dir, tmp_path / "other-teacher")
    with pytest.raises(CodeliftError, match="do not share a tokenizer"):
        train_distill(str(other), str(tiny_model_dir), str(tasks_file), tmp_path / "x", cfg)
    sft_run = tmp_path / "sft-run"
    (sft_run / "adapter").mkdir(parents=True)
    with pytest.raises(CodeliftError, match="adapter only"):
        train_distill(str(teacher_dir), str(sft_run), str(tasks_file), tmp_path / "x", cfg)


def test_sft_config_is_a_distill_config_subset():
    """Every SFT option applies to distill: the KD config extends the SFT one."""
    assert set(SFTConfig.model_fields) < set(DistillConfig.model_fields)
    assert DistillConfig().temperature == 2.0 and DistillConfig().alpha == 0.5


def test_student_samples_mask_the_prompt_and_everything_after_eos(tiny_model_dir, tasks_file):
    from codelift.train.on_policy import student_samples

    tokenizer, _, batch = _batch(tiny_model_dir, tasks_file)
    student = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    sampled = student_samples(student, batch, tokenizer, max_new_tokens=12)
    for row in range(len(batch["input_ids"])):
        first = int((batch["labels"][row] != -100).nonzero()[0])
        assert torch.equal(sampled["input_ids"][row, :first], batch["input_ids"][row, :first])  # same prompt
        assert (sampled["labels"][row, :first] == -100).all()
        learned = sampled["labels"][row][sampled["labels"][row] != -100]
        assert 1 <= len(learned) <= 12
        eos = (learned == tokenizer.eos_token_id).nonzero()
        assert len(eos) == 0 or int(eos[0]) == len(learned) - 1  # nothing after the first EOS is learned
        n = int(sampled["attention_mask"][row].sum())
        assert torch.equal(sampled["input_ids"][row, first:n], learned)


def test_on_policy_run_trains_with_the_student_samples(tiny_model_dir, teacher_dir, tasks_file, tmp_path):
    cfg = DistillConfig(mode="on-policy", lmbda=1.0, max_new_tokens=8, max_steps=2, batch_size=4, max_length=96, prompt_format="instruct",
                        eval_every_epochs=1.0, eval_before_training=False, bf16=False)
    manifest = train_distill(str(teacher_dir), str(tiny_model_dir), str(tasks_file), tmp_path / "gkd", cfg)
    steps = [json.loads(line) for line in (tmp_path / "gkd" / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "loss" in s]
    # Every step was on-policy: the KD term alone, no cross-entropy part.
    assert len(logged) == 2 and all("kd_loss" in s and "ce_loss" not in s for s in logged)
    assert manifest["steps"] == 2


def test_sequence_mode_learns_from_teacher_answers_across_tokenizers(tiny_model_dir, teacher_dir, tasks_file,
                                                                      tmp_path):
    """The teacher has another vocabulary: logit KD refuses it, sequence KD goes through its text.

    A tiny random teacher writes no code, so the first run ends with one sentence after logging
    every answer; with answers that hold code (the log is resumed, not regenerated) the student trains."""
    other = _shuffled_tokenizer(teacher_dir, tmp_path / "other-teacher")
    cfg = DistillConfig(mode="sequence", samples_per_task=2, max_new_tokens=16, max_steps=2, batch_size=4,
                        max_length=256, eval_every_epochs=1.0, eval_before_training=False, bf16=False)
    out = tmp_path / "seq"
    with pytest.raises(CodeliftError, match=r"teacher_yield.json: none of the teacher's 48 answers was kept"):
        train_distill(str(other), str(tiny_model_dir), str(tasks_file), out, cfg)
    log = out / "teacher_answers.jsonl"
    settings, *rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert settings["settings"]["samples_per_task"] == 2 and settings["settings"]["temperature"] == 0.8
    assert len(rows) == 24 and all(len(row["answers"]) == 2 for row in rows)

    tasks = load_tasks(str(tasks_file))  # the references pass their tests; a task's second answer repeats its first
    answers = [[f"```python\n{t.solution}```"] * 2 if i % 3 else ["no code here"] * 2 for i, t in enumerate(tasks)]
    write_jsonl(log, [settings] + [{**row, "answers": a} for row, a in zip(rows, answers)])
    manifest = train_distill(str(other), str(tiny_model_dir), str(tasks_file), out, cfg)
    assert {k: v for k, v in manifest["teacher_yield"].items() if v} == {
        "kept: passed the tests": 16, "dropped: no Python code": 16, "dropped: duplicate": 16}
    assert manifest["stage"] == "distill" and manifest["steps"] == 2
    assert manifest["config"]["prompt_format"] == "chat"
    assert json.loads((out / "teacher_yield.json").read_text())["tasks_with_a_kept_answer"] == 16
    kept = [json.loads(line) for line in (out / "teacher_data.jsonl").read_text().splitlines()]
    assert [k["task_id"] for k in kept] == [t.task_id for i, t in enumerate(tasks) if i % 3]
    with pytest.raises(CodeliftError, match="other settings"):  # the log resumes only the run that made it
        train_distill(str(other), str(tiny_model_dir), str(tasks_file), out, cfg.model_copy(update={"seed": 1}))


def test_sequence_answers_are_kept_when_their_tests_pass_distinct_and_up_to_the_limit_per_task():
    from codelift.data import Task
    from codelift.train.sequence_kd import keep_answers

    tasks = [Task("t/add", "Add two numbers.", "def add(a, b):\n    return a + b\n", tests=["assert add(1, 2) == 3"]),
             Task("t/hello", "Say hi.", "def hello():\n    return 'hi'\n")]  # no tests (like Code Alpaca)
    answers = {"t/add": ["def add(a, b):\n    return a - b", "Here:\n```python\ndef add(a, b):\n    return a + b\n```",
                         "def add(a, b):\n    return a + b\n\nprint(add(1, 2))", "def add(x, y):\n    return y + x"],
               "t/hello": ["def hello():\n    return 'hi'", "Just print it."]}

    def outcomes(**settings):
        kept, rows = keep_answers(tasks, answers, DistillConfig(mode="sequence", **settings))
        return [t.solution for t in kept], [row["outcome"] for row in rows]

    kept, rows = outcomes()
    assert kept == ["def add(a, b):\n    return a + b\n"]
    assert rows == ["dropped: failed the tests", "kept: passed the tests", "dropped: duplicate",
                    "dropped: over keep_per_task", "dropped: no tests to check", "dropped: no Python code"]
    kept, rows = outcomes(keep_per_task=2, include_unverified=True)
    assert kept == ["def add(a, b):\n    return a + b\n", "def add(x, y):\n    return y + x\n", "def hello():\n    return 'hi'\n"]
    assert rows[3:5] == ["kept: passed the tests", "kept: compiles, unverified"]
    kept, rows = outcomes(filter_by_tests=False)
    assert kept[0] == "def add(a, b):\n    return a - b\n" and rows[0] == "kept: passed the tests"


def test_token_kd_adds_logit_kd_on_the_kept_teacher_answers(tiny_model_dir, teacher_dir, tasks_file, tmp_path):
    """Sequence- and word-level KD together (Kim & Rush): the verified answers become the training data
    of logit KD toward the same teacher; the answers log is written here as a finished run left it."""
    cfg = DistillConfig(mode="sequence", token_kd=True, samples_per_task=1, max_new_tokens=16, max_steps=2,
                        batch_size=4, max_length=256, eval_every_epochs=1.0, eval_before_training=False, bf16=False)
    out = tmp_path / "tkd"
    out.mkdir()
    tasks = load_tasks(str(tasks_file))
    settings = {"teacher": str(teacher_dir), "samples_per_task": 1, "max_new_tokens": 16, "temperature": 0.0,
                "seed": cfg.seed}
    write_jsonl(out / "teacher_answers.jsonl", [{"settings": settings}] + [
        {"task_id": t.task_id, "answers": [f"```python\n{t.solution}```" if i % 2 else "no code"]}
        for i, t in enumerate(tasks)])
    manifest = train_distill(str(teacher_dir), str(tiny_model_dir), str(tasks_file), out, cfg)
    assert manifest["config"]["mode"] == "logit" and manifest["steps"] == 2  # KD toward the teacher's logits
    assert manifest["teacher_yield"]["kept: passed the tests"] == 12 and manifest["data"] == str(tasks_file)
    assert manifest["heldout_kl_before"] > 0 and (out / "kl.png").is_file()
    kept = [json.loads(line) for line in (out / "teacher_data.jsonl").read_text().splitlines()]
    assert [k["task_id"] for k in kept] == [t.task_id for i, t in enumerate(tasks) if i % 2]


def test_a_sigkilled_cache_build_resumes_to_the_same_bytes(teacher_dir, data_dir, tmp_path, sigkill):
    """`codelift distill cache` killed (SIGKILL) once a few shards are written, then run again, ends with
    the very files of a run never interrupted."""
    import os
    import subprocess
    import sys

    data = tmp_path / "tasks.jsonl"
    write_jsonl(data, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:200]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def command(out):
        return [sys.executable, "-m", "codelift.cli", "distill", "cache", "--teacher", str(teacher_dir), "--data",
                str(data), "--out", str(out), "--top-k", "8", "--max-length", "96", "--shard-examples", "5",
                "--prompt-format", "instruct"]

    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)
    sigkill(command(tmp_path / "killed"), env, (tmp_path / "killed" / "shard-00003.safetensors").exists)
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"], "the build finished before it could be killed"
    subprocess.run(command(tmp_path / "killed"), env=env, check=True, capture_output=True)

    whole = json.loads((tmp_path / "whole" / "manifest.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert resumed == whole and whole["shards"] > 8  # killed after 4 of them
    for number in range(whole["shards"]):
        name = f"shard-{number:05d}.safetensors"
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
