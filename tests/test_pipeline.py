import json
import re

import pytest
from typer.testing import CliRunner

from codelift.cli import app
from codelift.config import RunConfig, load_config, with_settings
from codelift.data import load_sources
from codelift.errors import CodeliftError
from codelift.io import write_jsonl
from codelift.pipeline import check_run, eval_config


def test_run_goes_from_data_to_the_ablation_and_the_report(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import codelift.pipeline

    opened = []  # the models whose generator the evaluation opened, in order

    def open_generator(cfg):
        opened.append(cfg.model)
        return real_open_generator(cfg)

    real_open_generator = codelift.pipeline.open_generator
    monkeypatch.setattr(codelift.pipeline, "open_generator", open_generator)
    plans = tmp_path / "plans.jsonl"  # as `plan generate` writes them; a tiny random teacher writes none
    write_jsonl(plans, ({"task_id": t.task_id, "plan": "1. Read the input.\n2. Return the answer."}
                        for t in load_sources(["mbpp:prompt"], data_dir)[:6]))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data: {{train: ["mbpp:prompt"]}}
teacher:
  model: {tiny_model_dir}
  sft: {{enabled: true, method: full, max_steps: 1, batch_size: 2, max_length: 128}}
student: {{keep_layers: 2}}
sft: {{method: lora, max_steps: 2, batch_size: 2, max_length: 128}}
distill: {{enabled: true, method: lora, max_steps: 1, batch_size: 2, max_length: 128, eval_before_training: false}}
plan: {{enabled: true, plans_file: {plans}, method: lora, max_steps: 1, batch_size: 2, max_length: 256,
        eval_before_training: false}}
rag: {{knowledge_base: ["mbpp:prompt"]}}
eval: {{limit: 2, max_new_tokens: 16, bootstrap_samples: 200, plans: 2, candidates: 2}}
""")
    out = tmp_path / "run"
    args = ["run", str(config), "--data-dir", str(data_dir), "--out", str(out), "--set", "sft.lora_r=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ablation = json.loads((out / "eval" / "ablation.json").read_text())
    rows = ablation["benchmarks"]["mbpp:validation"]
    names = ["base", "sft", "sft+kd", "sft+kd+select", "sft+kd+rag", "sft+kd+plan", "sft+kd+plan+rag", "teacher",
             "teacher+select"]
    assert [r["variant"] for r in rows] == names
    # one generator per model: base, sft, sft+kd (with its +select and +rag rows), the plan student, the teacher
    assert len(opened) == len(set(opened)) == 5
    assert all(0 <= r["ci_low"] <= r["pass@1"] <= r["ci_high"] <= 1 for r in rows)
    # each row against the one it adds a single change to: plan sampling is weighed against sft+kd
    # selection, retrieval, plans and the teacher are each weighed against the final trained student
    assert [r.get("vs") for r in rows] == [None, "base", "sft", "sft+kd", "sft+kd", "sft+kd", "sft+kd+plan", "sft+kd",
                                           "teacher"]
    assert rows[0]["parameters"] < rows[7]["parameters"]  # 2 of the teacher's 4 layers
    assert rows[2]["kl_to_teacher"] > 0 and rows[4]["kl_to_teacher"] == rows[2]["kl_to_teacher"]
    assert rows[7]["kl_to_teacher"] is None
    assert json.loads((out / "distill" / "run.json").read_text())["config"]["alpha"] == 0.5  # DistillConfig's
    for name in names[:3] + names[4:5] + names[7:8]:
        assert len((out / "eval" / name / "mbpp-validation" / "samples.jsonl").read_text().splitlines()) == 2
    for row in (rows[3], rows[8]):  # selection: 2 samples per problem, the chosen one scored as filtered pass@1
        summary = json.loads((out / "eval" / row["variant"] / "mbpp-validation" / "summary.json").read_text())
        assert row["sample_budget"] == summary["sample_budget"] == "2 samples" and summary["temperature"] == 0.8
        assert row["pass@1"] == summary["filtered_pass@1"] and summary["tasks_with_visible_tests"] == 2
    for row in rows[5:7]:  # plan sampling: the chosen candidate per problem, scored as filtered pass@1
        folder = out / "eval" / row["variant"] / "mbpp-validation"
        summary = json.loads((folder / "summary.json").read_text())
        assert row["sample_budget"] == summary["sample_budget"] == "2 plans x 1 programs = 2"
        assert row["pass@1"] == summary["filtered_pass@1"] and "pass@1" not in summary
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert sum(s["selected"] for s in samples) == 2 and all(s["plan"] for s in samples)
    assert all(s["context_ids"] for s in samples)  # everything combined: retrieved examples in the plan prompts
    with_plans = {json.loads(line)["task_id"] for line in plans.read_text().splitlines()}
    train_ids = {json.loads(line)["task_id"] for line in (out / "data" / "train.jsonl").read_text().splitlines()}
    planned = [json.loads(line)["task_id"] for line in (out / "plan" / "planned_tasks.jsonl").read_text().splitlines()]
    assert set(planned) == with_plans & train_ids and len(train_ids) > len(planned) > 0  # trained on planned tasks
    assert json.loads((out / "plan" / "run.json").read_text())["examples"]["plan"] == len(planned)
    assert json.loads((out / "sft" / "run.json").read_text())["config"]["lora_r"] == 4
    assert json.loads((out / "student" / "model" / "pruning.json").read_text())["kept_layers"] == [0, 3]
    assert (out / "report.html").is_file() and "report.html" in result.output
    # into a pipe the ablation is printed as whole Markdown rows, not squeezed into 80 columns
    assert "| variant | pass@1 [CI] | vs |" in result.output and "\n| sft+kd+rag | " in result.output
    assert "sft+kd vs sft: +" in result.output  # and what each change moved, with its p-value
    costs = {stage: json.loads((out / stage / "run.json").read_text())["pipeline"]["cost"]["wall_seconds"]
             for stage in ("data", "teacher", "student", "sft", "distill", "index", "plan", "eval")}
    timed = re.search(r"time by stage: (.*); total (.*)", result.output)  # and what each stage cost
    assert timed.group(1).split(", ")[:2] == [f"data {costs['data']:.0f} s", f"teacher {costs['teacher']:.0f} s"]
    total = sum(costs.values())
    assert len(timed.group(1).split(", ")) == len(costs)
    assert timed.group(2) == (f"{total:.0f} s" if total < 90 else f"{total / 60:.1f} min")
    for figure in ("sft-loss", "distill-kd", "distill-kl", "teacher-loss"):
        assert (out / "report" / f"{figure}.png").is_file()

    again = CliRunner().invoke(app, args)  # every stage finished: skipped
    assert again.exit_code == 0, again.output
    assert again.output.count("already done") == 8
    (out / "eval" / "run.json").unlink()  # the evaluation redone from its logs: scoring only, no model loaded
    (out / "eval" / "sft+kd+select" / "mbpp-validation" / "summary.json").unlink()
    rescored = CliRunner().invoke(app, args)
    assert rescored.exit_code == 0, rescored.output
    assert len(opened) == 5 and "ready in" not in rescored.output
    redone = json.loads((out / "eval" / "ablation.json").read_text())["benchmarks"]["mbpp:validation"]
    assert [r["pass@1"] for r in redone] == [r["pass@1"] for r in rows]
    changed = CliRunner().invoke(app, [*args[:-1], "sft.lora_r=8"])
    assert changed.exit_code != 0 and "other settings" in str(changed.exception)


def test_a_run_whose_teacher_plans_are_all_dropped_stops_with_their_report(tiny_model_dir, data_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"""
data: {{train: ["mbpp:prompt"]}}
teacher: {{model: {tiny_model_dir}}}
student: {{model: {tiny_model_dir}}}
sft: {{enabled: false}}
plan: {{enabled: true, generate: {{limit: 2, max_plan_tokens: 8}}}}
rag: {{enabled: false}}
""")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--data-dir", str(data_dir), "--out", str(out)])
    assert result.exit_code != 0
    assert "every plan the teacher wrote for the first 2 training tasks was dropped" in str(result.exception)
    report = json.loads((out / "plan" / "plans.report.json").read_text())
    assert report["tasks"] == 2 and report["kept"] == 0 and sum(report["counts"].values()) == 2


def test_sections_deep_merge_so_one_setting_keeps_the_others(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("sft: {method: ia3}\n")
    cfg = load_config(RunConfig, config, sets=["eval.limit=5", "sft.target_modules=[q_proj]", "teacher.model=t"])
    assert cfg.sft.method == "ia3" and cfg.sft.max_steps == 20  # the demo's step limit survives
    assert cfg.eval.limit == 5 and cfg.eval.prompt_format is None and cfg.sft.target_modules == ["q_proj"]
    assert cfg.teacher.model == "t" and cfg.teacher.sft.enabled is False
    qlora = load_config(RunConfig, None, sets=["sft.method=qlora4"]).sft.resolved()
    assert qlora.lora_r == 8 and qlora.grad_accum == 8  # presets still fill what the user left unset


@pytest.mark.parametrize("text,sets,message", [
    ("sft:\n  method: lora\n  lora_r: lots\n", [], "line 3: field 'sft.lora_r'"),
    ("sft: {method: prompt}\n", [], "line 1: sft.method: prompt tuning learns virtual tokens"),
    ("student: {keep_layers: 10}\n", [], "student.keep_layers: needs a teacher"),
    ("teacher: {model: t}\nstudent: {keep_layers: 3, model: s}\n", [], "give either model"),
    ("", ["sft.no_such_setting=1"], "field 'sft.no_such_setting'"),
    ("", ["sft.lora_r"], "expected KEY.PATH=VALUE"),
    ("distill:\n  enabled: true\n  alpha: 2\n", ["teacher.model=t"], "line 3: field 'distill.alpha'"),
    ("distill: {enabled: true}\n", [], "distill.enabled: needs a teacher"),
    ("plan: {enabled: true}\n", [], "plan.enabled: needs a teacher"),
    ("plan: {enabled: true, method: prefix}\n", ["teacher.model=t"], "plan.method: prefix tuning"),
    ("plan: {enabled: true}\neval: {codes_per_plan: 2}\n", ["teacher.model=t"], "eval.codes_per_plan: 2 greedy"),
])
def test_config_errors_name_the_line_and_field(tmp_path, text, sets, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(CodeliftError, match=message.replace("(", r"\(")):
        load_config(RunConfig, config, sets=sets)


@pytest.mark.parametrize("sets,message", [
    (["rag.knowledge_base=[mbpp:trian]"], "rag.knowledge_base: 'mbpp:trian': unknown split 'trian'"),
    (["data.train=[leetcode]"], "data.train: 'leetcode': unknown source"),
    (["eval.benchmarks=[humaneval, leetcode]"], "eval.benchmarks: 'leetcode'"),
    (["plan.enabled=true", "plan.plans_file=nowhere.jsonl"], "plan.plans_file: 'nowhere.jsonl': file not found"),
])
def test_the_whole_run_is_checked_before_any_work(sets, message):
    cfg = load_config(RunConfig, None, sets=sets)
    with pytest.raises(CodeliftError, match=message):
        check_run(cfg, None)


def test_a_kd_or_kl_pair_must_share_the_tokenizer(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    other = tmp_path / "other"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300)).save_pretrained(other)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other)
    cfg = load_config(RunConfig, None, sets=[f"teacher.model={tiny_model_dir}", f"student.model={other}"])
    with pytest.raises(CodeliftError, match="eval.kl_to_teacher: teacher .* do not share a tokenizer"):
        check_run(cfg, None)
    logit_kd = with_settings(cfg, {"eval.kl_to_teacher": False, "distill.enabled": True})
    with pytest.raises(CodeliftError, match="distill.mode: teacher .* do not share a tokenizer"):
        check_run(logit_kd, None)
    check_run(with_settings(logit_kd, {"distill.mode": "sequence"}), None)  # learns from the teacher's text
    same = load_config(RunConfig, None, sets=[f"teacher.model={tiny_model_dir}", f"student.model={tiny_model_dir}"])
    check_run(same, None)


@pytest.mark.parametrize("name", ["qwen-quick", "smoke", "qwen", "qwen-lift", "codegen"])
def test_the_shipped_configs_are_valid(name):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_config(RunConfig, config)
    assert cfg.teacher.model and cfg.eval.benchmarks and cfg.distill.enabled
    check_run(with_settings(cfg, {"eval.kl_to_teacher": False, "distill.enabled": False}), None)  # specs, no models


def test_measure_reports_each_blocks_own_peak_memory():
    """In a fresh interpreter: a long test process may serve the block from memory it already holds."""
    import subprocess
    import sys

    script = """
import json, numpy as np
from codelift.pipeline import measure
with measure() as big:
    block = np.ones(50 * 2**20 // 8)  # 50 MiB, touched
    block += 1
del block
with measure() as small:
    pass
print(json.dumps([big["peak_memory_mb"], small["peak_memory_mb"]]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    big, small = json.loads(out.stdout.strip().splitlines()[-1])
    assert big - small > 40  # the first peak does not leak into the second


def test_the_distill_stage_can_cache_the_teacher_once_then_train_from_the_cache(tiny_model_dir, data_dir, tmp_path):
    from rich.console import Console

    from codelift.config import DistillStage
    from codelift.data import load_tasks
    from codelift.io import write_jsonl
    from codelift.pipeline import RunContext, Stage, distill

    train = tmp_path / "train.jsonl"
    write_jsonl(train, (t.to_dict() for t in load_tasks("mbpp", "prompt", data_dir=data_dir)))
    model = Stage("student", tmp_path, {"model": str(tiny_model_dir)}, "fp")
    settings = DistillStage(enabled=True, cache_top_k=8, method="lora", max_steps=1, batch_size=2, max_length=128,
                            eval_before_training=False)
    outputs = distill(tmp_path / "kd", settings, model, model, Stage("data", tmp_path, {"train": str(train)}, "fp"),
                      ctx=RunContext(data_dir, "none", Console(quiet=True)))
    assert outputs["model"] == str(tmp_path / "kd" / "merged")
    assert json.loads((tmp_path / "kd" / "teacher_cache" / "manifest.json").read_text())["top_k"] == 8
    manifest = json.loads((tmp_path / "kd" / "run.json").read_text())
    assert manifest["teacher_cache"] == str(tmp_path / "kd" / "teacher_cache") and manifest["steps"] == 1


def test_a_config_with_the_renamed_eval_mode_is_told_what_it_became(tmp_path):
    """`eval.mode` mixed a prompt format with a strategy; a config that still sets it gets one sentence
    naming its line and the new settings, not pydantic's "extra inputs are not permitted"."""
    config = tmp_path / "old.yaml"
    config.write_text("eval:\n  limit: 5\n  mode: plain\n")
    with pytest.raises(CodeliftError, match=r"old.yaml, line 3: field 'eval.mode': .*prompt_format .*plain is raw"):
        load_config(RunConfig, config)
    cfg = load_config(RunConfig, None, sets=["eval.prompt_format=raw"])
    assert cfg.eval.prompt_format == "raw"
    assert eval_config(cfg.eval, "m", "mbpp:validation").prompt_format == "raw"  # every row is prompted alike


def test_a_nested_setting_added_later_keeps_old_fingerprints_at_its_default():
    """plan.generate.direction (nested), plan.deterministic and plan.compare_forward came after plan stages were made: at their
    defaults they are left out too."""
    import hashlib

    from codelift.config import PlanGenerateConfig, PlanStage
    from codelift.pipeline import stage_fingerprint

    before = PlanStage().model_dump(mode="json", exclude={"report_to"})
    del before["generate"]["direction"], before["deterministic"], before["compare_forward"]  # all came later
    made_before = hashlib.sha256(json.dumps(["plan", before, []]).encode()).hexdigest()[:16]
    assert stage_fingerprint("plan", PlanStage()) == made_before
    forward = PlanStage(generate=PlanGenerateConfig(direction="forward"))
    assert stage_fingerprint("plan", forward) != made_before


def test_a_finished_stage_is_reused_only_with_the_very_files_it_handed_on(tmp_path):
    """Every file a stage wrote and hands on has its SHA-256 in the stage's run.json; a flipped byte or a
    missing file is named when the stage would be reused, never read as the next stage's input."""
    from pydantic import BaseModel
    from rich.console import Console

    from codelift.pipeline import RunContext, Stages

    class Settings(BaseModel):
        steps: int = 1

    made = []

    def make(folder, settings, ctx):
        made.append(folder)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights.bin").write_bytes(bytes(range(256)))
        (folder / "train.jsonl").write_text('{"task_id": "t/1"}\n')
        return {"model": str(folder / "model"), "train": str(folder / "train.jsonl"), "tasks": 1,
                "base": str(tmp_path / "shipped.bin")}  # not the stage's own file: not checked

    (tmp_path / "shipped.bin").write_bytes(b"weights of a shipped model")
    stages = Stages(tmp_path / "run", RunContext(None, "none", Console(quiet=True)))
    stages.run("sft", make, Settings())
    record = json.loads((tmp_path / "run" / "sft" / "run.json").read_text())["pipeline"]
    assert sorted(record["checksums"]) == ["model/weights.bin", "train.jsonl"]
    (tmp_path / "shipped.bin").write_bytes(b"another shipped model")
    stages.run("sft", make, Settings())
    assert len(made) == 1  # reused

    weights = tmp_path / "run" / "sft" / "model" / "weights.bin"
    weights.write_bytes(bytes([1]) + bytes(range(1, 256)))
    with pytest.raises(CodeliftError, match=rf"{weights}: changed or damaged \(its SHA-256 is not the one in .*run.json\) "
                                            rf"since the sft stage finished; remove .*sft \(and the stages after it\)"):
        stages.run("sft", make, Settings())
    weights.unlink()
    with pytest.raises(CodeliftError, match=rf"{weights}: missing since the sft stage finished"):
        stages.run("sft", make, Settings())

    del record["checksums"]  # a folder finished before checksums were recorded still resumes
    manifest = json.loads((tmp_path / "run" / "sft" / "run.json").read_text())
    (tmp_path / "run" / "sft" / "run.json").write_text(json.dumps({**manifest, "pipeline": record}))
    stages.run("sft", make, Settings())
    assert len(made) == 1


def test_the_chain_of_thought_row_is_the_final_student_asked_to_plan_and_weighed_against_it(tmp_path):
    from codelift.config import EvalStage
    from codelift.pipeline import Stage, ablation_variants

    def stage(name, ran=True):
        return Stage(name, tmp_path / name, {"model": str(tmp_path / name / "merged")}, "fp", ran=ran)

    off = Stage("off", tmp_path, {}, "fp", ran=False)
    variants = ablation_variants(EvalStage(chain_of_thought=True, candidates=4), stage("teacher"), stage("student"),
                                 off, stage("distill"), off, off)
    rows = {v.name: v for v in variants}
    assert list(rows) == ["base", "kd", "kd+select", "kd+cot", "teacher", "teacher+select"]
    assert rows["kd+cot"].strategy == "cot" and rows["kd+cot"].vs == "kd" and rows["kd+cot"].model == rows["kd"].model
    assert "kd+cot" not in {v.name for v in ablation_variants(EvalStage(), stage("teacher"), stage("student"), off,
                                                              stage("distill"), off, off)}


def test_the_forward_plan_row_is_weighed_against_the_backward_plan_row(tmp_path):
    """CodePLAN's comparison: the student trained on forward plans (the teacher never saw the solution)."""
    from codelift.config import EvalStage
    from codelift.pipeline import Stage, ablation_variants

    def stage(name):
        return Stage(name, tmp_path / name, {"model": str(tmp_path / name / "merged")}, "fp")

    off = Stage("off", tmp_path, {}, "fp", ran=False)
    variants = ablation_variants(EvalStage(teacher=False), stage("teacher"), stage("student"), stage("sft"), off,
                                 stage("plan"), off, stage("plan-forward"))
    rows = {v.name: v for v in variants}
    assert list(rows) == ["base", "sft", "sft+plan", "sft+forward-plan"]
    forward = rows["sft+forward-plan"]
    assert forward.vs == "sft+plan" and forward.strategy == "plan" and forward.model.endswith("plan-forward/merged")
    plans = tmp_path / "plans.jsonl"  # given plans need no teacher; forward ones do
    plans.write_text("")
    with pytest.raises(CodeliftError, match="forward plans are written by the teacher"):
        check_run(RunConfig(plan={"enabled": True, "compare_forward": True, "plans_file": str(plans)}), None)


def test_the_run_indexes_instruction_only_documents_when_asked(data_dir, tmp_path):
    from rich.console import Console

    from codelift.config import RagStage
    from codelift.pipeline import RunContext, build_knowledge_index

    outputs = build_knowledge_index(tmp_path, RagStage(knowledge_base=["mbpp:prompt"], index="flat",
                                                       document="instruction"),
                                    ctx=RunContext(data_dir, "none", Console(quiet=True)))
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["document"] == "instruction"
    assert outputs["index"] == str(tmp_path / "index")


def test_the_prefer_stage_trains_the_distilled_student_and_adds_its_row(tiny_model_dir, data_dir, tmp_path):
    """The stage resumes a finished answers log (the student's judged samples), trains, merges and hands
    on its model; the ablation gains a kd+prefer row after kd, and +select follows the final student."""
    from rich.console import Console

    from codelift.config import EvalStage, PreferStage
    from codelift.data import load_tasks
    from codelift.io import write_jsonl
    from codelift.pipeline import RunContext, Stage, ablation_variants, prefer_passing

    tasks = load_tasks("mbpp", "train", data_dir=data_dir)[:8]
    train = tmp_path / "train.jsonl"
    write_jsonl(train, (t.to_dict() for t in tasks))
    settings = PreferStage(enabled=True, samples_per_task=2, max_steps=1, batch_size=2, max_length=192,
                           eval_before_training=False, bf16=False)
    folder = tmp_path / "prefer"
    folder.mkdir()
    write_jsonl(folder / "answers.jsonl", [{"settings": {
        "teacher": str(tiny_model_dir), "samples_per_task": 2, "max_new_tokens": settings.max_new_tokens,
        "temperature": settings.sample_temperature, "seed": settings.seed}}] + [
        {"task_id": t.task_id, "answers": [f"```python\n{t.solution}```", "```python\ndef f():\n    return 0\n```"]}
        for t in tasks])
    kd = Stage("distill", tmp_path, {"model": str(tiny_model_dir)}, "fp")
    outputs = prefer_passing(folder, settings, kd, Stage("data", tmp_path, {"train": str(train)}, "fp"),
                             ctx=RunContext(data_dir, "none", Console(quiet=True)))
    assert outputs["model"] == str(folder / "merged") and (folder / "merged" / "config.json").is_file()
    assert json.loads((folder / "run.json").read_text())["preference_yield"]["pairs"] == 8

    def stage(name, model):
        return Stage(name, tmp_path / name, {"model": model}, "fp")

    off = Stage("off", tmp_path, {}, "fp", ran=False)
    variants = ablation_variants(EvalStage(candidates=4), stage("teacher", "t"), stage("student", "s"), off,
                                 kd, off, off, prefer=stage("prefer", outputs["model"]))
    assert [v.name for v in variants] == ["base", "kd", "kd+prefer", "kd+prefer+select", "teacher", "teacher+select"]
    assert variants[2].model == outputs["model"] and variants[2].vs is None
