"""The report, built from a run folder in the real format: stage folders made by the pipeline's
stage runner, evaluations scored by the real sandboxed scorer, the ablation by the real code."""

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from codelift.config import DataStage, EvalStage, SFTStage
from codelift.data import load_tasks
from codelift.evaluate.ablation import Variant, ablation_table
from codelift.evaluate.run import score_file
from codelift.io import run_manifest, write_json, write_jsonl
from codelift.pipeline import RunContext, Stages
from codelift.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
SOLVED = {"base": 1, "sft": 4, "teacher": 6}  # of the first 6 MBPP validation problems


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    tasks = load_tasks("mbpp", "validation", data_dir=data_dir)[:6]
    stages = Stages(out, RunContext(data_dir, "none", Console(quiet=True)))
    write_json(out / "config.json", run_manifest({"student": {"keep_layers": 2}}, stage="run"))

    def training(loss_keys):
        def make(folder, settings, *inputs, ctx):
            write_jsonl(folder / "metrics.jsonl", [{"step": s, **{k: 3.0 / s for k in loss_keys}} for s in range(1, 6)]
                        + [{"step": 5, "eval_loss": 0.9}])
            return {"model": str(folder / "merged")}
        return make

    stages.run("data", lambda folder, settings, ctx: {"train": "train.jsonl"}, DataStage())
    sft = stages.run("sft", training(["loss"]), SFTStage())
    stages.run("distill", training(["loss", "kd_loss", "ce_loss"]), SFTStage(method="full"))
    folders = {}
    for name, solved in SOLVED.items():
        samples = [{"task_id": t.task_id, "completion": t.solution if i < solved else f"def {t.entry_point}(*a):\n    return None"}
                   for i, t in enumerate(tasks)]
        write_jsonl(out / "samples" / f"{name}.jsonl", samples)
        folders[name] = out / "eval" / name / "mbpp-validation"
        score_file(out / "samples" / f"{name}.jsonl", "mbpp", "validation", folders[name], k=[1], timeout=5,
                   codebleu=name == "sft", data_dir=data_dir)
    variants = [Variant("base", "m0", stage="student"), Variant("sft", "m1", stage="sft", cost=sft.cost),
                Variant("teacher", "m2", stage="teacher")]
    stages.run("eval", lambda folder, settings, ctx: (write_json(folder / "ablation.json", ablation_table(
        variants, {"mbpp:validation": folders}, resamples=500)) or {"ablation": str(folder / "ablation.json")}),
        EvalStage())
    write_report(out)
    return out


def test_the_ablation_holds_intervals_and_paired_tests_from_the_scored_samples(run_dir):
    rows = json.loads((run_dir / "eval" / "ablation.json").read_text())["benchmarks"]["mbpp:validation"]
    assert [r["pass@1"] for r in rows] == [1 / 6, 4 / 6, 1.0]
    assert rows[1]["newly_solved"] == ["mbpp/512", "mbpp/513", "mbpp/514"] and rows[1]["broken"] == []
    assert rows[1]["p_value"] == pytest.approx(0.25)  # 3 wins, 0 losses: 2 / 2**3
    assert rows[2]["p_value"] == pytest.approx(0.5)  # 2 wins
    assert rows[2]["ci_low"] == rows[2]["ci_high"] == 1.0 and rows[0]["ci_low"] == 0.0 < rows[0]["ci_high"] < 1
    assert 0.2 < rows[1]["codebleu"] < 1 and rows[0]["codebleu"] is None  # 4 of 6 programs are the references


def test_markdown_report_has_the_table_figures_and_provenance(run_dir):
    text = (run_dir / "report.md").read_text()
    assert "| sft | 0.667 [" in text and "+3 / -0 (p=0.25)" in text
    assert "the best student variant is sft with pass@1 0.667" in text
    for figure in ("scores", "grid", "sft-loss", "distill-loss", "distill-kd"):
        assert f"(report/{figure}.png)" in text and (run_dir / "report" / f"{figure}.png").is_file()
    assert "git revision" in text and "keep_layers: 2" in text and "transformers" in text


def test_html_report_embeds_every_image_as_a_valid_png(run_dir):
    page = (run_dir / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5 and "src='report/" not in page
    for data in images:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and image.width > 300 and image.height > 100


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium not installed (scripts/setup.sh installs it as root)")
def test_headless_chromium_renders_the_report_with_its_images(run_dir, tmp_path):
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    url = (run_dir / "report.html").as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,5000", url], check=True, timeout=120,
                   capture_output=True)
    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, tables and plots, not a blank page
    present = {rgb for _, rgb in colours}
    assert (58, 120, 181) in present  # the score bars (#3a78b5) were decoded and drawn
    assert (60, 157, 93) in present  # the solved grid's green (#3c9d5d)
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, timeout=120, capture_output=True, text=True).stdout
    assert dom.count("<img") == 5 and "Ablation on mbpp:validation" in dom
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_findings_do_not_crown_a_best_student_when_none_solves_anything():
    from codelift.report import findings

    row = {"pass@1": 0.0, "ci_low": 0.0, "ci_high": 0.0, "problems": 20, "newly_solved": [], "broken": [],
           "p_value": 1.0}
    ablation = {"benchmarks": {"mbpp:validation": [{**row, "variant": "base"}, {**row, "variant": "sft", "vs": "base"},
                                                   {**row, "variant": "teacher", "vs": "sft", "pass@1": 0.15}]}}
    text = findings(ablation)
    assert "no student variant solves any of the 20 problems" in text and "best student" not in text


def test_benchmarks_pool_into_one_table_whose_paired_test_sees_every_problem(run_dir):
    from codelift.report import findings

    folders = {name: run_dir / "eval" / name / "mbpp-validation" for name in SOLVED}
    variants = [Variant("base", "m0"), Variant("sft", "m1"), Variant("teacher", "m2", vs="base")]
    ablation = ablation_table(variants, {"mbpp:validation": folders, "again": folders}, resamples=500)
    pooled = ablation["pooled"]
    assert [r["problems"] for r in pooled] == [12, 12, 12]
    assert [r["pass@1"] for r in pooled] == pytest.approx([1 / 6, 4 / 6, 1.0])
    assert len(pooled[1]["newly_solved"]) == 6 and pooled[1]["broken"] == []
    assert pooled[1]["p_value"] == pytest.approx(2 / 2**6)  # 6 wins, 0 losses: significant where 3 of 6 were not
    assert pooled[2]["vs"] == "base" and len(pooled[2]["newly_solved"]) == 10
    assert pooled[1]["codebleu"] == pytest.approx(ablation["benchmarks"]["again"][1]["codebleu"])
    assert "mbpp:validation + again pooled" not in findings({"benchmarks": ablation["benchmarks"]})
    assert "On mbpp:validation + again pooled, the best student variant is sft" in findings(ablation)


def test_em_at_k_is_read_at_the_largest_k_the_samples_allow():
    from codelift.evaluate.ablation import largest_em_at_k

    assert largest_em_at_k({"em@1": 0.1, "em@5": 0.3, "em@10": 0.4, "em@20": None}) == (10, 0.4)
    assert largest_em_at_k({"em@1": 0.1, "exact_match": 0.1}) is None
