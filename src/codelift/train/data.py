"""Turning tasks into training examples: prompt tokens masked out, response tokens learned."""

from __future__ import annotations

from collections.abc import Sequence

from codelift.data.task import Task
from codelift.prompts import instruct_prompt, task_instruction

IGNORE_INDEX = -100


def encode_example(tokenizer, prompt: str, response: str, max_length: int) -> dict:
    """Token ids of prompt + response + EOS, with labels only on the response and EOS.

    Prompt and response are tokenised separately and concatenated: the boundary is then exact
    even where tokenising the joined text would merge characters across it, and the prompt ids
    are the very ids the model is given at inference.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def sft_examples(tasks: Sequence[Task], tokenizer, max_length: int):
    """A `datasets.Dataset` of encoded examples in the instruction template used at inference.

    Each row's `example` is its task's index in `tasks`, so rows can be matched to per-example
    data kept elsewhere (a teacher cache) after filtering, splitting and shuffling."""
    from datasets import Dataset

    rows = [encode_example(tokenizer, instruct_prompt(task_instruction(t)), t.solution, max_length) | {"example": i}
            for i, t in enumerate(tasks)]
    return Dataset.from_list([r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])])
