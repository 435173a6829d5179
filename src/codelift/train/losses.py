"""Every token-level loss of the training stages, in one place, with one convention.

Conventions (the peers' bug trackers are full of the alternatives):
- Divergences run in fp32 with autocast off, whatever dtype the logits come in.
- D(p_T || p_S) with p = softmax(logits / T). `forward` is KL(p_T || p_S), `reverse` is KL(p_S || p_T),
  `jsd` is the generalised JSD through M = beta * p_T + (1 - beta) * p_S:
  beta * KL(p_T || M) + (1 - beta) * KL(p_S || M); beta = 0 and 1 are forward and reverse KL exactly
  (the mixture form tends to 0 at both ends, so the ends are defined as the KLs, as in TRL).
- Every loss here returns a *sum* over tokens; the caller divides by the number of response tokens
  of the whole gradient-accumulation window (`num_items_in_batch`), never per micro-batch.
- The KD term of the optimised objective is multiplied by T^2 (Hinton et al.), so its gradients keep
  their scale as T changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from codelift.train.data import IGNORE_INDEX

DIVERGENCES = ("forward", "reverse", "jsd")
_LOG_FLOOR = -1e4  # stands in for log(0): exp() of it is exactly 0 in fp32, and 0 * it stays finite


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from log-probabilities; zero-probability terms add 0."""
    log_p, log_q = log_p.clamp_min(_LOG_FLOOR), log_q.clamp_min(_LOG_FLOOR)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def divergence(teacher_log_probs: torch.Tensor, student_log_probs: torch.Tensor, kind: str = "forward",
               beta: float = 0.5) -> torch.Tensor:
    """Per-position D(p_T || p_S) over the last dimension (see the module docstring)."""
    with torch.autocast(teacher_log_probs.device.type, enabled=False):
        t, s = teacher_log_probs.float(), student_log_probs.float()
        if kind == "forward" or (kind == "jsd" and beta == 0):
            return _kl(t, s)
        if kind == "reverse" or (kind == "jsd" and beta == 1):
            return _kl(s, t)
        if kind != "jsd":
            raise ValueError(f"divergence '{kind}': expected one of {', '.join(DIVERGENCES)}")
        mixture = torch.logsumexp(torch.stack([t + torch.log(torch.tensor(beta)),
                                               s + torch.log1p(torch.tensor(-beta))]), dim=0)
        return beta * _kl(t, mixture) + (1 - beta) * _kl(s, mixture)


