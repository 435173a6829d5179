"""Training stages: supervised fine-tuning (and, later, distillation)."""
