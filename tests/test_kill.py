"""Kill -9 anywhere, lose nothing: each long stage is killed with SIGKILL mid-work, run again with the
same command, and must end where a run never interrupted ends: the same bytes where the stage is
deterministic, the same records (timings aside) otherwise. SFT's and the teacher cache's own kill
tests sit beside their stages (test_sft.py, test_distill.py)."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codelift.data import load_tasks
from codelift.io import write_jsonl

CODELIFT = str(Path(sys.executable).parent / "codelift")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def records(path: Path) -> list[dict]:
    """A JSONL file's rows without what differs between any two runs: seconds spent."""
    return [{key: value for key, value in json.loads(line).items() if "seconds" not in key}
            for line in path.read_text().splitlines()]


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def committed(folder: Path) -> int:
    return len(list(folder.glob("checkpoints/checkpoint-*/codelift-committed")))


# Where a kill lands: after the first chunk (or checkpoint), which CI runs, or after the second (slow).
KILL_POINTS = pytest.mark.parametrize("after", [1, pytest.param(2, marks=pytest.mark.slow)])


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def tasks_file(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "tasks.jsonl"
    write_jsonl(path, (t.to_dict() for t in load_tasks("mbpp", "train", data_dir=data_dir)[:72]))
    return path


@pytest.mark.parametrize("point, temperature", [("generating", "0"), ("judging", "0.8")])
def test_a_killed_evaluation_resumes_to_the_same_samples(tiny_model_dir, tasks_file, tmp_path, sigkill, point,
                                                        temperature):
    """Killed once its first generations are logged (greedy: a kill inside a chunk's append would
    redraw a sampled chunk's rest with other seeds), or once its first program is judged (sampled at
    T=0.8: the same text again means the resumed run did not generate anew)."""
    def command(out: Path) -> list[str]:
        return [CODELIFT, "eval", str(tiny_model_dir), "--benchmark", str(tasks_file), "--out", str(out),
                "--backend", "hf", "--format", "instruct", "--max-new-tokens", "8", "--temperature", temperature]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    log = killed / ("generations.jsonl" if point == "generating" else "judged.jsonl")
    sigkill(command(killed), ENV, lambda: line_count(log) > 0)
    assert not (killed / "summary.json").exists()
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)
    assert records(killed / "samples.jsonl") == records(whole / "samples.jsonl")
    assert line_count(killed / "generations.jsonl") == 72  # nothing generated twice
    assert listing(killed) == listing(whole)


@KILL_POINTS
def test_a_killed_distillation_resumes_to_the_same_weights(tiny_model_dir, tasks_file, tmp_path, sigkill, after):
    """Logit KD with the teacher online, killed after its first or second committed checkpoint (the SFT
    and cache kills are in test_sft.py and test_distill.py)."""
    config = tmp_path / "kd.yaml"
    config.write_text("method: lora\nmax_steps: 10\nbatch_size: 2\nmax_length: 96\nlearning_rate: 0.01\n"
                      "eval_every_epochs: 0.05\nprompt_format: instruct\ndeterministic: true\n")

    def command(out: Path) -> list[str]:
        return [CODELIFT, "distill", "--teacher", str(tiny_model_dir), "--student", str(tiny_model_dir), "--data",
                str(tasks_file), "--out", str(out), "--config", str(config)]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    sigkill(command(killed), ENV, lambda: committed(killed) >= after)
    assert not (killed / "adapter").exists()
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)
    expected = load_file(whole / "adapter" / "adapter_model.safetensors")
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == resumed.keys() and all(torch.equal(resumed[k], expected[k]) for k in expected)
    assert json.loads((killed / "run.json").read_text())["steps"] == 10


TEACHER_ANSWERS = """
import sys
from pathlib import Path
from codelift.config import DistillConfig
from codelift.data import load_tasks
from codelift.train.sequence_kd import sample_answers

cfg = DistillConfig(mode="sequence", samples_per_task=2, sample_temperature=0.8, max_new_tokens=8)
sample_answers(sys.argv[1], load_tasks(sys.argv[2]), Path(sys.argv[3]), cfg)
"""


@KILL_POINTS
def test_killed_teacher_answers_resume_to_the_same_bytes(tiny_model_dir, tasks_file, tmp_path, sigkill, after):
    """Sequence KD's teacher answers, sampled two per task, killed after the first or second 32 tasks
    are logged."""
    def command(log: Path) -> list[str]:
        return [sys.executable, "-c", TEACHER_ANSWERS, str(tiny_model_dir), str(tasks_file), str(log)]

    whole, killed = tmp_path / "whole.jsonl", tmp_path / "killed.jsonl"
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    sigkill(command(killed), ENV, lambda: line_count(killed) > 1 + 32 * (after - 1))  # 32 tasks per append
    assert line_count(killed) < line_count(whole) == 1 + 72
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)
    assert killed.read_bytes() == whole.read_bytes()


