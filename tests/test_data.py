import json

import pytest

from codelift.data import Task, load_tasks
from codelift.data.clean import clean_tasks, is_python_code
from codelift.data.loaders import MBPP_SPLITS
from codelift.data.prepare import prepare
from codelift.errors import CodeliftError
from codelift.io import write_jsonl


def test_humaneval_tasks_carry_prompt_tests_and_doctest_examples():
    tasks = load_tasks("humaneval")
    assert len(tasks) == 164
    first = tasks[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.solution.startswith(first.prompt_prefix) and "def has_close_elements" in first.solution
    assert first.tests[0].rstrip().endswith("check(has_close_elements)")
    # every docstring example, the last one too (doctest reads the closing quotes into its output)
    assert first.visible_tests == ["assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
                                   "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True"]
    assert tasks[2].visible_tests == ["assert truncate_number(3.5) == 0.5"]
    # 70 docstrings hold doctests; 83 more give their examples in prose (`f(x) ➞ y`, `For x = 1 the output
    # should be y`, `Input:` / `Output:`); 11 give none that parses (131 before the named and Input forms)
    assert sum(map(bool, (t.visible_tests for t in tasks))) == 153
    by_id = {t.task_id: t for t in tasks}
    assert by_id["HumanEval/72"].visible_tests[:2] == ["assert will_it_fly([1, 2], 5) == False",
                                                       "assert will_it_fly([3, 2, 3], 1) == False"]
    assert by_id["HumanEval/89"].visible_tests[0] == "assert encrypt('hi') == 'lm'"


@pytest.mark.parametrize("split,count", [("train", 374), ("validation", 90), ("prompt", 10)])
def test_mbpp_splits_follow_task_id_ranges(data_dir, split, count):
    tasks = load_tasks("mbpp", split, data_dir=data_dir)
    assert len(tasks) == count
    assert all(int(t.task_id.split("/")[1]) in MBPP_SPLITS[split] for t in tasks)
    assert all(t.entry_point and t.visible_tests == t.tests[:1] for t in tasks)


def test_mbpp_full_file_is_split_by_task_id(data_dir, tmp_path):
    rows = [json.loads(line) for name in ("train", "validation")
            for line in (data_dir / "mbpp" / f"mbpp-{name}.jsonl").read_text().splitlines()]
    (tmp_path / "mbpp").mkdir()
    write_jsonl(tmp_path / "mbpp" / "mbpp.jsonl", rows)
    validation = load_tasks("mbpp", "validation", data_dir=tmp_path)
    assert [t.task_id for t in validation] == [f"mbpp/{i}" for i in range(511, 601)]


def test_sanitized_mbpp_and_code_alpaca_load(data_dir):
    sanitized = load_tasks("mbpp-sanitized", "validation", data_dir=data_dir)
    assert len(sanitized) == 43 and all(t.source == "mbpp-sanitized" for t in sanitized)
    alpaca = load_tasks("code_alpaca", data_dir=data_dir)
    assert len(alpaca) == 2017 and alpaca[0].instruction and alpaca[0].solution


def test_data_dir_falls_back_to_environment(data_dir, monkeypatch):
    monkeypatch.setenv("CODELIFT_DATA", str(data_dir))
    assert len(load_tasks("mbpp", "prompt")) == 10


def test_missing_data_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.delenv("CODELIFT_DATA", raising=False)
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CodeliftError) as error:
        load_tasks("mbpp", "test", data_dir=tmp_path)
    message = str(error.value)
    assert "--data-dir" in message and "CODELIFT_DATA is not set" in message and "hub" in message


