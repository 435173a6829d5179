"""Task records, loaders and cleaning."""

from codelift.data.loaders import SPLITS, load_sources, load_tasks
from codelift.data.task import Task

__all__ = ["SPLITS", "Task", "load_sources", "load_tasks"]
