"""Parameter-efficient methods: one PEFT config per method, and the loading each one needs.

Quantised methods load the base through bitsandbytes, then `prepare_model_for_kbit_training`,
then `get_peft_model`, in that order (a no-grad forward before it breaks training on CPU).
"""

from __future__ import annotations

import torch

from codelift.config import SFTConfig
from codelift.errors import CodeliftError
from codelift.io import trust_remote_code
from codelift.models.load import check_decoder_only


def peft_config(cfg: SFTConfig):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    task = TaskType.CAUSAL_LM
    if cfg.method in ("lora", "qlora4", "qlora8"):
        return LoraConfig(task_type=task, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules)
    if cfg.method == "ia3":
        return IA3Config(task_type=task, target_modules=cfg.target_modules, feedforward_modules=[])
    if cfg.method == "prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.method == "prefix":
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=cfg.num_virtual_tokens)
    return None


def base_dtype(method: str) -> torch.dtype:
    """The dtype of the weights a method trains over. A PEFT method leaves them frozen, so on CUDA they
    are held in bf16 (fp16 where the GPU lacks bf16), as the PEFT study fits a 7B LoRA in 24 GB; the
    adapters themselves stay fp32 (PEFT's autocast). Full fine-tuning and CPU runs keep fp32 weights."""
    if method == "full" or not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def quantization_config(method: str):
    from transformers import BitsAndBytesConfig

    if method == "qlora4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    if method == "qlora8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_for_training(model_path: str, cfg: SFTConfig):
    """The model ready to train with `cfg.method`: full weights, or a PEFT wrapper."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    quantization = quantization_config(cfg.method)
    check_decoder_only(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=base_dtype(cfg.method), quantization_config=quantization,
                                                 trust_remote_code=trust_remote_code())
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft_config(cfg)
    if config is None:
        return model
    _check_targets(model, cfg)
    try:
        return get_peft_model(model, config)
    except (ValueError, NotImplementedError, AttributeError, TypeError) as e:
        raise CodeliftError(f"method '{cfg.method}' cannot apply to {type(model).__name__}: "
                            f"{str(e).splitlines()[0]}") from None


def _check_targets(model, cfg: SFTConfig) -> None:
    if cfg.method in ("prompt", "prefix"):
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise CodeliftError(f"target_modules {missing} are not modules of {type(model).__name__}; "
                            f"set target_modules to its attention projections (e.g. {sorted(names)[:8]}).")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; quantised 4-bit weights count as their logical size."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
