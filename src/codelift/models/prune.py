"""Depth pruning: a student that keeps evenly spaced decoder layers of its teacher.

The student shares the teacher's tokenizer and embeddings, so logit distillation needs no
vocabulary mapping; its lost ability comes back through SFT and KD.
"""

from __future__ import annotations

import os

from torch import nn

from codelift.errors import CodeliftError
from codelift.io import atomic_path, write_json


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` indices from range(total), first and last included, as evenly spaced as possible."""
    if not 1 <= keep <= total:
        raise CodeliftError(f"--keep-layers must be between 1 and {total} (the model's layer count), got {keep}.")
    if keep == 1:
        return [0]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of decoder blocks (`model.layers`, `transformer.h`, ...) and its parent."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    raise CodeliftError(f"{type(model).__name__}: cannot find its {n} decoder layers to prune.")


def prune_layers(model: nn.Module, keep_layers: int) -> list[int]:
    """Keep `keep_layers` evenly spaced decoder layers in place; return the kept indices."""
    parent, attr, layers = decoder_layers(model)
    kept = evenly_spaced(len(layers), keep_layers)
    setattr(parent, attr, nn.ModuleList(layers[i] for i in kept))
    for new_index, layer in enumerate(getattr(parent, attr)):
        for module in layer.modules():  # the KV cache is indexed by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = keep_layers
    return kept


def prune_model(source: str, keep_layers: int, out: str | os.PathLike) -> list[int]:
    """Write a depth-pruned copy of `source` (model, tokenizer, pruning.json) to `out`."""
    from codelift.models.load import load_model

    model, tokenizer = load_model(source)
    total = model.config.num_hidden_layers
    kept = prune_layers(model, keep_layers)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "pruning.json", {"source": source, "source_layers": total, "kept_layers": kept})
    return kept
