"""Turning tasks into training examples: prompt tokens masked out, response tokens learned."""

from __future__ import annotations

from collections.abc import Sequence

from codelift.data.task import Task
from codelift.prompts import prompt_ids, task_training_example

IGNORE_INDEX = -100


def encode_example(tokenizer, prompt: str, target: str, max_length: int, *, add_eos: bool = True) -> dict:
    """Token ids of prompt + target (+ EOS), with labels only on the target (and EOS).

    Prompt and target are tokenised separately and concatenated: the boundary is then exact even
    where tokenising the joined text would merge characters across it, and the prompt ids are the
    very ids every generation backend gives the model (`prompts.prompt_ids`). A chat target ends in
    its template's end-of-turn token already, so it takes no EOS.
    """
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
    given = prompt_ids(tokenizer, prompt)
    input_ids = (given + target_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(given) + target_ids)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def encode_task(task: Task, tokenizer, fmt: str, max_length: int) -> dict:
    """A task as a training example in prompt format `fmt`, its solution the target."""
    prompt, target, add_eos = task_training_example(task, fmt, tokenizer)
    return encode_example(tokenizer, prompt, target, max_length, add_eos=add_eos)


def sft_examples(tasks: Sequence[Task], tokenizer, fmt: str, max_length: int):
    """A `datasets.Dataset` of encoded examples in prompt format `fmt`, as evaluation prompts them.

    Each row's `example` is its task's index in `tasks`, so rows can be matched to per-example
    data kept elsewhere (a teacher cache) after filtering, splitting and shuffling."""
    from datasets import Dataset

    rows = [encode_task(t, tokenizer, fmt, max_length) | {"example": i} for i, t in enumerate(tasks)]
    return Dataset.from_list([r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])])