@KILL_POINTS
def test_killed_plan_generation_resumes_to_the_same_bytes(tiny_model_dir, tasks_file, tmp_path, sigkill, after):
    config = tmp_path / "plans.yaml"
    config.write_text("max_plan_tokens: 8\n")

    def command(out: Path) -> list[str]:
        return [CODELIFT, "plan", "generate", "--teacher", str(tiny_model_dir), "--data", str(tasks_file),
                "--out", str(out), "--limit", "40", "--plans-per-task", "2", "--no-verify", "--config", str(config)]

    whole, killed = tmp_path / "whole" / "plans.jsonl", tmp_path / "killed" / "plans.jsonl"
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    log = killed.with_name("plans.jsonl.log")
    sigkill(command(killed), ENV, lambda: line_count(log) > 1 + 16 * (after - 1))  # 16 tasks per append
    assert not killed.exists()
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)
    for name in ("plans.jsonl.log", "plans.jsonl"):
        assert (killed.parent / name).read_bytes() == (whole.parent / name).read_bytes(), name
    assert listing(killed.parent) == listing(whole.parent)


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_killed_index_build_leaves_nothing_and_rebuilds_the_same_bytes(tasks_file, tmp_path, sigkill, seed):
    """The index is written whole or not at all: killed at a seeded moment of its build (loading,
    embedding or writing), the folder is absent or complete, and the next build leaves no stray files."""
    def command(out: Path) -> list[str]:
        return [CODELIFT, "index", "build", "--kb", str(tasks_file), "--out", str(out), "--index", "flat"]

    whole, killed = tmp_path / "whole" / "index", tmp_path / "killed" / "index"
    began = time.monotonic()
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    moment = time.monotonic() + random.Random(seed).uniform(0.3, 0.9) * (time.monotonic() - began)
    sigkill(command(killed), ENV, lambda: time.monotonic() > moment)
    assert not killed.exists() or listing(killed) == listing(whole)
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)
    for name in ("index.faiss", "documents.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    killed_manifest, whole_manifest = (json.loads((out / "manifest.json").read_text()) for out in (killed, whole))
    assert killed_manifest.pop("seconds") and whole_manifest.pop("seconds")  # the build's own timings
    assert killed_manifest == whole_manifest
    assert listing(killed.parent) == listing(whole.parent)


@KILL_POINTS
def test_a_killed_run_resumes_to_the_same_ablation(tiny_model_dir, data_dir, tmp_path, sigkill, after):
    """`codelift run` killed while its SFT stage trains: the re-run resumes the stage from its last
    checkpoint and ends with an uninterrupted run's weights and scores."""
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data: {{train: ["mbpp:prompt"]}}
teacher: {{model: {tiny_model_dir}}}
student: {{model: {tiny_model_dir}}}
sft: {{method: lora, max_steps: 8, batch_size: 2, max_length: 128, learning_rate: 0.01, eval_every_epochs: 0.2}}
distill: {{enabled: false}}
plan: {{enabled: false}}
rag: {{enabled: false}}
eval: {{limit: 2, max_new_tokens: 8, bootstrap_samples: 200, prompt_format: instruct}}
""")

    def command(out: Path) -> list[str]:
        return [CODELIFT, "run", str(config), "--data-dir", str(data_dir), "--out", str(out)]

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), env=ENV, check=True, capture_output=True)
    sigkill(command(killed), ENV, lambda: committed(killed / "sft") >= after)
    assert not (killed / "sft" / "run.json").exists()
    subprocess.run(command(killed), env=ENV, check=True, capture_output=True)

    expected = load_file(whole / "sft" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(killed / "sft" / "adapter" / "adapter_model.safetensors")
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=1e-6, rtol=1e-5)
    ablation = [json.loads((out / "eval" / "ablation.json").read_text()) for out in (whole, killed)]
    scores = [{name: [(r["variant"], r["pass@1"], r["scores"]) for r in rows]
               for name, rows in table["benchmarks"].items()} for table in ablation]
    assert scores[0] == scores[1]
    for samples in whole.glob("eval/*/*/samples.jsonl"):
        assert records(killed / samples.relative_to(whole)) == records(samples), samples
