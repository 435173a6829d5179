"""`codelift sft`: supervised fine-tuning with any method of the PEFT family.

The recipe: resolve the config -> encode the tasks (loss on response tokens only) -> load the
model for the method -> fit on the training core with the chunked cross-entropy -> write the
run manifest.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from transformers import set_seed

from codelift.config import SFTConfig
from codelift.io import write_json
from codelift.models.adapters import load_for_training
from codelift.models.load import load_tokenizer, prepare_model
from codelift.train.core import fit, training_sets, with_prompt_format
from codelift.train.losses import cross_entropy_loss


def train_sft(model: str, data: str, out: Path, cfg: SFTConfig, *, validation: str | None = None,
              merge: bool = False, stage: str = "sft", extra: dict | None = None) -> dict:
    """Fine-tune `model` on the tasks in `data`; returns the run manifest written to run.json.

    Stages that end in SFT (sequence-level KD) pass their name and what they add to the manifest."""
    cfg = cfg.resolved()
    set_seed(cfg.seed)
    model_path = prepare_model(model)
    tokenizer = load_tokenizer(model_path)
    cfg = with_prompt_format(cfg, tokenizer)
    train_set, val_set = training_sets(data, validation, tokenizer, cfg)
    lm = load_for_training(model_path, cfg)
    trainer, manifest = fit(stage, lm, tokenizer, train_set, val_set, out, cfg,
                            token_loss=partial(cross_entropy_loss, chunk_size=cfg.loss_chunk_size),
                            merge_base=model_path if merge else None,
                            title=f"SFT ({cfg.method}) on {Path(data).name}")
    if not trainer.is_world_process_zero():
        return {}
    manifest |= {"model": model, "data": data, "validation": validation} | (extra or {})
    write_json(out / "run.json", manifest)
    return manifest
