import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from codelift.cli import app
from codelift.config import RunConfig, load_config
from codelift.errors import CodeliftError
from codelift.tune import next_settings, run_tuning, stop_reason


@pytest.fixture()
def config(tiny_model_dir, tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(f"""
data: {{train: ["mbpp:prompt"], validation: "mbpp:validation"}}
student: {{model: {tiny_model_dir}}}
sft: {{method: lora, max_steps: 1, batch_size: 2, max_length: 128, eval_before_training: false}}
rag: {{enabled: false}}
eval: {{limit: 2, max_new_tokens: 8, codebleu: false}}
tune:
  space: {{sft.learning_rate: [0.001, 0.01], sft.lora_r: [2]}}
""")
    return path


def rounds_of(out):
    return [json.loads(line) for line in (out / "tune.jsonl").read_text().splitlines()]


def test_tune_stops_at_the_target_and_logs_the_round(config, data_dir, tmp_path):
    out = tmp_path / "search"
    result = CliRunner().invoke(app, ["tune", str(config), "--target", "pass@1=0", "--data-dir", str(data_dir),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    [first] = rounds_of(out)
    assert first["settings"] == {} and first["score"] == 0.0 and first["decision"].startswith("first round")
    summary = json.loads((out / "tune.json").read_text())
    assert summary["stop_reason"].startswith("target met") and summary["best_round"] == 1
    assert len((out / "round-01" / "samples.jsonl").read_text().splitlines()) == 2  # 2 validation problems
    assert "target met" in result.output


def test_tune_changes_one_setting_per_round_stops_on_patience_and_resumes(config, data_dir, tmp_path):
    out, quiet = tmp_path / "search", Console(quiet=True)
    cfg = load_config(RunConfig, config, sets=["tune.patience=1", "tune.max_rounds=5"])
    result = run_tuning(cfg, out, data_dir=data_dir, console=quiet)
    assert [r["settings"] for r in result["rounds"]] == [{}, {"sft.learning_rate": 0.001}]
    assert result["stop_reason"] == "no improvement in the last 1 rounds (patience 1)"
    assert result["rounds"][1]["decision"].startswith("no better than round 1")
    sft_folders = sorted(p.name for p in (out / "stages").glob("sft-*"))
    assert len(sft_folders) == 2 and len(list((out / "stages").glob("data-*"))) == 1  # data shared by the rounds

    console = Console(record=True, width=200)
    resumed = run_tuning(load_config(RunConfig, config, sets=["tune.patience=5", "tune.max_rounds=5"]), out,
                         data_dir=data_dir, console=console)
    assert [r["settings"] for r in resumed["rounds"]] == [{}, {"sft.learning_rate": 0.001},
                                                          {"sft.learning_rate": 0.01}, {"sft.lora_r": 2}]
    assert resumed["stop_reason"].startswith("search space exhausted")
    text = console.export_text()
    assert "tuning round 1" not in text and "tuning round 3" in text and "already done" in text
    assert len(rounds_of(out)) == 4


def test_next_settings_starts_from_the_best_round_and_skips_the_current_value():
    cfg = load_config(RunConfig, None, sets=["tune.space={sft.learning_rate: [0.0003, 0.001], sft.lora_r: [8, 16]}"])
    assert next_settings(cfg, []) == {}
    rounds = [{"round": 1, "settings": {}, "score": 0.1, "improved": True},
              {"round": 2, "settings": {"sft.learning_rate": 0.001}, "score": 0.2, "improved": True}]
    # lora's learning rate 3e-4 is the config's own, and lora_r 16 the default: neither is a change
    assert next_settings(cfg, rounds[:1]) == {"sft.learning_rate": 0.001}
    assert next_settings(cfg, rounds) == {"sft.learning_rate": 0.001, "sft.lora_r": 8}
    assert stop_reason(load_config(RunConfig, None, sets=["tune.target=0.2"]), rounds).startswith("target met")
    assert stop_reason(load_config(RunConfig, None, sets=["tune.max_rounds=2"]), rounds) == "max rounds reached (2)"


@pytest.mark.parametrize("validation", ["mbpp:test", "humaneval"])
def test_tune_never_scores_on_a_test_split(validation, tmp_path):
    cfg = load_config(RunConfig, None, sets=[f"data.validation={validation}"])
    with pytest.raises(CodeliftError, match="test split"):
        run_tuning(cfg, tmp_path)


def test_tune_checks_every_value_of_the_space_before_training(tmp_path):
    cfg = load_config(RunConfig, None, sets=["tune.space={sft.method: [ia3, prompt]}"])
    with pytest.raises(CodeliftError, match="sft.method=prompt: sft.method: prompt tuning"):
        run_tuning(cfg, tmp_path)
