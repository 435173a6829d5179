"""Retrieval-augmented generation: embed a knowledge base, index it with FAISS, retrieve examples."""

from codelift.rag.icl import icl_examples
from codelift.rag.index import (
    DEFAULT_EMBEDDER,
    DOCUMENT_MODES,
    FAISS_HNSW_DEFAULTS,
    INDEX_KINDS,
    MAX_K,
    Hit,
    Retriever,
    SearchResult,
    build_index,
    document_text,
    is_same_problem,
    load_index,
)

__all__ = ["DEFAULT_EMBEDDER", "DOCUMENT_MODES", "FAISS_HNSW_DEFAULTS", "INDEX_KINDS", "MAX_K", "Hit",
           "Retriever", "SearchResult", "build_index", "document_text", "icl_examples", "is_same_problem",
           "load_index"]
