"""KL(teacher || student) over the response tokens of held-out tasks: how far a student's
next-token distributions are from its teacher's where it matters, on reference solutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.progress import track
from transformers import DataCollatorForSeq2Seq

from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.prompts import default_format
from codelift.train.data import IGNORE_INDEX, encode_task
from codelift.train.losses import token_kl


@torch.inference_mode()
def kl_to_teacher(student, teacher, tokenizer, tasks: Sequence[Task], *, batch_size: int = 4,
                  max_length: int = 512, temperature: float = 1.0) -> float:
    """Mean per-token KL(teacher || student) on the reference solutions of `tasks`, prompted as the
    student trains and is evaluated (its chat template where it has one); one tokenizer for both."""
    if min(student.config.vocab_size, teacher.config.vocab_size) < len(tokenizer):
        raise CodeliftError(f"--kl-teacher: a model has fewer output rows (student {student.config.vocab_size}, "
                            f"teacher {teacher.config.vocab_size}) than the tokenizer ({len(tokenizer)}); "
                            f"KL needs the same tokenizer.")
    fmt = default_format(tokenizer)
    examples = [encode_task(t, tokenizer, fmt, max_length) for t in tasks]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)  # the SFT batches' padding
    total, count = torch.zeros(()), torch.zeros(())
    for start in track(range(0, len(examples), batch_size), description="KL to teacher", transient=True):
        batch = collate(examples[start:start + batch_size])
        ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        # Logits at position i predict token i + 1: score the positions whose next token is a label.
        mask = (labels[:, 1:] != IGNORE_INDEX).float()
        vocab = len(tokenizer)  # rows past the tokenizer (padded embeddings) carry no probability
        t_logits = teacher(input_ids=ids, attention_mask=attention).logits[:, :-1, :vocab]
        s_logits = student(input_ids=ids, attention_mask=attention).logits[:, :-1, :vocab]
        batch_sum, batch_count = token_kl(t_logits, s_logits, mask, temperature)
        total, count = total + batch_sum, count + batch_count
    if count == 0:
        raise CodeliftError(f"KL to teacher: no reference-solution token fits within max_length={max_length}.")
    return (total / count).item()
