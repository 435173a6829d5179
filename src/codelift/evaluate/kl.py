"""KL(teacher || student) over the response tokens of held-out tasks: how far a student's
next-token distributions are from its teacher's where it matters, on reference solutions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.progress import track

from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.prompts import default_format
from codelift.train.core import ExampleCollator
from codelift.train.data import encode_task
from codelift.train.losses import chunked_sums, divergence, output_logits, response_states, tempered_log_probs


@torch.inference_mode()
def kl_to_teacher(student, teacher, tokenizer, tasks: Sequence[Task], *, batch_size: int = 4,
                  max_length: int = 512, temperature: float = 1.0, chunk_size: int = 256) -> float:
    """Mean per-token KL(teacher || student) on the reference solutions of `tasks`, prompted as the
    student trains and is evaluated (its chat template where it has one); one tokenizer for both.
    Logits exist only at response positions, `chunk_size` at a time (as in training): at Qwen's
    vocabulary a [batch, seq, vocab] tensor per model would be over a gigabyte."""
    if min(student.config.vocab_size, teacher.config.vocab_size) < len(tokenizer):
        raise CodeliftError(f"--kl-teacher: a model has fewer output rows (student {student.config.vocab_size}, "
                            f"teacher {teacher.config.vocab_size}) than the tokenizer ({len(tokenizer)}); "
                            f"KL needs the same tokenizer.")
    fmt = default_format(tokenizer)
    examples = [encode_task(t, tokenizer, fmt, max_length) for t in tasks]
    collate = ExampleCollator(tokenizer)  # the training batches' padding
    vocab = len(tokenizer)  # rows past the tokenizer (padded embeddings) carry no probability
    student_logits, teacher_logits = output_logits(student, vocab), output_logits(teacher, vocab)

    def chunk_kl(hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> tuple[torch.Tensor]:
        teacher_lp = tempered_log_probs(teacher_logits(teacher_hidden), temperature)
        return (divergence(teacher_lp, tempered_log_probs(student_logits(hidden), temperature)).sum(),)

    total, count = 0.0, 0
    for start in track(range(0, len(examples), batch_size), description="KL to teacher", transient=True):
        batch = collate(examples[start:start + batch_size])
        hidden, _ = response_states(student, batch)
        teacher_hidden, _ = response_states(teacher, batch)
        if hidden.shape[0]:
            (batch_sum,) = chunked_sums(chunk_kl, hidden, teacher_hidden, chunk_size=chunk_size)
            total, count = total + float(batch_sum), count + hidden.shape[0]
    if count == 0:
        raise CodeliftError(f"KL to teacher: no reference-solution token fits within max_length={max_length}.")
    return total / count
