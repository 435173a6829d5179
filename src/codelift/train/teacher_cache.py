"""`codelift distill cache`: run the teacher once, keep its top-k next-token distribution.

Per response token the cache stores the ids of the k most likely tokens, their log-probabilities
taken from the *full* log-softmax at T = 1 (never a softmax over the top-k raw logits), and the log
of the probability mass left outside them (the tail). Ids are the bulk of the bytes, so they are
stored as uint16 when the vocabulary allows it.

Layout: `manifest.json` (what made it: teacher and weights hash, tokenizer hash, data hash, k,
dtypes, bytes per token, each shard's SHA-256) and `shard-NNNNN.safetensors` files of
`shard_examples` examples each, written atomically; a killed run resumes at the first missing shard.
Training with the cache (`distill --teacher-cache`) never loads the teacher and refuses a cache made
for other data or another tokenizer, or a shard whose bytes no longer match its checksum (a flipped
byte in a log-probability would otherwise be read as data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.io import atomic_path, check_same_settings, file_sha256, write_json
from codelift.models.load import load_model, load_tokenizer, prepare_model, vocabulary_hash
from codelift.train.core import ExampleCollator, use_bf16
from codelift.prompts import default_format
from codelift.train.data import sft_examples
from codelift.train.losses import output_logits, response_states, tempered_log_probs

FORMAT = "codelift-teacher-cache/1"
LOG_PROB_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def dataset_hash(*datasets) -> str:
    """Identity of the encoded training data (ids and label masks, so template and max_length count)."""
    rows = sorted((row for ds in datasets for row in ds), key=lambda row: row["example"])
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["example"], row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()


def weights_hash(model_path: str) -> str:
    """sha256 over a local model's weight files; a hub id is named with its resolved revision."""
    folder = Path(model_path)
    if not folder.is_dir():
        return f"hub:{model_path}"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")):
        with path.open("rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


@torch.inference_mode()
def build_teacher_cache(teacher: str, data: str, out: Path, *, top_k: int = 32, batch_size: int = 8,
                        max_length: int = 512, log_prob_dtype: str = "float16", shard_examples: int = 256,
                        bf16: bool | None = None, prompt_format: str | None = None) -> dict:
    """Write the top-k cache of `teacher` on the response tokens of `data`; returns the manifest."""
    teacher_path = prepare_model(teacher)
    tokenizer = load_tokenizer(teacher_path)
    vocab = len(tokenizer)
    if not 1 <= top_k <= vocab:
        raise CodeliftError(f"--top-k {top_k}: expected 1 to the vocabulary size ({vocab}).")
    if log_prob_dtype not in LOG_PROB_DTYPES:
        raise CodeliftError(f"--log-prob-dtype '{log_prob_dtype}': expected one of {', '.join(LOG_PROB_DTYPES)}.")
    prompt_format = default_format(tokenizer, prompt_format)  # the student's training format: one tokenizer
    examples = sft_examples(load_tasks(data), tokenizer, prompt_format, max_length)
    bf16 = use_bf16(bf16)
    identity = {"format": FORMAT, "teacher": teacher, "teacher_weights_sha256": weights_hash(teacher_path),
                "tokenizer_sha256": vocabulary_hash(tokenizer), "vocab": vocab, "data": str(data),
                "data_sha256": dataset_hash(examples), "max_length": max_length,
                "prompt_format": prompt_format, "top_k": top_k,
                "temperature": 1.0, "teacher_dtype": "bfloat16" if bf16 else "float32",
                "dtypes": {"ids": "uint16" if vocab <= 2**16 else "int32", "log_probs": log_prob_dtype,
                           "tail": "float32"}, "shard_examples": shard_examples}
    out.mkdir(parents=True, exist_ok=True)
    if (out / "manifest.json").is_file():
        check_same_settings(f"{out} (a teacher cache)", json.loads((out / "manifest.json").read_text()), identity)
    write_json(out / "manifest.json", identity | {"complete": False})

    model, _ = load_model(teacher_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    collate = ExampleCollator(tokenizer)
    shards = [examples.select(range(i, min(i + shard_examples, len(examples))))
              for i in range(0, len(examples), shard_examples)]
    with Progress() as bar:
        job = bar.add_task("teacher top-k cache", total=len(examples))
        for number, shard in enumerate(shards):
            path = out / f"shard-{number:05d}.safetensors"
            if not path.is_file():
                _write_shard(path, shard, model, collate, vocab, top_k, batch_size, identity["dtypes"])
            bar.advance(job, len(shard))
    tokens = sum(sum(1 for label in row["labels"][1:] if label != -100) for row in examples)
    stored = sum((out / f"shard-{n:05d}.safetensors").stat().st_size for n in range(len(shards)))
    manifest = identity | {"complete": True, "examples": len(examples), "tokens": tokens, "shards": len(shards),
                           "bytes": stored, "bytes_per_token": round(stored / max(tokens, 1), 1),
                           "shard_sha256": [file_sha256(out / f"shard-{n:05d}.safetensors") for n in range(len(shards))]}
    write_json(out / "manifest.json", manifest)
    return manifest


def _write_shard(path: Path, shard, model, collate, vocab: int, top_k: int, batch_size: int, dtypes: dict) -> None:
    from safetensors.numpy import save_file

    order = sorted(range(len(shard)), key=lambda i: len(shard[i]["input_ids"]))  # less padding
    per_example = {}
    for start in range(0, len(order), batch_size):
        rows = [shard[i] for i in order[start:start + batch_size]]
        batch = collate(rows)
        hidden, _ = response_states(model, batch)
        log_probs = tempered_log_probs(output_logits(model, vocab)(hidden))  # full log-softmax, T = 1
        top, ids = log_probs.topk(top_k, dim=-1)
        tail = log_probs.scatter(-1, ids, float("-inf")).logsumexp(-1)
        counts = (batch["labels"][:, 1:] != -100).sum(1).tolist()
        for row, part in zip(rows, zip(ids.split(counts), top.split(counts), tail.split(counts))):
            per_example[row["example"]] = part
    examples = sorted(per_example)
    ids, top, tail = (torch.cat([per_example[e][j] for e in examples]) for j in range(3))
    arrays = {"examples": np.asarray(examples, dtype=np.int64),
              "counts": np.asarray([len(per_example[e][0]) for e in examples], dtype=np.int64),
              "ids": ids.numpy().astype(dtypes["ids"]),
              "log_probs": top.to(LOG_PROB_DTYPES[dtypes["log_probs"]]).numpy(),
              "tail": tail.float().numpy()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp))


@dataclass
class TeacherCache:
    manifest: dict
    rows: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # example -> (ids, log_probs, tail)


def load_teacher_cache(path: Path, tokenizer, datasets: tuple) -> TeacherCache:
    """Load a complete cache after checking it was made for this tokenizer and this encoded data."""
    from safetensors.numpy import load

    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise CodeliftError(f"{path}: no manifest.json; expected a folder written by `codelift distill cache`.")
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise CodeliftError(f"{path}: the teacher cache is incomplete; re-run `codelift distill cache` to finish it.")
    if manifest["tokenizer_sha256"] != vocabulary_hash(tokenizer):
        raise CodeliftError(f"{path}: the cache was made with another tokenizer (teacher {manifest['teacher']}, "
                            f"{manifest['vocab']} tokens) than the student's ({len(tokenizer)} tokens).")
    if manifest["data_sha256"] != dataset_hash(*datasets):
        raise CodeliftError(f"{path}: the cache was made for other data ({manifest['data']}, max_length "
                            f"{manifest['max_length']}, prompt format {manifest.get('prompt_format', 'instruct')}); "
                            f"build one for this --data, max_length and prompt format.")
    rows = {}
    for number in range(manifest["shards"]):
        shard = Path(path) / f"shard-{number:05d}.safetensors"
        stored = shard.read_bytes()  # read once: checked, then parsed
        if "shard_sha256" in manifest and hashlib.sha256(stored).hexdigest() != manifest["shard_sha256"][number]:
            raise CodeliftError(f"{shard}: its bytes do not match the checksum in manifest.json (damaged or changed "
                                f"since it was written); delete it and run `codelift distill cache` again to rewrite it.")
        arrays = load(stored)
        ids = torch.from_numpy(arrays["ids"].astype(np.int32))  # as stored (uint16 widened only to int32)
        log_probs, tail = torch.from_numpy(arrays["log_probs"]), torch.from_numpy(arrays["tail"])
        counts = arrays["counts"].tolist()
        for example, i, lp, t in zip(arrays["examples"].tolist(), ids.split(counts), log_probs.split(counts),
                                     tail.split(counts)):
            rows[example] = (i, lp, t)
    return TeacherCache(manifest, rows)


class TeacherCacheCollator(ExampleCollator):
    """Pads like the SFT collator and attaches each example's cached teacher rows, in batch order,
    which is the row-major order of the batch's response positions."""

    def __init__(self, tokenizer, cache: TeacherCache):
        super().__init__(tokenizer)
        self.cache = cache

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        parts = [self.cache.rows[f["example"]] for f in features]
        batch["teacher_ids"], batch["teacher_log_probs"], batch["teacher_tail"] = (
            torch.cat([p[j] for p in parts]) for j in range(3))
        batch["teacher_ids"] = batch["teacher_ids"].long()  # gather wants int64; only per batch
        return batch
