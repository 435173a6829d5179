import json

import pytest

from codelift.config import EvalConfig
from codelift.data import load_tasks
from codelift.errors import CodeliftError
from codelift.evaluate.run import evaluate_model
from codelift.prompts import CONTEXT_HEADER, INSTRUCTION_HEADER, RESPONSE_HEADER, render_prompt
from codelift.rag import build_index, load_index
from codelift.rag.context import task_contexts


@pytest.fixture(scope="module")
def kb_index(tmp_path_factory, data_dir):
    """MBPP validation 511-516 plus prompt-split tasks: the evaluated problems are in the index."""
    tasks = load_tasks("mbpp", "validation", data_dir=data_dir)[:6] + load_tasks("mbpp", "prompt", data_dir=data_dir)
    out = tmp_path_factory.mktemp("index") / "mbpp"
    build_index(tasks, out, kind="flat", progress=False)
    return out


def test_rag_prompt_has_context_instruction_and_response_in_that_order(kb_index, data_dir):
    task = load_tasks("mbpp", "validation", data_dir=data_dir)[0]
    [context] = task_contexts([task], "rag", 2, load_index(kb_index), "instruct")
    prompt = render_prompt(task, "instruct", context=context.text)
    parts = [prompt.index(CONTEXT_HEADER), prompt.index(INSTRUCTION_HEADER), prompt.index(RESPONSE_HEADER)]
    assert parts == sorted(parts) and prompt.endswith(RESPONSE_HEADER)
    assert prompt.count("<example ") == 2 and prompt.count("</example>") == 2
    assert task.task_id not in context.example_ids and context.dropped_self_hits == 1
    assert context.embed_seconds > 0 and context.search_seconds > 0


def test_icl_is_seeded_and_never_shows_the_task_itself(kb_index, data_dir):
    tasks = load_tasks("mbpp", "validation", data_dir=data_dir)[:3]
    retriever = load_index(kb_index)
    first = task_contexts(tasks, "icl", 4, retriever, "instruct")
    again = task_contexts(tasks[::-1], "icl", 4, retriever, "instruct")[::-1]
    assert [c.example_ids for c in first] == [c.example_ids for c in again]
    assert all(t.task_id not in c.example_ids and len(c.example_ids) == 4 for t, c in zip(tasks, first))


def test_context_options_are_checked(kb_index, data_dir):
    task = load_tasks("mbpp", "validation", data_dir=data_dir)[0]
    with pytest.raises(CodeliftError, match="needs --index DIR"):
        task_contexts([task], "rag", 3, None, "instruct")
    with pytest.raises(CodeliftError, match="--examples must be from 1 to 16"):
        task_contexts([task], "rag", 17, load_index(kb_index), "instruct")
    with pytest.raises(CodeliftError, match="--context 'bm25'"):
        task_contexts([task], "bm25", 3, None, "instruct")


def test_rag_eval_reports_dropped_self_hits_and_retrieval_time(tiny_model_dir, kb_index, data_dir, tmp_path):
    cfg = EvalConfig(model=str(tiny_model_dir), benchmark="mbpp", split="validation", prompt_format="instruct", limit=4,
                     max_new_tokens=8, codebleu=False, context="rag", examples=3, index=str(kb_index))
    summary = evaluate_model(cfg, tmp_path, data_dir=data_dir)
    assert summary["dropped_self_hits"] == 4 and summary["retrieval_ms_per_task"] > 0
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        assert len(row["context_ids"]) == 3 and row["task_id"] not in row["context_ids"]
        assert row["retrieval_search_seconds"] > 0 and row["retrieval_embed_seconds"] > 0


def test_generate_puts_retrieved_examples_before_the_prompt(tiny_model_dir, kb_index):
    from typer.testing import CliRunner

    from codelift.cli import app

    result = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "Write a python function to find minimum sum "
                                      "of factors of a given number.", "--context", "rag", "--index", str(kb_index),
                                      "--examples", "2", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    context_line = [line for line in result.output.splitlines() if line.startswith("context:")][0]
    ids = context_line.removeprefix("context: ").split(", ")
    assert len(ids) == 2 and "mbpp/511" not in ids  # the identical problem text is never its own example
