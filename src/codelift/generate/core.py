"""The Generator interface every backend implements, and the text rules they share.

A backend turns prompts into `n` completions each, cut at the first stop sequence, with the
new-token count, the wall time and the mean token log-probability of every completion. Callers
(generate, eval, plan sampling, sequence-level KD, serve) pick a backend by name and never see
which one runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from codelift.errors import CodeliftError

_FENCED = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


@dataclass
class Generation:
    prompt: str
    completions: list[str]
    token_counts: list[int]  # new tokens of each completion (up to its stop; an end-of-sequence token not counted)
    seconds: float  # wall seconds spent on this prompt's share of its batches
    # Mean log-probability (temperature 1, before top-p) of each completion's tokens, to rank sampled
    # candidates; None where a backend cannot give it.
    mean_logprobs: list[float | None] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        """All new tokens of this prompt, for speed figures."""
        return sum(self.token_counts)


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for s in stop if (i := text.find(s)) != -1), default=len(text))
    return text[:cut]


def extract_code(answer: str) -> str:
    """The program in a chat or instruct answer, as the tests should see it.

    The first non-empty fenced code block (an unclosed one runs to the end); but where the answer
    opens with code that defines something and a closing fence follows with no opening one (a
    fine-tuned model's habit), that code. Where it parses, only what a test can use is kept: imports, function
    and class definitions, and the top-level assignments they read. The model's own example calls,
    prints, asserts and `if __name__` blocks go: measured on 200 MBPP problems, 37 of the shipped
    Qwen 0.5B's 52 failures were its own trailing asserts or calls, not the tests.
    """
    head = answer.split("```", 1)[0]
    blocks = [m.group(1) for m in _FENCED.finditer(answer) if m.group(1).strip()]
    code = head if _definitions(_parsed(head)) or not blocks else blocks[0]
    return keep_definitions(code.rstrip() + "\n")


def keep_definitions(code: str) -> str:
    """`code` with only its imports, definitions and the assignments those read; unchanged when it
    holds no definition. Code cut off by the token limit in its trailing examples is read up to its
    last line that leaves it parsing (20 of 164 HumanEval answers of the 0.5B ran into the limit)."""
    definitions = _definitions(tree := _parsed(code))
    if not definitions:
        code = _parsing_head(code)
        definitions = _definitions(tree := _parsed(code))
        if not definitions:
            return code
    assigned = {name: node for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for name in _assigned_names(node)}
    needed, todo = set(definitions), list(definitions)
    while todo:
        for name in {n.id for n in ast.walk(todo.pop()) if isinstance(n, ast.Name)}:
            if name in assigned and assigned[name] not in needed:
                needed.add(assigned[name])
                todo.append(assigned[name])
    kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) or node in needed]
    lines = code.splitlines()
    return "\n\n".join("\n".join(lines[_first_line(node) - 1:node.end_lineno]) for node in kept) + "\n"


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _parsing_head(code: str) -> str:
    """The longest run of whole first lines of `code` that parses and defines something; `code`
    itself when there is none."""
    lines = code.splitlines()
    for end in range(len(lines) - 1, 0, -1):
        head = "\n".join(lines[:end]) + "\n"
        if _definitions(_parsed(head)):
            return head
    return code


def _parsed(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _definitions(tree: ast.Module | None) -> list[ast.stmt]:
    """The top-level function and class definitions of a parsed module; none when it did not parse."""
    return [node for node in tree.body if isinstance(node, _DEFINITIONS)] if tree else []


def _assigned_names(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name)]


def _first_line(node: ast.stmt) -> int:
    """A statement's first line, its decorators included."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def check_sampling(n: int, max_new_tokens: int, temperature: float, top_p: float) -> None:
    """One clear error for settings every backend would reject in its own words."""
    if n < 1:
        raise CodeliftError(f"n must be at least 1, got {n}.")
    if max_new_tokens < 1:
        raise CodeliftError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if temperature < 0:
        raise CodeliftError(f"temperature must be 0 (greedy) or more, got {temperature}.")
    if not 0 < top_p <= 1:
        raise CodeliftError(f"top_p must be in (0, 1], got {top_p}.")


class Generator:
    """Prompts in, `Generation`s out. Subclasses set `tokenizer` and implement `generate`;
    `close` releases engines, connections or servers (also on leaving a `with` block)."""

    backend = ""
    OPTIONS: tuple[str, ...] = ()  # the keyword options its constructor takes
    tokenizer = None  # a Hugging Face tokenizer for rendering chat/instruct prompts, or None
    context_length: int | None = None  # prompt + new tokens the model takes, where known
    start_seconds = 0.0  # loading the model or starting the engine
    # True where the generator has `async agenerate(prompts, **same settings)`, which many requests may
    # await at once because the engine batches them continuously (serve then hands each request straight in).
    concurrent = False

    def generate(self, prompts: Sequence[str], *, n: int = 1, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 0.95, stop: Sequence[str] = (), seed: int = 42) -> list[Generation]:
        raise NotImplementedError

    def beam_search(self, prompts: Sequence[str], *, beams: int, max_new_tokens: int = 256,
                    stop: Sequence[str] = ()) -> list[Generation]:
        """The `beams` best beams of each prompt as its completions, best first (the PEFT study reads
        EM@10 and pass@10 off 10 beams); mean_logprobs are the beams' length-normalised scores."""
        raise CodeliftError(f"the {self.backend} backend has no beam search; use --backend hf or vllm.")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
