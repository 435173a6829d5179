"""On-policy distillation (GKD, Agarwal et al. 2024): the student also learns where it actually goes.

For a fraction `lmbda` of training batches the responses are replaced by the student's own samples
(temperature 1, up to max_new_tokens, ending at EOS), the teacher scores those tokens, and the
divergence is taken on them alone: prompt and everything after EOS are masked. Other batches take
the ordinary (off-policy) KD loss. The draw uses the global torch RNG, which checkpoints save and
resumes restore.
"""

from __future__ import annotations

import torch

from codelift.train.data import IGNORE_INDEX
from codelift.train.losses import logit_kd_loss


def on_policy_loss(model, batch: dict, *, offline, teacher, tokenizer, cfg, vocab: int) -> dict:
    """`offline(model, batch)` on most batches; on a fraction lmbda, KD on the student's samples.

    An on-policy micro-batch is averaged over its own sampled tokens and given the share of the
    accumulation window that its original responses had, so the two kinds of step weigh alike.
    """
    if not model.training or torch.rand(()) >= cfg.lmbda:
        return offline(model, batch)
    sampled = student_samples(model, batch, tokenizer, cfg.max_new_tokens)
    kd_only = cfg.model_copy(update={"alpha": 1.0})
    sums = logit_kd_loss(model, sampled, teacher=teacher, cfg=kd_only, vocab=vocab)
    original = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    share = original / max(sums["tokens"], 1)
    return {"loss": sums["loss"] * share, "tokens": original, "kd": sums["kd"] * share}


@torch.no_grad()
def student_samples(model, batch: dict, tokenizer, max_new_tokens: int) -> dict:
    """A right-padded batch of prompt + the student's sampled continuation, labelled on the
    sampled tokens up to and including the first EOS."""
    inner = getattr(model, "module", model)
    prompts = [ids[:int((labels != IGNORE_INDEX).nonzero()[0])] if (labels != IGNORE_INDEX).any() else ids[mask.bool()]
               for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"])]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    left = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros_like(left)
    for row, prompt in enumerate(prompts):
        left[row, width - len(prompt):], attention[row, width - len(prompt):] = prompt, 1
    was_training = inner.training
    inner.eval()
    out = inner.generate(input_ids=left.to(batch["input_ids"].device), attention_mask=attention.to(left.device),
                         do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    inner.train(was_training)
    rows = []
    for prompt, generated in zip(prompts, out[:, width:].cpu()):
        ends = (generated == tokenizer.eos_token_id).nonzero()
        response = generated[:int(ends[0]) + 1] if len(ends) else generated
        rows.append((prompt.cpu(), response))
    length = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention = torch.zeros_like(input_ids)
    for row, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        input_ids[row, :n] = torch.cat([prompt, response])
        labels[row, len(prompt):n] = response
        attention[row, :n] = 1
    device = batch["input_ids"].device
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": attention.to(device)}