def test_hub_rows_become_tasks(monkeypatch):
    """The hub is the boundary we cannot reach here: its rows are faked, our conversion is real."""
    monkeypatch.delenv("CODELIFT_DATA", raising=False)
    import datasets

    calls = []

    def fake_hub(repo, config, split):
        calls.append((repo, config, split))
        return [{"task_id": 11, "text": "Write a function to add.", "code": "def add(a, b):\n    return a + b",
                 "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []}]

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    [task] = load_tasks("mbpp", "test")
    assert calls == [("google-research-datasets/mbpp", "full", "test")]
    assert task.task_id == "mbpp/11" and task.entry_point == "add"


def test_source_names_its_split_as_run_configs_do(data_dir):
    prompt = load_tasks("mbpp:prompt", data_dir=data_dir)
    assert [t.task_id for t in prompt] == [t.task_id for t in load_tasks("mbpp", "prompt", data_dir=data_dir)]
    assert len(prompt) == 10 and prompt[0].task_id == "mbpp/1"


def test_wrong_split_and_source_are_named():
    with pytest.raises(CodeliftError, match="unknown split 'dev' for mbpp: expected one of train, validation"):
        load_tasks("mbpp", "dev")
    with pytest.raises(CodeliftError, match="unknown split 'dev' for mbpp"):
        load_tasks("mbpp:dev")
    with pytest.raises(CodeliftError, match="unknown data source 'leetcode'"):
        load_tasks("leetcode")


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": "a", "instruction": "x", "solution": "y"}\n{"task_id": "b",\n')
    with pytest.raises(CodeliftError, match=r"tasks.jsonl, line 2: not valid JSON"):
        load_tasks(str(path))


def test_missing_and_mistyped_fields_are_named(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": "a", "instruction": "x"}\n')
    with pytest.raises(CodeliftError, match=r"line 1: missing field 'solution'"):
        load_tasks(str(path))
    path.write_text('{"task_id": "a", "instruction": "x", "solution": "y", "tests": "assert 1"}\n')
    with pytest.raises(CodeliftError, match=r"field 'tests' must be a list of strings"):
        load_tasks(str(path))


def test_field_mapping_renames_a_files_keys(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "Add two numbers.", "answer": "def add(a, b):\n    return a + b"}]))
    [task] = load_tasks(str(path), fields={"instruction": "question", "solution": "answer"})
    assert task == Task(task_id="qa/0", instruction="Add two numbers.", solution="def add(a, b):\n    return a + b")
    with pytest.raises(CodeliftError, match=r"record 0: missing field 'prompt' \(mapped to instruction\)"):
        load_tasks(str(path), fields={"instruction": "prompt"})


@pytest.mark.parametrize("code,python", [
    ("def f(x):\n    return x + 1", True),
    ("```python\nprint('hi')\n```", False),  # fences are stripped by clean_tasks, not here
    ("SELECT * FROM users WHERE age > 30;", False),
    ("function add(a, b) { return a + b; }", False),
    ("The answer is 42.", False),
    ("42", False),
    ("x = [i * i for i in range(10)]", True),
])
def test_python_detection(code, python):
    assert is_python_code(code) is python


def task(i, instruction, solution):
    return Task(task_id=f"t/{i}", instruction=instruction, solution=solution)


SUM_EVEN_SQUARES = """def sum_even_squares(numbers):
    total = 0
    for n in numbers:
        if n % 2 == 0:
            total += n * n
    return total"""


def test_clean_drops_each_reason_once():
    humaneval = load_tasks("humaneval")[:1]
    instruction = "Write a function that returns the sum of the squares of the even numbers in a list."
    records = [
        task(0, instruction, f"```python\n{SUM_EVEN_SQUARES}\n```"),
        task(1, instruction, SUM_EVEN_SQUARES),  # exact duplicate once the fence is stripped
        task(2, instruction, SUM_EVEN_SQUARES.replace("    return", "    # done\n    return")),  # near duplicate
        task(3, "List users.", "SELECT * FROM users;"),  # not Python
        task(4, humaneval[0].instruction, humaneval[0].solution),  # contaminated
        task(5, "Reverse a string.", "def rev(s):\n    return s[::-1]"),
    ]
    kept, counts = clean_tasks(records, humaneval)
    assert [t.task_id for t in kept] == ["t/0", "t/5"]
    assert kept[0].solution == SUM_EVEN_SQUARES
    assert counts == {"kept": 2, "exact_duplicate": 1, "near_duplicate": 1, "not_python": 1, "contaminated": 1}