def tempered_log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    with torch.autocast(logits.device.type, enabled=False):
        return F.log_softmax(logits.float() / temperature, dim=-1)


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast(logits.device.type, enabled=False):
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def bucketed_log_probs(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_log_probs: torch.Tensor,
                       teacher_tail: torch.Tensor, temperature: float, tail: str = "bucket"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student distributions over the teacher's top-k ids, from a top-k cache.

    `teacher_log_probs` are top-k entries of the teacher's full log-softmax at T = 1 and
    `teacher_tail` the log of the mass outside them. With `tail="bucket"` both distributions get a
    (k+1)-th entry for everything else (the student's is its exact mass outside the ids), and the
    temperature softens these two (k+1)-way distributions alike. Tempering the student's tail token
    by token while the teacher's is one bucket would make their tails incomparable at T != 1: at
    T = 2 the optimum drives the student's tail mass to zero, a sharper student than the teacher.
    Treated alike, the loss is least where the student's top-k and tail masses equal the teacher's.
    With `tail="renormalize"` both are renormalised over the k ids.
    """
    with torch.autocast(student_logits.device.type, enabled=False):
        student = tempered_log_probs(student_logits)
        at_ids = student.gather(-1, teacher_ids)
        teacher = teacher_log_probs.float()
        if tail == "bucket":
            student_tail = student.scatter(-1, teacher_ids, float("-inf")).logsumexp(-1, keepdim=True)
            teacher = torch.cat([teacher, teacher_tail.float().unsqueeze(-1)], -1)
            at_ids = torch.cat([at_ids, student_tail], -1)
        elif tail != "renormalize":
            raise ValueError(f"tail '{tail}': expected bucket or renormalize")
        return F.log_softmax(teacher / temperature, -1), F.log_softmax(at_ids / temperature, -1)


def chunked_sums(fn: Callable[..., tuple[torch.Tensor, ...]], *rows: torch.Tensor, chunk_size: int = 1024
                 ) -> tuple[torch.Tensor, ...]:
    """Sum `fn` over row chunks of `rows`, recomputing each chunk in the backward pass.

    `fn` maps a chunk of hidden states (and aligned targets) to summed losses. Under autograd each
    chunk is checkpointed, so only one chunk's [rows, vocab] logits exist at a time, forward or
    backward: the full [batch, seq, vocab] fp32 tensor is never built.
    """
    total = None
    for start in range(0, rows[0].shape[0], chunk_size):
        chunk = [r[start:start + chunk_size] for r in rows]
        if torch.is_grad_enabled() and any(r.requires_grad for r in chunk):
            sums = checkpoint(fn, *chunk, use_reentrant=False)
        else:
            sums = fn(*chunk)
        total = sums if total is None else tuple(a + b for a, b in zip(total, sums))
    return total


# --- losses of a model on a batch -----------------------------------------------------------------

def response_states(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict a response token, and those tokens.

    The model computes logits for one position only (`logits_to_keep=1`); callers project the
    [tokens, hidden] states through the head in chunks, so no [batch, seq, vocab] tensor exists.
    Prompt tuning prepends virtual tokens, so positions are aligned from the right.
    """
    hidden, targets = predicting_states(model, batch)
    mask = targets != IGNORE_INDEX
    return hidden[mask], targets[mask]


def predicting_states(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, seq - 1, hidden] final hidden states and the [rows, seq - 1] labels they predict."""
    labels = batch["labels"]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][:, -labels.shape[1]:-1], labels[:, 1:]


def output_logits(model, vocab: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's head as a function of hidden states, cut to the first `vocab` ids: rows past
    the tokenizer (Qwen pads its embeddings to 151,936) then carry no probability at all."""
    model = getattr(model, "module", model)  # under DistributedDataParallel
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = head(hidden)
        if cap:
            out = torch.tanh(out / cap) * cap
        return out[..., :vocab] if vocab else out

    return logits


def cross_entropy_loss(model, batch: dict, chunk_size: int = 1024) -> dict:
    """The SFT loss: summed cross-entropy of the response tokens, computed chunk by chunk."""
    hidden, targets = response_states(model, batch)
    logits = output_logits(model)
    (ce,) = chunked_sums(lambda h, y: (cross_entropy_sum(logits(h), y),), hidden, targets, chunk_size=chunk_size)
    return {"loss": ce, "tokens": targets.numel()}


def sequence_log_probs(model, batch: dict, chunk_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its response tokens, and how many there are (the
    sequence scores preference losses compare), computed chunk by chunk like the SFT loss."""
    hidden, targets = predicting_states(model, batch)
    mask = targets != IGNORE_INDEX
    rows = mask.nonzero()[:, 0]
    logits = output_logits(model)

    def chunk(h, y, r):
        scores = logits(h)
        with torch.autocast(h.device.type, enabled=False):
            token_log_probs = -F.cross_entropy(scores.float(), y, reduction="none")
        return (torch.zeros(len(targets), device=h.device).index_add(0, r, token_log_probs),)

    (sums,) = chunked_sums(chunk, hidden[mask], targets[mask], rows, chunk_size=chunk_size)
    return sums, mask.sum(1)


def distillation_objective(ce: torch.Tensor, kd: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """alpha * T^2 * KD + (1 - alpha) * CE: the T^2 is in what is optimised, not only in the log."""
    return alpha * temperature**2 * kd + (1 - alpha) * ce


def logit_kd_loss(model, batch: dict, *, teacher, cfg, vocab: int) -> dict:
    """Online logit distillation: the teacher runs on the same batch without gradients, and both
    are projected to the first `vocab` ids (the shared tokenizer) chunk by chunk.

    `cfg` carries temperature, alpha, divergence, beta and loss_chunk_size (a DistillConfig)."""
    hidden, targets = response_states(model, batch)
    with torch.no_grad():
        teacher_hidden, _ = response_states(teacher, batch)
    student_logits, teacher_logits = output_logits(model, vocab), output_logits(teacher, vocab)

    def chunk(h, th, y):
        logits = student_logits(h)
        with torch.no_grad():
            teacher_lp = tempered_log_probs(teacher_logits(th), cfg.temperature)
        kd = divergence(teacher_lp, tempered_log_probs(logits, cfg.temperature), cfg.divergence, cfg.beta)
        return cross_entropy_sum(logits, y), kd.sum()

    ce, kd = chunked_sums(chunk, hidden, teacher_hidden, targets, chunk_size=cfg.loss_chunk_size)
    return {"loss": distillation_objective(ce, kd, cfg.alpha, cfg.temperature), "tokens": targets.numel(),
            "ce": ce, "kd": kd}


def cached_kd_loss(model, batch: dict, *, cfg, vocab: int) -> dict:
    """Distillation from a top-k teacher cache: the batch carries, per response token in order,
    the teacher's top-k ids, their log-probabilities and the log tail mass (see TeacherCacheCollator)."""
    hidden, targets = response_states(model, batch)
    ids, log_probs, tail = batch["teacher_ids"], batch["teacher_log_probs"], batch["teacher_tail"]
    if ids.shape[0] != targets.numel():
        raise ValueError(f"teacher cache rows ({ids.shape[0]}) do not match the batch's response tokens "
                         f"({targets.numel()}): the cache was made from other data or settings")
    logits = output_logits(model, vocab)

    def chunk(h, y, i, lp, t):
        student_logits = logits(h)
        teacher_b, student_b = bucketed_log_probs(student_logits, i, lp, t, cfg.temperature, cfg.cache_tail)
        kd = divergence(teacher_b, student_b, cfg.divergence, cfg.beta)
        return cross_entropy_sum(student_logits, y), kd.sum()

    ce, kd = chunked_sums(chunk, hidden, targets, ids, log_probs, tail, chunk_size=cfg.loss_chunk_size)
    return {"loss": distillation_objective(ce, kd, cfg.alpha, cfg.temperature), "tokens": targets.numel(),
            "ce": ce, "kd": kd}
