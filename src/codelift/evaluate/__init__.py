"""Execution-based evaluation: the sandbox, the metrics, and scoring of generated samples."""

from codelift.evaluate.sandbox import Job, Limits, Result, default_workers, isolation_mode, run, run_many
from codelift.evaluate.score import assemble_program, score_samples, summarize

__all__ = ["Job", "Limits", "Result", "assemble_program", "default_workers", "isolation_mode", "run", "run_many",
           "score_samples", "summarize"]
