"""Model loading (hub id, folder, GGUF, embedded defaults) and depth pruning."""

from codelift.models.load import EMBEDDED, check_same_vocabulary, load_model, load_tokenizer, model_info, prepare_model
from codelift.models.prune import prune_layers, prune_model

__all__ = ["EMBEDDED", "check_same_vocabulary", "load_model", "load_tokenizer", "model_info", "prepare_model",
           "prune_layers", "prune_model"]
