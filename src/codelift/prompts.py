"""Every prompt template in one place.

A prompt has two independent choices: its *format* (`raw` completion, the `instruct`
template used in training, or the model's own `chat` template) and its *context* (nothing,
ICL examples, RAG hits, or a plan), which is rendered into the prompt as its own part.
"""

from __future__ import annotations

from collections.abc import Sequence

from codelift.data.task import Task

FORMATS = ("raw", "instruct", "chat")
INSTRUCTION_HEADER = "### Instruction:\n"
RESPONSE_HEADER = "### Response:\n"
CONTEXT_HEADER = "### Context:\n"
EXAMPLE_OPEN, EXAMPLE_CLOSE = "<example {}>", "</example>"
SYSTEM_PROMPT = "You are a helpful coding assistant. Answer with Python code in a ```python block."
# Where a raw completion of code should stop: the model starts the next top-level thing.
CODE_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
INSTRUCT_STOP = ("\n### ",)  # the model starts the next section of the instruct template
EXAMPLES_IN_TEXT = ("apps",)  # sources whose problem text already shows its examples: no visible tests appended


def prompt_stop(fmt: str) -> tuple[str, ...]:
    """Where a completion in prompt format `fmt` ends (chat answers end at their end-of-turn token)."""
    return CODE_STOP_SEQUENCES if fmt == "raw" else INSTRUCT_STOP if fmt == "instruct" else ()


def examples_context(examples: Sequence[Task], fmt: str) -> str:
    """Solved examples as a prompt part. As code comments for raw completion; otherwise each
    between fixed delimiters, problem then solution, so the model can tell them from its task."""
    if fmt == "raw":
        return "\n\n".join(f"# {' '.join(t.instruction.split())}\n{t.solution.strip()}" for t in examples)
    return "\n\n".join(f"{EXAMPLE_OPEN.format(i)}\nProblem: {t.instruction.strip()}\nSolution:\n```python\n"
                       f"{t.solution.strip()}\n```\n{EXAMPLE_CLOSE}" for i, t in enumerate(examples, 1))


def task_instruction(task: Task) -> str:
    """What the model is asked: complete a given signature, or solve a described problem
    that its visible tests pin down (function name, argument order)."""
    if task.prompt_prefix:
        return f"Complete the following Python function.\n```python\n{task.prompt_prefix.rstrip()}\n```"
    text = task.instruction.strip()
    if task.visible_tests and task.source not in EXAMPLES_IN_TEXT:
        text += "\nYour code should pass these tests:\n" + "\n".join(task.visible_tests)
    return text


def instruct_prompt(instruction: str, context: str = "") -> str:
    """The training template with an optional context part first: examples, then the instruction
    right before the response. With the examples last, a model fine-tuned without context answered
    the last example's problem instead of its own (RAG k=1: 0/45 MBPP validation; no context: 4/45)."""
    parts = [CONTEXT_HEADER + context.strip() + "\n"] if context else []
    parts += [INSTRUCTION_HEADER + instruction.strip() + "\n", RESPONSE_HEADER]
    return "\n".join(parts)


def render_prompt(task: Task, fmt: str, tokenizer=None, context: str = "") -> str:
    """The prompt text for `task` in format `fmt` with an optional context part."""
    if fmt == "raw":
        head = f"{context.strip()}\n\n" if context else ""
        return head + (task.prompt_prefix or f'"""\n{task.instruction.strip()}\n"""\n')
    if fmt in ("instruct", "chat"):
        return render_instruction(task_instruction(task), fmt, tokenizer, context)
    raise ValueError(f"unknown prompt format '{fmt}': expected one of {', '.join(FORMATS)}")


def with_context(text: str, context: str) -> str:
    """A chat user message: the context part (retrieved or ICL examples) before the text."""
    return f"{CONTEXT_HEADER}{context.strip()}\n\n{text}" if context else text


def chat_messages(instruction: str, context: str = "") -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": with_context(instruction, context)}]


