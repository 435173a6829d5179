import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from codelift.config import SFTConfig, load_config
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.io import write_jsonl
from codelift.train.data import IGNORE_INDEX, encode_example
from codelift.train.sft import train_sft

CODELIFT = str(Path(sys.executable).parent / "codelift")
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:40]))
    return path


def test_labels_cover_exactly_the_response_even_where_the_joint_text_tokenises_differently(real_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    # A completion that continues a function body: "\n" and the indent merge into one token.
    prompt, response = "### Instruction:\nAdd.\n\n### Response:\n", "    return a + b\n"
    joint = tokenizer(prompt + response, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    assert joint != prompt_ids + response_ids

    example = encode_example(tokenizer, prompt, response, max_length=512)
    assert example["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]
    learned = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(learned, skip_special_tokens=True) == response

    short = encode_example(tokenizer, prompt, response, max_length=len(prompt_ids) + 3)
    assert len(short["input_ids"]) == len(prompt_ids) + 3 and short["labels"][-3:] == response_ids[:3]

    tokenizer.pad_token = tokenizer.eos_token
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)([example, short])
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, len(short["labels"]):] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1].sum() == len(short["input_ids"])


def test_method_presets_fill_only_unset_fields():
    assert SFTConfig(method="full").resolved().learning_rate == 5e-5
    assert SFTConfig(method="prefix").resolved().learning_rate == 3e-2
    qlora = SFTConfig(method="qlora4", lora_r=4).resolved()
    assert (qlora.lora_r, qlora.lora_alpha, qlora.grad_accum, qlora.lr_scheduler) == (4, 32, 8, "cosine")
    assert qlora.optimizer == "paged_adamw_8bit" and qlora.learning_rate == 3e-4
    assert SFTConfig(method="lora").resolved().gradient_checkpointing
    assert not SFTConfig(method="prefix").resolved().gradient_checkpointing
    with pytest.raises(CodeliftError, match="prefix tuning"):
        SFTConfig(method="prefix", gradient_checkpointing=True).resolved()


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "sft.yaml"
    bad.write_text("method: lora\nlora_r: many\n")
    with pytest.raises(CodeliftError, match=r"sft.yaml, line 2: field 'lora_r': Input should be a valid integer"):
        load_config(SFTConfig, bad, {})
    bad.write_text("method: dora\n")
    with pytest.raises(CodeliftError, match=r"field 'method'"):
        load_config(SFTConfig, bad, {})
    assert load_config(SFTConfig, bad, {"method": "ia3"}).method == "ia3"


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prompt", "prefix", "qlora4", "qlora8"])
def test_every_method_trains_and_writes_its_artifacts(method, tiny_model_dir, train_file, tmp_path):
    cfg = SFTConfig(method=method, max_steps=2, batch_size=2, max_length=128, grad_accum=1)
    manifest = train_sft(str(tiny_model_dir), str(train_file), tmp_path, cfg)
    assert 0 < manifest["trainable_parameters"] < manifest["total_parameters"] or method == "full"
    assert manifest["steps"] == 2 and manifest["tokens_per_second"] > 0 and manifest["peak_memory_mb"] > 0
    weights = tmp_path / ("model" if method == "full" else "adapter")
    assert (weights / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and any("eval_loss" in r for r in rows)
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["config"]["method"] == method and manifest["deterministic_algorithms"] is False


def test_lora_merge_gives_the_adapter_models_logits(tiny_model_dir, train_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = SFTConfig(method="lora", max_steps=2, batch_size=2, max_length=128, learning_rate=1e-2)
    train_sft(str(tiny_model_dir), str(train_file), tmp_path, cfg, merge=True)
    ids = torch.tensor([[1, 400, 500, 600]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = base(ids).logits
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        expected = adapted(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base_logits, expected)  # the adapter did change the model


def test_prompt_tuning_cannot_be_merged(tiny_model_dir, train_file, tmp_path):
    cfg = SFTConfig(method="prompt", max_steps=1, batch_size=2, max_length=128)
    with pytest.raises(CodeliftError, match="virtual tokens, not weight updates"):
        train_sft(str(tiny_model_dir), str(train_file), tmp_path, cfg, merge=True)


def test_missing_target_modules_fail_with_a_sentence(tiny_model_dir, train_file, tmp_path):
    cfg = SFTConfig(method="lora", max_steps=1, target_modules=["c_attn"])
    with pytest.raises(CodeliftError, match=r"target_modules \['c_attn'\] are not modules of LlamaForCausalLM"):
        train_sft(str(tiny_model_dir), str(train_file), tmp_path, cfg)


def _sft_command(model: Path, data: Path, out: Path, config: Path) -> list[str]:
    return [CODELIFT, "sft", "--model", str(model), "--data", str(data), "--out", str(out), "--config", str(config)]


def test_sigkilled_run_resumes_to_the_same_weights(tiny_model_dir, train_file, tmp_path, sigkill):
    """Deterministic as the CodeGen study trained: the resumed run's weights are the very same bits."""
    config = tmp_path / "sft.yaml"
    config.write_text("method: lora\nmax_steps: 12\nbatch_size: 2\nmax_length: 128\nlearning_rate: 0.01\n"
                      "deterministic: true\n")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_sft_command(tiny_model_dir, train_file, whole, config), env=SINGLE_THREAD, check=True,
                   capture_output=True)
    sigkill(_sft_command(tiny_model_dir, train_file, killed, config), SINGLE_THREAD,
            lambda: bool(list(killed.glob("checkpoints/checkpoint-*/codelift-committed"))))
    assert not (killed / "adapter").exists(), "the run finished before it could be killed"
    subprocess.run(_sft_command(tiny_model_dir, train_file, killed, config), env=SINGLE_THREAD, check=True,
                   capture_output=True)

    expected = load_file(whole / "adapter" / "adapter_model.safetensors")
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    manifest = json.loads((killed / "run.json").read_text())
    assert manifest["steps"] == 12 and manifest["config"]["deterministic"] and manifest["deterministic_algorithms"]


def test_accelerate_launch_trains_on_two_processes(tiny_model_dir, train_file, tmp_path):
    """`--multi_gpu` is accelerate's torchrun launcher; without CUDA it runs gloo on CPU processes."""
    config = tmp_path / "sft.yaml"
    config.write_text("method: lora\nmax_steps: 2\nbatch_size: 2\nmax_length: 128\n")
    launcher = str(Path(sys.executable).parent / "accelerate")
    proc = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "codelift.cli", "sft",
                           "--model", str(tiny_model_dir), "--data", str(train_file), "--out", str(tmp_path / "ddp"),
                           "--config", str(config)], env=SINGLE_THREAD, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert manifest["steps"] == 2 and manifest["processes"] == 2


def test_length_grouped_order_depends_on_seed_and_epoch_only():
    from codelift.train.core import EpochSeededLengthGroupedSampler

    lengths = [5, 90, 12, 40, 7, 63, 21, 88, 30, 3, 55, 14]
    first = EpochSeededLengthGroupedSampler(4, lengths, seed=42)
    first.set_epoch(1)
    torch.rand(100)  # an evaluation between epochs draws from the global RNG
    resumed = EpochSeededLengthGroupedSampler(4, lengths, seed=42)
    resumed.set_epoch(1)
    assert list(first) == list(resumed) and sorted(first) == list(range(12))
    resumed.set_epoch(2)
    assert list(resumed) != list(first)


@pytest.mark.parametrize("fmt", ["chat", "instruct"])
def test_a_student_is_trained_on_exactly_the_tokens_it_is_prompted_with(real_tokenizer_dir, data_dir, fmt):
    """For one MBPP and one HumanEval task: the tokens before the first label equal the ids every
    backend gives the model at evaluation, and the labels are the answer closed as inference ends it."""
    from codelift.prompts import render_prompt
    from codelift.train.data import encode_task

    tokenizer = AutoTokenizer.from_pretrained(real_tokenizer_dir)
    tasks = [load_tasks("mbpp", "validation", data_dir=data_dir)[0], load_tasks("humaneval")[0]]
    for task in tasks:
        example = encode_task(task, tokenizer, fmt, max_length=2048)
        first_label = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
        at_eval = tokenizer(render_prompt(task, fmt, tokenizer), add_special_tokens=False)["input_ids"]
        assert example["input_ids"][:first_label] == at_eval
        learned = tokenizer.decode(example["labels"][first_label:])
        if fmt == "chat":  # the assistant turn: the code in a fence, then the template's end-of-turn token
            assert at_eval[-3:] == tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:]
            assert learned == f"```python\n{task.solution.strip()}\n```<|im_end|>"
        else:
            assert learned == task.solution + tokenizer.eos_token


def test_training_stages_record_and_use_the_models_own_chat_format(tiny_model_dir, train_file, tmp_path):
    cfg = SFTConfig(method="lora", max_steps=1, batch_size=4, max_length=256, eval_every_epochs=1.0,
                    eval_before_training=False, bf16=False)
    manifest = train_sft(str(tiny_model_dir), str(train_file), tmp_path / "chat", cfg)
    assert manifest["config"]["prompt_format"] == "chat"  # SmolLM2's tokenizer has a chat template
    instruct = train_sft(str(tiny_model_dir), str(train_file), tmp_path / "instruct",
                         cfg.model_copy(update={"prompt_format": "instruct"}))
    assert instruct["config"]["prompt_format"] == "instruct"
    assert json.loads((tmp_path / "chat" / "run.json").read_text())["config"]["prompt_format"] == "chat"


def test_training_prints_one_progress_line_not_the_trainers_dictionaries(tiny_model_dir, train_file, tmp_path, capfd):
    cfg = SFTConfig(method="lora", max_steps=2, batch_size=2, max_length=128)
    train_sft(str(tiny_model_dir), str(train_file), tmp_path, cfg)
    printed = capfd.readouterr()
    shown = printed.out + printed.err
    assert "SFT (lora)" in shown and "2/2" in shown and "validation loss" in shown and "tokens/s" in shown
    assert "{'loss'" not in shown and "'train_runtime'" not in shown  # those are in metrics.jsonl


def test_progress_into_a_log_file_prints_the_line_as_it_goes_with_the_time_left(capfd):
    """Into a file a live bar shows nothing until it stops: the line is printed every `every` seconds."""
    from transformers import TrainerState

    from codelift.train.callbacks import Throughput, TrainingProgress

    progress = TrainingProgress("distill (lora)", Throughput(), every=0)
    state = TrainerState(max_steps=4, global_step=1)  # resumed after one step
    progress.on_train_begin(None, state, None)
    for step in (2, 3, 4):
        state.global_step = step
        progress.on_log(None, state, None, logs={"loss": 1.0 / step})
        progress.on_step_end(None, state, None)
    progress.on_train_end(None, state, None)
    lines = [line for line in capfd.readouterr().out.splitlines() if line.strip()]
    assert [line.split("  ")[1] for line in lines] == ["2/4 steps", "3/4 steps", "4/4 steps", "4/4 steps"]
    assert all(line.startswith("distill (lora)") for line in lines) and "loss 0.5000" in lines[0]
    assert "min left" in lines[0] and "min left" in lines[1] and "min left" not in lines[2]
