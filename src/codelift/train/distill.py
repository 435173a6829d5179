"""`codelift distill`: a student learns from a teacher that shares its tokenizer.

The recipe (logit mode): resolve the config -> check that teacher and student share one vocabulary
-> encode the tasks -> load the student for its method, and the frozen teacher (or its top-k cache)
-> measure held-out KL(teacher || student) -> fit on the training core with
alpha * T^2 * D(p_T^T || p_S^T) + (1 - alpha) * CE per response token -> measure held-out KL again
-> write kl.png and the run manifest.

Other modes: `sequence` fine-tunes the student on the teacher's own answers (any tokenizers);
`on-policy` (GKD) takes a fraction lmbda of steps on the student's own samples, scored by the teacher.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from rich.progress import track
from transformers import set_seed

from codelift.config import DistillConfig
from codelift.errors import CodeliftError
from codelift.io import write_bytes, write_json
from codelift.plots import curves
from codelift.models.adapters import load_for_training
from codelift.models.load import check_same_vocabulary, load_model, load_tokenizer, prepare_model
from codelift.train.core import ExampleCollator, fit, training_sets, use_bf16, with_prompt_format
from codelift.train.losses import cached_kd_loss, logit_kd_loss
from codelift.train.teacher_cache import TeacherCacheCollator, load_teacher_cache


def train_distill(teacher: str | None, student: str, data: str, out: Path, cfg: DistillConfig, *,
                  validation: str | None = None, merge: bool = False, teacher_cache: str | None = None) -> dict:
    """Distil `teacher` (or its top-k cache) into `student`; returns the manifest written to run.json."""
    cfg = cfg.resolved()
    set_seed(cfg.seed)
    if cfg.mode == "sequence":
        from codelift.train.sequence_kd import train_sequence_kd, verified_teacher_data

        if not cfg.token_kd:
            return train_sequence_kd(teacher, student, data, out, cfg, validation=validation, merge=merge)
        # Kim & Rush's sequence-level and word-level KD together: logit KD on the kept sequences
        kept, extra = verified_teacher_data(teacher, student, data, out, cfg)
        logit = cfg.model_copy(update={"mode": "logit"})
        return train_distill(teacher, student, str(kept), out, logit, validation=validation, merge=merge) | extra
    if (teacher is None) == (teacher_cache is None):
        raise CodeliftError("give the teacher as --teacher MODEL or as --teacher-cache DIR (one of them).")
    if teacher_cache and validation:
        raise CodeliftError("--validation with --teacher-cache: the cache covers --data only; omit --validation "
                            "to hold out a seeded 5% of --data.")
    if teacher_cache and cfg.mode == "on-policy":
        raise CodeliftError("--mode on-policy scores the student's own samples, which no cache holds; give --teacher.")
    student_path = prepare_model(student)
    tokenizer = load_tokenizer(student_path)
    cfg = with_prompt_format(cfg, tokenizer)
    vocab = len(tokenizer)
    train_set, val_set = training_sets(data, validation, tokenizer, cfg)

    if teacher_cache:
        cache = load_teacher_cache(Path(teacher_cache), tokenizer, (train_set, val_set))
        token_loss = partial(cached_kd_loss, cfg=cfg, vocab=vocab)
        collator = TeacherCacheCollator(tokenizer, cache)
        teacher_model, teacher_name = None, cache.manifest["teacher"]
    else:
        teacher_path = prepare_model(teacher)
        check_same_vocabulary(load_tokenizer(teacher_path), tokenizer, teacher, student)
        teacher_model, _ = load_model(teacher_path, dtype=torch.bfloat16 if use_bf16(cfg.bf16) else torch.float32)
        teacher_model.requires_grad_(False)
        token_loss = partial(logit_kd_loss, teacher=teacher_model, cfg=cfg, vocab=vocab)
        collator = ExampleCollator(tokenizer)
        teacher_name = teacher
    if cfg.mode == "on-policy":
        from codelift.train.on_policy import on_policy_loss

        token_loss = partial(on_policy_loss, offline=token_loss, teacher=teacher_model, tokenizer=tokenizer,
                             cfg=cfg, vocab=vocab)

    lm = load_for_training(student_path, cfg)
    measure_kl = partial(heldout_kl, val_set=val_set, collator=collator, cfg=cfg, vocab=vocab,
                         teacher=teacher_model, cached=teacher_cache is not None)
    kl_before = first_run_value(out / "heldout_kl_before.json", lambda: measure_kl(lm))
    trainer, manifest = fit("distill", lm, tokenizer, train_set, val_set, out, cfg, token_loss=token_loss,
                            collator=collator, merge_base=student_path if merge else None,
                            title=f"KD ({cfg.mode}, {cfg.divergence}, T={cfg.temperature}) on {Path(data).name}")
    if not trainer.is_world_process_zero():
        return {}
    kl_after = measure_kl(trainer.model)
    kl_kind = "top-k + tail bucket estimate (a lower bound)" if teacher_cache else "exact"
    write_bytes(out / "kl.png", curves(trainer.state.log_history, {"kd_loss": "KD divergence (train, at T)"},
                                       f"KD divergence; held-out KL(teacher || student), {kl_kind}",
                                       "divergence per token",
                                       marks={"held-out KL before": kl_before, "held-out KL after": kl_after}))
    manifest |= {"teacher": teacher_name, "teacher_cache": teacher_cache, "student": student, "data": data,
                 "validation": validation, "heldout_kl_before": kl_before, "heldout_kl_after": kl_after,
                 "heldout_kl_kind": kl_kind}
    write_json(out / "run.json", manifest)
    return manifest


@torch.no_grad()
def heldout_kl(student, *, val_set, collator, cfg: DistillConfig, vocab: int, teacher=None, cached: bool) -> float:
    """Mean KL(teacher || student) at T = 1 per held-out response token. With a cache it is taken
    over the top-k ids plus the tail as one bucket, which can only be lower than the exact KL."""
    kl_cfg = cfg.model_copy(update={"temperature": 1.0, "alpha": 1.0, "divergence": "forward",
                                    "cache_tail": "bucket"})
    loss = (partial(cached_kd_loss, cfg=kl_cfg, vocab=vocab) if cached
            else partial(logit_kd_loss, teacher=teacher, cfg=kl_cfg, vocab=vocab))
    was_training = student.training
    student.eval()
    total, tokens = 0.0, 0
    rows = list(val_set)
    for start in track(range(0, len(rows), cfg.batch_size), description="held-out KL", transient=True):
        sums = loss(student, collator(rows[start:start + cfg.batch_size]))
        total, tokens = total + float(sums["kd"]), tokens + sums["tokens"]
    student.train(was_training)
    return total / max(tokens, 1)


def first_run_value(path: Path, measure) -> float:
    """A measurement taken once, by the first run of a stage; resumed runs read it back."""
    if path.is_file():
        return json.loads(path.read_text())["value"]
    value = measure()
    write_json(path, {"value": value})
    return value
