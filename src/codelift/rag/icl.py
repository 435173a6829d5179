"""In-context examples: the "n random examples" prompt context, the baseline RAG is measured against."""

from __future__ import annotations

import random
from collections.abc import Sequence

from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.rag.index import is_same_problem


def icl_examples(kb_tasks: Sequence[Task], n: int, seed: int = 42, exclude: Task | None = None) -> list[Task]:
    """n distinct tasks drawn at random from the knowledge base, never `exclude` itself.

    The generator is seeded with (seed, exclude's task_id): each problem gets its own draw, and
    the same one whatever the order or batching of an evaluation.
    """
    pool = [t for t in kb_tasks if exclude is None or not is_same_problem(exclude, t)]
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(pool):
        raise CodeliftError(f"n must be an integer from 0 to {len(pool)} (the knowledge base's tasks "
                            f"other than the problem itself), got {n!r}.")
    rng = random.Random(f"{seed}:{exclude.task_id}" if exclude is not None else seed)
    return rng.sample(pool, n)
