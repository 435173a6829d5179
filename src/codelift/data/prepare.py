"""`codelift data prepare`: load a source, clean it against the evaluation sets, write JSONL."""

from __future__ import annotations

import os
from collections import Counter

from codelift.data.clean import REASONS, clean_tasks
from codelift.data.loaders import load_tasks
from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.io import write_jsonl

# The evaluation sets training data must not overlap: (source, split).
EVALUATION_SETS = (("humaneval", "test"), ("mbpp", "validation"), ("mbpp", "test"))


def evaluation_references(data_dir, exclude: tuple[str, str | None]) -> dict[str, list[Task]]:
    """The evaluation sets found locally (the hub is not asked: MBPP test is held out here),
    minus the one being prepared, which cannot be decontaminated against itself."""
    found = {}
    for source, split in EVALUATION_SETS:
        if (source, split) == exclude:
            continue
        try:
            found[f"{source}:{split}"] = load_tasks(source, split, data_dir=data_dir, hub=False)
        except CodeliftError:
            continue
    return found


def prepare(source: str, split: str | None, out: str | os.PathLike, *, data_dir=None,
            fields: dict[str, str] | None = None, decontaminate: bool = True) -> tuple[list[Task], Counter, list[str]]:
    tasks = load_tasks(source, split, data_dir=data_dir, fields=fields)
    references = evaluation_references(data_dir, (source, split)) if decontaminate else {}
    kept, counts = clean_tasks(tasks, [t for ref in references.values() for t in ref])
    write_jsonl(out, (task.to_dict() for task in kept))
    ordered = Counter({reason: counts[reason] for reason in ("kept", *REASONS)})
    return kept, ordered, list(references)
