import json

from typer.testing import CliRunner

from codelift.cli import app


def test_run_goes_from_data_to_the_ablation_table(tiny_model_dir, data_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"""model: {tiny_model_dir}
train: ["mbpp:prompt"]
sft: {{method: lora, max_steps: 2, batch_size: 2, max_length: 128}}
knowledge_base: ["mbpp:prompt"]
eval_limit: 2
""")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--data-dir", str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ablation = json.loads((out / "ablation.json").read_text())
    assert list(ablation) == ["base", "sft", "sft+rag"]
    assert all(0 <= row["pass@1"] <= 1 for row in ablation.values())
    for name in ablation:
        assert len((out / "eval" / name / "samples.jsonl").read_text().splitlines()) == 2
    assert (out / "sft" / "merged" / "config.json").is_file() and (out / "index" / "manifest.json").is_file()
    assert "sft+rag" in result.output and "pass@1" in result.output


def test_run_config_errors_name_the_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("sft: {method: lora, lora_r: lots}\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code != 0 and "sft.lora_r" in str(result.exception)
