import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from codelift.cli import app

runner = CliRunner()
CODELIFT = str(Path(sys.executable).parent / "codelift")


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "model", "generate", "run"):
        assert command in result.output


def test_data_prepare_prints_the_drop_table(data_dir, tmp_path):
    out = tmp_path / "alpaca.jsonl"
    result = runner.invoke(app, ["data", "prepare", "code_alpaca", "--out", str(out), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "not_python" in result.output and "contaminated" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 500 < len(rows) < 2017 and all(compile(r["solution"], "x", "exec") for r in rows)


def test_bad_input_exits_2_with_one_sentence(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    proc = subprocess.run([CODELIFT, "data", "show", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.jsonl, line 1: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([CODELIFT, "data", "prepare", "mbpp", "--split", "dev", "--out", str(tmp_path / "x.jsonl")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown split 'dev' for mbpp" in proc.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_a_prompt_format_or_strategy_not_known_is_named_before_any_model_loads(tmp_path):
    for option, value, expected in (("--format", "plain", "'chat', 'instruct' or 'raw'"),
                                    ("--strategy", "beam", "'direct', 'plan' or 'cot'")):
        proc = subprocess.run([CODELIFT, "eval", "never-loaded", option, value, "--out", str(tmp_path / value)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        field = "prompt_format" if option == "--format" else "strategy"
        assert f"field '{field}'" in proc.stderr and expected in proc.stderr
        assert not (tmp_path / value).exists()


def test_model_prune_info_and_generate(tiny_model_dir, tmp_path):
    student = tmp_path / "student"
    result = runner.invoke(app, ["model", "prune", str(tiny_model_dir), "--keep-layers", "3", "--out", str(student)])
    assert result.exit_code == 0, result.output
    assert json.loads((student / "pruning.json").read_text())["kept_layers"] == [0, 2, 3]
    result = runner.invoke(app, ["model", "info", str(student)])
    assert result.exit_code == 0 and "49,152" in result.output
    assert [line for line in result.output.splitlines() if "layers" in line][0].split()[-2] == "3"
    result = runner.invoke(app, ["generate", str(student), "def add(a, b):", "--max-new-tokens", "4", "--format", "raw"])
    assert result.exit_code == 0 and "tokens/s" in result.output
    same = runner.invoke(app, ["generate", str(student), "def add(a, b):", "--max-new-tokens", "4", "--prompt-format",
                               "raw"])
    assert same.exit_code == 0 and same.output.splitlines()[0] == result.output.splitlines()[0]  # one option, two names


def test_sigterm_unwinds_so_open_engines_close(tmp_path):
    """A terminated command runs its context managers' exits (a vllm engine's shutdown among them)."""
    closed = tmp_path / "closed"
    script = f"""
import contextlib, os, signal, time
from pathlib import Path
from codelift.cli import exit_on_terminate
exit_on_terminate()
with contextlib.ExitStack() as stack:
    stack.callback(Path({str(closed)!r}).write_text, "yes")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 128 + 15 and closed.read_text() == "yes"


def test_errors_print_user_text_whole_with_its_brackets():
    """rich would read `[gemma]` as markup and drop it; the entry point prints the message as text."""
    import subprocess
    import sys

    script = "import sys; sys.argv = ['codelift', 'data', 'show', 'x[gemma].jsonl']; from codelift.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2 and "error: x[gemma].jsonl: file not found." in done.stderr
