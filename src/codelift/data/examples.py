"""A docstring's examples as assertions: the visible tests that selection runs candidates on.

Choosing among a model's samples by running them is only as good as the tests it may see, and a
problem without any is chosen blind (by log-probability). HumanEval shows its examples as doctests
in 70 problems and in prose in most of the rest, in several styles:

    f(1, 2) ➞ 3          f("a") # => 'Yes' (why)        For lst = [1, 2] the output should be 3
    f(x) == y            f(4) = 2                       Input: arr = [1, 2], k = 1 / Output: [2]

Every example becomes `assert f(args) == value` only where it parses safely: one call of the entry
point on literal arguments (named ones mapped onto the signature's order), one literal value. Some
docstrings are themselves wrong (HumanEval/47, 116, 148) or write a recurrence in call form
(`tri(4) = 3`, where `tri` returns a list): such a test fails every candidate alike, so it costs
selection its "first that passes all" shortcut there but not its ranking by tests passed.
"""

from __future__ import annotations

import ast
import doctest
import re

from codelift.data.clean import parse_python

CLOSING_QUOTES = re.compile(r"\n\s*(\"\"\"|''')\s*$")  # a docstring's end, after its last example
OPENING_QUOTES = re.compile(r"^(\"\"\"|''')")  # a docstring's start, before its first line
# What may stand between a call and its value ("# =>", "➞", "should return", ...), longest first.
SEPARATOR = re.compile(r"\s*#?\s*(?:==>|==|➞|=>|->|=|returns|should return|should be|is)\s*")
NAMED_EXAMPLE = re.compile(r"^For (?P<inputs>.+?)[, ]+the (?:output|result) (?:should be|will be|is)\s+(?P<value>.+)$")
VALUE_END = re.compile(r"\s+(?:#|\().*$|\s*[.,;]?\s*$")  # a trailing comment or "(why)", or punctuation
BOOLEANS = {"true": "True", "false": "False"}


def visible_asserts(prompt: str, entry_point: str) -> list[str]:
    """The docstring's doctests, else the examples it gives in prose."""
    return doctest_asserts(prompt) or prose_asserts(prompt, entry_point)


def doctest_asserts(prompt: str) -> list[str]:
    """Turn the `>>> call` / `result` examples of a docstring into assert statements. The closing
    quotes that follow the last example are not part of its result, though doctest reads them in."""
    asserts = []
    for example in doctest.DocTestParser().get_examples(prompt):
        want = CLOSING_QUOTES.sub("", example.want).strip()
        statement = f"assert {example.source.strip()} == {want}"
        if parse_python(statement):
            asserts.append(statement)
    return asserts


def prose_asserts(prompt: str, entry_point: str) -> list[str]:
    """Assertions from the examples a docstring writes in prose: calls (`f(x) ➞ y`), named inputs
    (`For x = 1 the output should be y`) and `Input:` / `Output:` blocks."""
    parameters = signature(prompt, entry_point)
    lines = [OPENING_QUOTES.sub("", line.strip()) for line in prompt.splitlines()]
    examples = []
    for i, line in enumerate(lines):
        example = call_example(line, entry_point) or named_example(line, entry_point, parameters)
        if example is None and line.startswith("Input:"):
            example = input_output_example(line, lines[i + 1:i + 3], entry_point, parameters)
        if example and example not in examples:
            examples.append(example)
    return [f"assert {call} == {value}" for call, value in examples]


def call_example(line: str, entry_point: str) -> tuple[str, str] | None:
    """`f(literal, ...) SEP value` anywhere in the line: the shortest call text that parses."""
    start = re.search(rf"\b{re.escape(entry_point)}\(", line)
    if not start:
        return None
    for end in (m.end() for m in re.finditer(r"\)", line[start.start():])):
        call = line[start.start():start.start() + end]
        node = parse_expression(call)
        if node is None:
            continue
        if not (isinstance(node, ast.Call) and all(map(is_literal, [*node.args, *(k.value for k in node.keywords)]))):
            return None
        separator = SEPARATOR.match(line, start.start() + end)
        value = literal_value(line[separator.end():]) if separator and separator.end() > start.start() + end else None
        return (call, value) if value is not None else None
    return None


def named_example(line: str, entry_point: str, parameters: list[str] | None) -> tuple[str, str] | None:
    """`For a = 1, b = [2] the output should be 3` (whatever comes between the inputs and "the output")."""
    match = NAMED_EXAMPLE.match(line)
    value = literal_value(match.group("value")) if match and parameters else None
    if value is None:
        return None
    inputs = match.group("inputs")
    for end in reversed([m.start() for m in re.finditer(r",|$", inputs)]):  # the longest prefix naming every parameter
        call = named_call(inputs[:end], entry_point, parameters)
        if call:
            return call, value
    return None


def input_output_example(line: str, following: list[str], entry_point: str,
                         parameters: list[str] | None) -> tuple[str, str] | None:
    """`Input: a = 1, b = 2` (or one bare literal for a one-parameter function) with `Output: y` on
    one of the next two lines."""
    outputs = [text for text in following if text.startswith("Output:")]
    if not (outputs and parameters):
        return None
    inputs, value = line.removeprefix("Input:").strip(), literal_value(outputs[0].removeprefix("Output:"))
    call = named_call(inputs, entry_point, parameters)
    if call is None and len(parameters) == 1 and is_literal(parse_expression(inputs)):
        call = f"{entry_point}({inputs})"
    return (call, value) if call and value is not None else None


def named_call(inputs: str, entry_point: str, parameters: list[str]) -> str | None:
    """`a = 1, b = [2]` as `f(1, [2])` in the signature's order, when it names every parameter once."""
    node = parse_expression(f"{entry_point}({inputs})")
    if not (isinstance(node, ast.Call) and not node.args and all(is_literal(k.value) for k in node.keywords)):
        return None
    named = {k.arg: ast.unparse(k.value) for k in node.keywords}
    if sorted(named) != sorted(parameters):
        return None
    return f"{entry_point}({', '.join(named[name] for name in parameters)})"


def literal_value(text: str) -> str | None:
    """The literal a value text holds: the text before a trailing comment, "(why)" or full stop,
    else the whole text; `true` / `false` read as Python's booleans."""
    text = text.strip()
    for candidate in (VALUE_END.sub("", text, count=1), text):
        candidate = BOOLEANS.get(candidate, candidate)
        if candidate and is_literal(parse_expression(candidate)):
            return candidate
    return None


def signature(prompt: str, entry_point: str) -> list[str] | None:
    """The entry point's parameter names, where the prompt parses."""
    tree = parse_python(prompt)
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return [a.arg for a in node.args.args]
    return None


def parse_expression(text: str) -> ast.expr | None:
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None


def is_literal(node: ast.expr | None) -> bool:
    if node is None:
        return False
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True