def chat_prompt(instruction: str, tokenizer, context: str = "") -> str:
    """The model's own chat template, or a clear error when the tokenizer has none."""
    from codelift.errors import CodeliftError

    if not has_chat_template(tokenizer):
        raise CodeliftError("this model's tokenizer has no chat template; use --format raw or instruct "
                            "(prompt_format: raw or instruct).")
    return tokenizer.apply_chat_template(chat_messages(instruction, context), tokenize=False, add_generation_prompt=True)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def default_format(tokenizer, fmt: str | None = None) -> str:
    """The prompt format of a stage: the one asked for, else the model's own chat template where its
    tokenizer has one, else the instruct template. An instruct model trained or prompted in a format it
    never saw loses what it knew (24 LoRA steps in the instruct template: HumanEval 25/30 -> 21/30)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown prompt format '{fmt}': expected one of {', '.join(FORMATS)}")
        return fmt
    return "chat" if has_chat_template(tokenizer) else "instruct"


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The token ids of a rendered prompt, the same for training and for every backend: the rendered
    text carries every special token its format needs, so the tokenizer adds none."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def code_answer(code: str) -> str:
    """How a chat answer gives code: one fenced block, which `extract_code` reads back."""
    return f"```python\n{code.strip()}\n```"


def training_example(instruction: str, answer: str, fmt: str, tokenizer, context: str = "") -> tuple[str, str, bool]:
    """(prompt, target, add_eos) of one training example in format `fmt` (instruct or chat).

    The prompt is exactly what evaluation renders for `instruction`. In chat the target is the
    assistant turn as the template writes it, up to and including its end-of-turn token, so the
    model learns to close its turn as it does at inference; otherwise the answer, with EOS added."""
    if fmt == "instruct":
        return instruct_prompt(instruction, context), answer, True
    if fmt != "chat":
        raise ValueError(f"prompt format '{fmt}' has no instruction form: expected instruct or chat")
    from codelift.errors import CodeliftError

    prompt = chat_prompt(instruction, tokenizer, context)
    conversation = chat_messages(instruction, context) + [{"role": "assistant", "content": answer}]
    whole = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not whole.startswith(prompt):
        raise CodeliftError("this model's chat template renders a conversation differently from the prompt it "
                            "asks a reply to, so training cannot match inference; use prompt_format: instruct.")
    return prompt, whole[len(prompt):].rstrip(), False


def task_training_example(task: Task, fmt: str, tokenizer, answer: str | None = None) -> tuple[str, str, bool]:
    """A task's training example in format `fmt`, prompted as evaluation prompts it; `answer` (the
    task's solution by default) is the code to learn. Raw: the code continues the prompt."""
    code = task.solution if answer is None else answer
    if fmt == "raw":
        prompt = render_prompt(task, "raw")
        return prompt, code[len(task.prompt_prefix):] if task.prompt_prefix and code.startswith(task.prompt_prefix) \
            else code, True
    return training_example(task_instruction(task), code_answer(code) if fmt == "chat" else code, fmt, tokenizer)


# --- plans (CodePLAN) -----------------------------------------------------------------------------
# The teacher writes a plan by backward reasoning (it sees the problem and a reference solution);
# the student learns two tasks told apart by a marker: code (optionally given a plan) and plan.

# Recorded with every plan; bump when a plan template changes. Forward plans (CodePLAN's baseline) are
# written from the problem alone, backward ones from the problem and its reference solution.
PLAN_PROMPT_VERSION = {"backward": "plan-v1", "forward": "forward-plan-v1"}
GEN_CODE, GEN_PLAN = "[GEN_CODE]", "[GEN_PLAN]"
PLAN_HEADER = "Plan:\n"
PLAN_SYSTEM_PROMPT = ("You explain how a programmer arrives at a solution. Answer with a numbered list of short "
                      "steps in plain words, without code.")
BACKWARD_REQUEST = ("Here is a programming problem and a correct solution. Work backwards from the solution: write "
                    "the numbered step-by-step plan a programmer would follow to arrive at it. Describe each step in "
                    "words; do not copy the code.\n\nProblem:\n{problem}\n\nSolution:\n```python\n{solution}\n```")
