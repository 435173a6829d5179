"""The context part of a prompt: nothing, n random examples (ICL) or the top-k retrieved (RAG).

Retrieval is timed apart from generation (query embedding and search separately), and the
self-hits it drops (a benchmark problem found in the knowledge base) are counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.prompts import examples_context
from codelift.rag.icl import icl_examples
from codelift.rag.index import MAX_K, Retriever

CONTEXTS = ("none", "icl", "rag")


@dataclass
class Context:
    text: str = ""
    example_ids: list[str] = field(default_factory=list)
    embed_seconds: float = 0.0
    search_seconds: float = 0.0
    dropped_self_hits: int = 0


def check_context(kind: str, k: int, retriever: Retriever | None) -> None:
    if kind not in CONTEXTS:
        raise CodeliftError(f"--context '{kind}': expected one of {', '.join(CONTEXTS)}.")
    if kind != "none" and not 1 <= k <= MAX_K:
        raise CodeliftError(f"--examples must be from 1 to {MAX_K}, got {k}.")
    if kind != "none" and retriever is None:
        raise CodeliftError(f"--context {kind} needs --index DIR (the knowledge base to draw examples from).")


def task_contexts(tasks: Sequence[Task], kind: str, k: int, retriever: Retriever | None, fmt: str,
                  seed: int = 42) -> list[Context]:
    """One context per task; a task never sees itself among its examples."""
    check_context(kind, k, retriever)
    if kind == "none":
        return [Context() for _ in tasks]
    if kind == "icl":
        chosen = [icl_examples(retriever.tasks, k, seed=seed, exclude=task) for task in tasks]
        return [Context(examples_context(examples, fmt), [t.task_id for t in examples]) for examples in chosen]
    found = retriever.search([t.instruction for t in tasks], k, exclude=list(tasks))
    share = 1 / len(tasks)
    return [Context(examples_context([h.task for h in hits], fmt), [h.task.task_id for h in hits],
                    found.embed_seconds * share, found.search_seconds * share, dropped)
            for hits, dropped in zip(found.hits, found.dropped)]
