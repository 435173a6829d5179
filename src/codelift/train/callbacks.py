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


class TrainingProgress(TrainerCallback):
    """One line for a training run, as people expect of a tool: optimizer steps with the latest
    loss, validation loss, tokens/s and the time left. It replaces the Trainer's own bar, which
    prints every log dictionary into the terminal; those stay in `metrics.jsonl`. On a terminal the
    line is a live rich bar; into a file or a pipe (the log of a long run) a live bar shows nothing
    until it stops, so the same line is printed every `every` seconds and at the end."""

    def __init__(self, title: str, throughput: Throughput, every: float = 60.0):
        self.title, self.throughput, self.every = title, throughput, every
        self.progress, self.task, self.log, self.status = None, None, None, {}
        self.began = self.printed = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console()
        if not console.is_terminal:
            self.log = Console(width=200)  # 80 columns would cut the line
            self.began = self.printed = time.monotonic()
            self.first_step = state.global_step  # a resumed run's time left counts this run's steps only
            return
        self.progress = Progress(TextColumn(self.title), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console)
        self.progress.start()
        self.task = self.progress.add_task(self.title, total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step, status=self.line(state))
        elif self.log and time.monotonic() - self.printed >= self.every:
            self.print_line(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        names = {"loss": "loss", "eval_loss": "validation loss"}
        self.status |= {label: logs[key] for key, label in names.items() if logs and key in logs}
        if self.progress:
            self.progress.update(self.task, status=self.line(state))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step, status=self.line(state))
            self.progress.stop()
            self.progress = None
        elif self.log:
            self.print_line(state)
            self.log = None

    def line(self, state) -> str:
        speed = self.throughput.tokens_per_second(state)
        parts = [f"{label} {value:.4f}" for label, value in self.status.items()]
        return "  ".join(parts + ([f"{speed:,.0f} tokens/s"] if speed else []))

    def print_line(self, state) -> None:
        self.printed = time.monotonic()
        done, left = state.global_step - self.first_step, state.max_steps - state.global_step
        eta = f"  {(self.printed - self.began) / done * left / 60:.1f} min left" if done and left else ""
        self.log.print(f"{self.title}  {state.global_step}/{state.max_steps} steps  {self.line(state)}{eta}",
                       markup=False, highlight=False)
