"""The Generator interface and the hf backend on the tiny model: token-exact against
`model.generate`, stop sequences, sampling, log-probabilities, errors."""

import socket

import pytest
import torch

from codelift.errors import CodeliftError
from codelift.generate import Generation, extract_code, generate, make_generator, truncate_at_stop
from codelift.generate.hf import best_dtype, pick_tokens
from codelift.models import load_model

PROMPTS = ["def add(a, b):", "import os\nimport sys\n\nfor name in os.listdir('.'):\n    print(", "x = [",
           "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def reference(model, tokenizer, prompt, max_new_tokens):
    """Plain `model.generate`, one prompt at a time (no padding): the peer our loop must equal."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    return new


def test_greedy_equals_model_generate_token_for_token(tiny):
    model, tokenizer = tiny
    padding_side = tokenizer.padding_side
    results = generate(model, tokenizer, PROMPTS, max_new_tokens=24, batch_size=3, progress=False)
    for prompt, result in zip(PROMPTS, results):
        expected = reference(model, tokenizer, prompt, 24)
        assert result.prompt == prompt
        assert result.completions == [tokenizer.decode(expected, skip_special_tokens=True)]
        assert result.token_counts == [len(expected)] and result.new_tokens == len(expected)
        assert result.seconds > 0
    assert tokenizer.padding_side == padding_side  # the tokenizer is left as it was found


def test_stop_sequence_ends_one_row_and_leaves_the_others_exact(tiny):
    model, tokenizer = tiny
    free = generate(model, tokenizer, PROMPTS, max_new_tokens=24, progress=False)
    text = free[1].completions[0]
    stop = text[len(text) // 3: len(text) // 3 + 3]  # a piece of the second answer, a third of the way in
    stopped = generate(model, tokenizer, PROMPTS, max_new_tokens=24, stop=[stop], progress=False)
    assert stopped[1].completions[0] == truncate_at_stop(text, [stop]) and stop not in stopped[1].completions[0]
    assert stopped[1].token_counts[0] < free[1].token_counts[0]
    for before, after in zip(free, stopped):
        if stop not in before.completions[0]:
            assert after.completions == before.completions and after.token_counts == before.token_counts


def test_mean_logprob_matches_a_forward_pass(tiny):
    model, tokenizer = tiny
    [result] = generate(model, tokenizer, [PROMPTS[0]], max_new_tokens=10, temperature=0.7, seed=3, progress=False)
    prompt_ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    new_ids = tokenizer(result.completions[0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + new_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, len(prompt_ids) - 1:-1].float(), dim=-1)
    expected = logprobs.gather(-1, torch.tensor(new_ids)[:, None]).mean().item()
    assert len(new_ids) == result.token_counts[0]  # the completion re-encodes to the same tokens
    assert result.mean_logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_sampling_is_seeded_and_n_completions_come_back(tiny):
    model, tokenizer = tiny
    kw = dict(n=3, max_new_tokens=8, temperature=1.0, top_p=0.95, batch_size=4, progress=False)
    first = generate(model, tokenizer, PROMPTS[:2], seed=1, **kw)
    again = generate(model, tokenizer, PROMPTS[:2], seed=1, **kw)
    other = generate(model, tokenizer, PROMPTS[:2], seed=2, **kw)
    assert [len(r.completions) for r in first] == [3, 3] and [len(r.mean_logprobs) for r in first] == [3, 3]
    assert [r.completions for r in first] == [r.completions for r in again]
    assert [r.completions for r in first] != [r.completions for r in other]
    assert len(set(first[0].completions)) > 1  # samples differ from each other


def test_a_tiny_nucleus_is_greedy(tiny):
    model, tokenizer = tiny
    greedy = generate(model, tokenizer, PROMPTS, max_new_tokens=10, progress=False)
    nucleus = generate(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=1e-6, progress=False)
    assert [r.completions for r in greedy] == [r.completions for r in nucleus]


def test_top_p_never_draws_outside_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    rng = torch.Generator().manual_seed(0)
    drawn = {pick_tokens(logits, 1.0, 0.7, rng).item() for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 covers 0.7; tokens 2 and 3 are outside
    assert pick_tokens(logits, 0.0, 0.7, rng).item() == 0


def test_make_generator_hf_behind_the_interface(tiny_model_dir):
    with make_generator(str(tiny_model_dir), "hf", dtype="float32", batch_size=2, progress=False) as gen:
        model, tokenizer = load_model(str(tiny_model_dir))
        results = gen.generate(PROMPTS[:3], max_new_tokens=6)
        assert all(isinstance(r, Generation) for r in results)
        assert [r.completions[0] for r in results] == \
            [tokenizer.decode(reference(model, tokenizer, p, 6), skip_special_tokens=True) for p in PROMPTS[:3]]
        assert gen.tokenizer is not None and gen.context_length == 512 and gen.model.dtype == torch.float32
    assert gen.model is None  # released on leaving the block


def test_bad_settings_are_one_clear_error(tiny_model_dir):
    with pytest.raises(CodeliftError, match="--backend 'tgi': expected one of hf, vllm, openai"):
        make_generator(str(tiny_model_dir), "tgi")
    with pytest.raises(CodeliftError, match="backend 'hf' has no option endpoint"):
        make_generator(str(tiny_model_dir), "hf", endpoint="http://x")
    with pytest.raises(CodeliftError, match="dtype 'fp8'"):
        make_generator(str(tiny_model_dir), "hf", dtype="fp8")
    with pytest.raises(CodeliftError, match="needs --endpoint"):
        make_generator(str(tiny_model_dir), "openai")
    with make_generator(str(tiny_model_dir), "hf", progress=False) as gen:
        with pytest.raises(CodeliftError, match="max_new_tokens must be at least 1"):
            gen.generate(["x"], max_new_tokens=0)
        with pytest.raises(CodeliftError, match="top_p must be in"):
            gen.generate(["x"], temperature=1.0, top_p=0.0)
        with pytest.raises(CodeliftError, match="prompt 1 is empty"):
            gen.generate(["x", ""])


def test_openai_backend_names_an_endpoint_it_cannot_reach(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, nothing listens once closed
    with pytest.raises(CodeliftError, match=rf"cannot connect to http://127.0.0.1:{port}/v1"):
        make_generator(str(tiny_model_dir), "openai", endpoint=f"http://127.0.0.1:{port}/v1", max_retries=0)


def test_best_dtype_follows_the_hardware(monkeypatch):
    """bf16 on a CPU that has it natively, fp32 on one that would emulate it (read from /proc/cpuinfo)."""
    from codelift import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpuinfo", lambda: "flags : fpu avx512f avx512_bf16 amx_bf16")
    assert best_dtype() == torch.bfloat16
    monkeypatch.setattr(hardware, "cpuinfo", lambda: "flags : fpu avx2 avx512f")
    assert best_dtype() == torch.float32


def test_stop_sequences_and_code_extraction():
    assert truncate_at_stop("    return 1\ndef other():", ["\ndef ", "\nclass "]) == "    return 1"
    assert truncate_at_stop("no stop here", []) == "no stop here"
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"
    assert extract_code("def f(): pass") == "def f(): pass\n"


def test_extract_code_keeps_what_the_tests_can_use_and_drops_the_models_own_checks():
    answer = ("Here is the function:\n```python\nimport math\nfrom typing import List\n\nLIMIT = 10\nunused = 3\n\n"
              "@staticmethod\ndef helper(x):\n    return x * LIMIT\n\ndef area(r: float) -> float:\n    return math.pi * helper(r)\n\n"
              "print(area(2))\nassert area(1) == 0\nresult = area(3)\nif __name__ == '__main__':\n    print(result)\n```\n"
              "Explanation: ...")
    assert extract_code(answer) == ("import math\n\nfrom typing import List\n\nLIMIT = 10\n\n@staticmethod\ndef helper(x):\n"
                                    "    return x * LIMIT\n\ndef area(r: float) -> float:\n    return math.pi * helper(r)\n")
    # the first non-empty block; a lone closing fence (no opening one) is cut, not read as a block
    assert extract_code("```\n```\n```python\ndef g():\n    return 2\n```") == "def g():\n    return 2\n"
    assert extract_code("def g():\n    return 2\n```") == "def g():\n    return 2\n"
    assert extract_code("def g():\n    return 2\n```\nThat is all.") == "def g():\n    return 2\n"
    # code that does not parse, or holds no definition, is left as the model wrote it
    assert extract_code("```python\ndef broken(:\n    pass\nprint(1)\n```") == "def broken(:\n    pass\nprint(1)\n"
    assert extract_code("```python\nx = int(input())\nprint(x * 2)\n```") == "x = int(input())\nprint(x * 2)\n"
    # a class and the assignment a method reads stay; a call at the top level goes
    assert extract_code("class Pair:\n    SIZE = 2\n\nDEFAULT = Pair()\nPair()\n") == "class Pair:\n    SIZE = 2\n"


def test_an_answer_cut_off_by_the_token_limit_keeps_its_complete_function():
    answer = "```python\ndef f(x):\n    return x + 1\n\n# Test cases\nprint(f(1))  # 2\nprint(f(\"abc"
    assert extract_code(answer) == "def f(x):\n    return x + 1\n"
    cut_inside = "```python\ndef f(x):\n    if x:\n        return [x,"
    assert extract_code(cut_inside) == "def f(x):\n    if x:\n        return [x,\n"  # nothing whole to keep
