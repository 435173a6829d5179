"""Top-p (nucleus) sampling for vLLM on CPU without sorting the vocabulary.

vLLM's CPU sampler applies top_p by sorting every row's whole vocabulary at every step (151,936
entries for Qwen): measured with `bench/sampling.py`, that sort takes 58% of a sampled run's time.
The nucleus is almost always among the few most likely tokens, so this logits processor finds it
among the top `TOP_K` of each row (a partial selection, not a sort) and sorts a row whole only where
those hold less than p of the mass. It keeps exactly the tokens vLLM's own top_p keeps (a token is
kept while the mass of the tokens above it is below p), on the temperature-scaled logits (vLLM applies
argmax-invariant processors after the temperature). The vllm backend asks for it on CPU by sending
top_p in `SamplingParams.extra_args` and top_p=1.0 to vLLM.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from codelift.generate.vllm import NUCLEUS_ARG

TOP_K = 128  # tokens searched for the nucleus before a row falls back to a full sort


def nucleus_mask(logits: torch.Tensor, top_p: torch.Tensor, top_k: int = TOP_K) -> torch.Tensor:
    """True where a token is outside its row's nucleus: the most likely tokens whose mass before each
    (in descending order) is below the row's p; the first token is always kept."""
    probs = logits.softmax(dim=-1)
    k = min(top_k, logits.shape[-1])
    top, index = probs.topk(k, dim=-1)
    if bool((top.sum(dim=-1) < top_p).any()):  # a nucleus reaches past the top k (a flat row): sort them whole
        top, index = probs.sort(dim=-1, descending=True)
    above = top.cumsum(dim=-1) - top
    keep = above < top_p.unsqueeze(-1)
    keep[:, 0] = True
    outside = torch.ones_like(logits, dtype=torch.bool)
    return outside.scatter_(-1, index, ~keep)


class NucleusLogitsProcessor(LogitsProcessor):
    """Each request's top_p (from `extra_args`), applied to its row of every step's logits."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.top_p: dict[int, float] = {}  # batch row -> p, for the rows that asked

    def is_argmax_invariant(self) -> bool:
        return True  # the most likely token is always kept, so greedy rows are untouched

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        for row in batch_update.removed:
            self.top_p.pop(row, None)
        for row, params, _, _ in batch_update.added:
            p = (params.extra_args or {}).get(NUCLEUS_ARG)
            if p is not None and p < 1.0:
                self.top_p[row] = p
            else:
                self.top_p.pop(row, None)
        for source, target, direction in batch_update.moved:
            moving, replaced = self.top_p.pop(source, None), self.top_p.pop(target, None)
            if moving is not None:
                self.top_p[target] = moving
            if direction == MoveDirectionality.SWAP and replaced is not None:
                self.top_p[source] = replaced

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.top_p:
            return logits
        rows = torch.tensor(list(self.top_p), dtype=torch.long)
        top_p = torch.tensor(list(self.top_p.values()), dtype=torch.float32)
        logits[rows] = logits[rows].masked_fill(nucleus_mask(logits[rows], top_p), float("-inf"))
        return logits
