"""Artifacts: one sentence on a full disk, nothing half-written, and what a killed writer left removed."""

import json
import shutil
import subprocess
import sys

import pytest

FULL_DISK = """
import json, os, sys
from pathlib import Path
from codelift.errors import CodeliftError
from codelift.io import append_rows, read_appended, write_json

folder = Path(sys.argv[1])
log = folder / "log.jsonl"
append_rows(log, [{"task_id": "a"}])
seen = {}
for name, write in [("write_json", lambda: write_json(folder / "big.json", {"x": "y" * 200_000})),
                    ("append_rows", lambda: append_rows(log, [{"task_id": "b", "text": "z" * 200_000}]))]:
    try:
        write()
    except CodeliftError as e:
        seen[name] = str(e)
seen["left"] = sorted(os.listdir(folder))
seen["log"] = read_appended(log)
print(json.dumps(seen))
"""


def test_a_full_disk_is_one_sentence_and_leaves_nothing_half_written(tmp_path):
    """A 64 KiB tmpfs, mounted in a user and mount namespace of its own (no privileges needed)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here to mount a small filesystem")
    folder = tmp_path / "small"
    folder.mkdir()
    mount_and_run = 'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3" "$1"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", mount_and_run, "sh", str(folder), sys.executable, FULL_DISK],
                          capture_output=True, text=True, timeout=120)
    if done.returncode and "mount" in done.stderr and "Traceback" not in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    for name, path in [("write_json", folder / "big.json"), ("append_rows", folder / "log.jsonl")]:
        assert seen[name].startswith(f"{path}: no space left on its device (")
        assert "MiB free" in seen[name] and "run the same command again" in seen[name]
    assert seen["left"] == ["log.jsonl"]  # no temporary file of the failed write
    assert seen["log"] == [{"task_id": "a"}]  # the log cut back to its whole lines: the next append follows them


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    import os

    from codelift.io import write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone, alive = int(dead.stdout), os.getppid()  # a finished process's pid, and a running one's
    (tmp_path / f".out.json.{gone}.tmp").write_text('{"half": ')
    (tmp_path / f".out.json.{gone}.tmp.json").write_text("not ours")
    (tmp_path / f".out.json.{alive}.tmp").mkdir()  # a writer still at work: left alone
    (tmp_path / f".other.json.{gone}.tmp").write_text("another target's")
    write_json(tmp_path / "out.json", {"whole": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.json", f".out.json.{gone}.tmp.json", f".out.json.{alive}.tmp", f".other.json.{gone}.tmp"])
    assert json.loads((tmp_path / "out.json").read_text()) == {"whole": True}