FORWARD_REQUEST = ("Here is a programming problem. Before any code is written, plan how to solve it: write the "
                   "numbered step-by-step plan a programmer would follow. Describe each step in words; do not write "
                   "code.\n\nProblem:\n{problem}")
# One worked example (written for codelift, in none of the evaluation sets) shows the form of a plan.
PLAN_EXAMPLE_PROBLEM = "Write a function to count the vowels in a string."
PLAN_EXAMPLE_SOLUTION = ("def count_vowels(text):\n    count = 0\n    for ch in text.lower():\n"
                         "        if ch in \"aeiou\":\n            count += 1\n    return count")
PLAN_EXAMPLE_PLAN = ("1. Define a function `count_vowels` that takes the string.\n"
                     "2. Start a counter at zero.\n"
                     "3. Go through the characters of the string in lower case, so capitals count too.\n"
                     "4. Add one to the counter for every character that is one of a, e, i, o, u.\n"
                     "5. Return the counter.")


def plan_prompt(task: Task, tokenizer, direction: str = "backward") -> str:
    """The teacher's plan prompt: the worked example as an earlier exchange, then this task's problem
    and (backward, CodePLAN's way) its reference solution to reason back from; forward plans see the
    problem alone. The model's chat template when it has one, else the instruct template."""
    template = BACKWARD_REQUEST if direction == "backward" else FORWARD_REQUEST
    example = template.format(problem=PLAN_EXAMPLE_PROBLEM, solution=PLAN_EXAMPLE_SOLUTION)
    request = template.format(problem=task.instruction.strip(), solution=task.solution.strip())
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": PLAN_SYSTEM_PROMPT}, {"role": "user", "content": example},
                    {"role": "assistant", "content": PLAN_EXAMPLE_PLAN}, {"role": "user", "content": request}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return instruct_prompt(request, context=f"{example}\n\n{PLAN_HEADER}{PLAN_EXAMPLE_PLAN}")


# Chain of thought, CodePLAN's other baseline: the model plans and codes in one answer, untrained to.
COT_REQUEST = ("First write a numbered plan of the steps in words, then the complete solution in one ```python "
               "block.")


def chain_of_thought_prompt(task: Task, fmt: str, tokenizer=None, context: str = "") -> str:
    return render_instruction(f"{task_instruction(task)}\n\n{COT_REQUEST}", fmt, tokenizer, context)


def with_plan(instruction: str, plan: str) -> str:
    return f"{instruction}\n{PLAN_HEADER}{plan.strip()}" if plan else instruction


def code_from_plan_prompt(task: Task, plan: str, tokenizer) -> str:
    """Verification: the teacher writes code from the problem (as the student sees it) and a plan
    alone, never the reference; its chat template when it has one."""
    instruction = with_plan(task_instruction(task), "Follow this plan.\n" + plan)
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt(instruction, tokenizer)
    return instruct_prompt(instruction)


def render_instruction(instruction: str, fmt: str, tokenizer=None, context: str = "") -> str:
    """An instruction as a prompt in format `fmt` (instruct or chat)."""
    return chat_prompt(instruction, tokenizer, context) if fmt == "chat" else instruct_prompt(instruction, context)


def student_plan_instruction(task: Task) -> str:
    return f"{GEN_PLAN}\n{task_instruction(task)}"


def student_code_instruction(task: Task, plan: str = "") -> str:
    return with_plan(f"{GEN_CODE}\n{task_instruction(task)}", plan)


def student_plan_prompt(task: Task, context: str = "", fmt: str = "instruct", tokenizer=None) -> str:
    """The student's plan task, in its training format (with retrieved examples when given)."""
    return render_instruction(student_plan_instruction(task), fmt, tokenizer, context)


def student_code_prompt(task: Task, plan: str = "", context: str = "", fmt: str = "instruct", tokenizer=None) -> str:
    """The student's code task, in its training format, optionally given a plan and examples."""
    return render_instruction(student_code_instruction(task, plan), fmt, tokenizer, context)
