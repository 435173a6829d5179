"""Trainer callbacks: crash-safe checkpoints and honest throughput.

Checkpoints. The Trainer writes `checkpoint-N/` file by file. A marker written after the last file commits the
checkpoint; on restart, uncommitted folders (a run killed mid-save) are removed and training
resumes from the newest committed one.
"""

from __future__ import annotations

import os
import re
import shutil
import time
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


class Throughput(TrainerCallback):
    """Tokens per second of optimizer steps alone: evaluation, checkpointing and start-up are
    left out, so runs with different evaluation schedules compare fairly."""

    def __init__(self):
        self.seconds, self.tokens_at_start, self._began = 0.0, 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start = state.num_input_tokens_seen  # tokens restored by a resume

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._began

    def tokens_per_second(self, state) -> float | None:
        tokens = state.num_input_tokens_seen - self.tokens_at_start
        return tokens / self.seconds if self.seconds else None
