"""Training stages: supervised fine-tuning, distillation (logit, sequence, on-policy) and plan training."""
