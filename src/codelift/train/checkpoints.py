"""Crash-safe checkpoints on top of the Hugging Face Trainer.

The Trainer writes `checkpoint-N/` file by file. A marker written after the last file commits the
checkpoint; on restart, uncommitted folders (a run killed mid-save) are removed and training
resumes from the newest committed one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

COMMITTED = "codelift-committed"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class CommitCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMMITTED).touch()


def last_committed_checkpoint(folder: Path) -> str | None:
    """The newest committed checkpoint in `folder`; the main process deletes uncommitted ones."""
    if not folder.is_dir():
        return None
    committed = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if not match:
            continue
        if (path / COMMITTED).is_file():
            committed.append((int(match.group(1)), path))
        elif int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(path, ignore_errors=True)
    return str(max(committed)[1]) if committed else None
