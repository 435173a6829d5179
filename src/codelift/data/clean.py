"""Cleaning training data: Python only, parseable, deduplicated, decontaminated.

Each record gets at most one drop reason, checked in the order below, so the drop table adds
up to the input count.
"""

from __future__ import annotations

import ast
import hashlib
import re
import warnings
from collections import Counter
from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH

from codelift.data.task import Task

REASONS = ("not_python", "contaminated", "exact_duplicate", "near_duplicate")
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)
_WORD = re.compile(r"\w+")


def strip_fences(text: str) -> str:
    """The code inside the first Markdown code fence, or the text itself when there is none."""
    match = _FENCE.search(text)
    return match.group(1) if match else text


def parse_python(code: str) -> ast.Module | None:
    """The AST of `code`, or None when it does not compile (`ast.parse` alone accepts a
    `return` outside a function). Silent: datasets are full of invalid escapes that only warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(code)
            compile(tree, "<code>", "exec")
            return tree
        except (SyntaxError, ValueError):
            return None


def is_python_code(code: str) -> bool:
    """True when `code` parses and does something: prose such as `Hello` or `42` parses as a
    bare expression, so a program made only of bare names and constants does not count."""
    tree = parse_python(code)
    if tree is None:
        return False
    inert = (ast.Constant, ast.Name, ast.Attribute)
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, inert)) for node in tree.body)


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens; punctuation is left out so that `for i in range(` style
    boilerplate does not dominate the n-grams of code."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = tokens(text)
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def contamination_index(references: Iterable[Task], text_n: int, code_n: int) -> set[tuple[str, ...]]:
    """Every text_n-gram of the evaluation problems' texts and code_n-gram of their solutions."""
    index: set[tuple[str, ...]] = set()
    for task in references:
        index |= ngrams(task.instruction, text_n) | ngrams(task.solution, code_n)
    return index


def _minhash(text: str, num_perm: int) -> MinHash:
    toks = tokens(text)
    shingles = {" ".join(toks[i:i + 3]).encode() for i in range(max(1, len(toks) - 2))}
    m = MinHash(num_perm=num_perm)
    m.update_batch(list(shingles))
    return m


def clean_tasks(tasks: Iterable[Task], references: Iterable[Task] = (), *, text_ngram: int = 10,
                code_ngram: int = 20, near_duplicate_threshold: float = 0.85,
                num_perm: int = 128) -> tuple[list[Task], Counter]:
    """Keep Python records whose code parses; drop any record that shares a `text_ngram`-word
    sequence of its instruction, or a `code_ngram`-word sequence of its code, with an evaluation
    problem (code is longer because code shares idioms more than prose does); drop exact and
    near duplicates (MinHash LSH over word 3-gram shingles, Jaccard >= threshold).
    Returns the kept tasks and a count per outcome."""
    contaminating = contamination_index(references, text_ngram, code_ngram)
    lsh = MinHashLSH(threshold=near_duplicate_threshold, num_perm=num_perm)
    seen: set[str] = set()
    kept, counts = [], Counter()
    for task in tasks:
        code = strip_fences(task.solution).strip("\n")
        text = f"{task.instruction}\n{code}"
        digest = hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()
        signature = _minhash(text, num_perm)
        if not is_python_code(code):
            reason = "not_python"
        elif contaminating and not contaminating.isdisjoint(ngrams(task.instruction, text_ngram) | ngrams(code, code_ngram)):
            reason = "contaminated"
        elif digest in seen:
            reason = "exact_duplicate"
        elif lsh.query(signature):
            reason = "near_duplicate"
        else:
            reason = "kept"
            seen.add(digest)
            lsh.insert(task.task_id, signature)
            task.solution = code
            kept.append(task)
        counts[reason] += 1
    return kept, counts