def test_prepare_mbpp_train_writes_clean_tasks(data_dir, tmp_path):
    out = tmp_path / "train.jsonl"
    kept, counts, references = prepare("mbpp", "train", out, data_dir=data_dir)
    assert sum(counts.values()) == 374 and 300 < counts["kept"] <= 374 and counts["contaminated"] > 0
    assert references == ["humaneval:test", "mbpp:validation"]
    assert [t.task_id for t in load_tasks(str(out))] == [t.task_id for t in kept]


def test_failed_write_leaves_previous_file_whole(tmp_path):
    out = tmp_path / "tasks.jsonl"
    write_jsonl(out, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(out, rows())
    assert out.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["tasks.jsonl"]


def test_prose_examples_become_assertions_only_where_they_parse_safely():
    from codelift.data.examples import prose_asserts

    doc = ('def f(x, y):\n    """Examples:\n    f(1, 2) ➞ 3\n    f([1], "a") == [1, "a"].\n    f(x, 2) ➞ 4\n'
           '    g(1, 2) ➞ 3\n    f(1, 2) ➞ some number\n    f(2, 2) returns 4\n    f(1, 2) ➞ 3\n'
           '    f((1, 2), 0) = 5 - 1 = 4\n    f("a.b", 1) # => \'No\' (the name has a dot)\n    f(0, 0) => true.\n    """')
    assert prose_asserts(doc, "f") == ["assert f(1, 2) == 3", 'assert f([1], "a") == [1, "a"]', "assert f(2, 2) == 4",
                                       "assert f(\"a.b\", 1) == 'No'", "assert f(0, 0) == True"]


def test_named_inputs_and_input_output_blocks_map_onto_the_signature():
    from codelift.data.examples import prose_asserts

    doc = ('def f(arr, k):\n    """For k = 2, arr = [1, 2] the output should be 3.\n'
           '    For arr = [5], k = 1, the sum will be 5 the result should be "5"\n'
           '    For arr = [1] the output should be 1\n    For x = 1, k = 2 the output should be 1\n'
           '    Example 1:\n        Input: arr = [-3, 4], k = 1\n        Output: [4] # the largest\n'
           '    Example 2:\n        Input: \n            arr : [1]\n        Output: 6\n    """')
    assert prose_asserts(doc, "f") == ["assert f([1, 2], 2) == 3", 'assert f([5], 1) == "5"', "assert f([-3, 4], 1) == [4]"]
    one = 'def g(n):\n    """\n    Input: 3\n    Output: (1, 2)\n    Input: n = 12\n\n    Output: (4, 6)\n    """'
    assert prose_asserts(one, "g") == ["assert g(3) == (1, 2)", "assert g(12) == (4, 6)"]


def test_the_reference_solutions_pass_their_visible_tests_but_where_the_docstring_errs():
    """Visible tests choose among candidates, so a wrong one rejects right programs: the canonical
    solutions pass every one but those of the docstrings that are themselves wrong (47, 116, 148) or
    write a recurrence in call form (130: `tri(4) = 3`, where `tri` returns a list)."""
    from codelift.evaluate.score import score_samples
    from codelift.evaluate.selection import visible_only

    tasks = [visible_only(t) for t in load_tasks("humaneval") if t.visible_tests]
    rows, _ = score_samples(tasks, [{"task_id": t.task_id, "solution": t.solution} for t in tasks], k=[1])
    assert sorted(r["task_id"] for r in rows if not r["passed"]) == ["HumanEval/116", "HumanEval/130", "HumanEval/148",
                                                                         "HumanEval/47"]
