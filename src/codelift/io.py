"""Reading and writing artifacts: atomic writes, line-checked JSONL, and the run manifest."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from codelift.errors import CodeliftError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it onto `target` only if the block succeeds.

    Readers therefore see either the old artifact or the complete new one, never half of it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if is_dir and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as e:
        refuse_full_disk(target, e)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def remove_stale_temporaries(target: Path) -> None:
    """Remove what a killed writer of `target` left: its temporary siblings whose process is gone (or
    whose pid this process now has: pids are reused)."""
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = tmp.name.removeprefix(f".{target.name}.").removesuffix(".tmp")
        if pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def refuse_full_disk(path: Path, error: OSError) -> None:
    """A full disk (or quota) as one sentence naming the file and the space left; other errors are
    left to the caller to re-raise untouched."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    free = shutil.disk_usage(path.parent).free / 2**20
    raise CodeliftError(f"{path}: no space left on its device ({free:.1f} MiB free); nothing was half-written: "
                         f"free some space and run the same command again.") from None


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256 (streamed): a manifest records it, a later reader checks it."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; a bad line stops with its number."""
    path = Path(path)
    if not path.is_file():
        raise CodeliftError(f"{path}: file not found.")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CodeliftError(f"{path}, line {lineno}: not valid JSON ({e.msg}); expected one JSON object per line.") from None
            if not isinstance(obj, dict):
                raise CodeliftError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}.")
            yield lineno, obj


def read_records(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield (location, object) from a JSONL file or a JSON file holding a list of objects."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise CodeliftError(f"{path}: file not found.")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CodeliftError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
        if not isinstance(rows, list):
            raise CodeliftError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}.")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise CodeliftError(f"{path}, record {i}: expected a JSON object, got {type(row).__name__}.")
            yield f"{path}, record {i}", row
    else:
        for lineno, row in read_jsonl(path):
            yield f"{path}, line {lineno}", row


def check_same_settings(what: str, before: dict, now: dict) -> None:
    """Work on disk is resumed only with the settings that started it; `what` names it."""
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        raise CodeliftError(f"{what} was made with other settings ({', '.join(changed)} differ); use another --out "
                            f"or remove it to start over.")


def read_appended(path: Path) -> list[dict]:
    """Rows of an append-only JSONL log; a last line cut short by a kill is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append whole lines in one write, so a kill lands before or after a chunk of rows, not (but for
    the kernel's own page-by-page copy of a large write) inside it; if the disk fills mid-write the log
    is cut back to what it held, so no broken line is left for the next append to follow."""
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    size = path.stat().st_size if path.exists() else 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = 0
            while written < len(data):  # a short write is continued, never left half a line
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)
    except OSError as e:
        os.truncate(path, size)
        refuse_full_disk(path, e)
        raise


def resume_log(log: Path, settings: dict) -> dict[str, dict]:
    """task_id -> its logged outcome; the log's first line holds the settings it was made with."""
    rows = read_appended(log)
    if not rows:
        append_rows(log, [{"settings": settings}])
        return {}
    check_same_settings(str(log), rows[0].get("settings") or {}, settings)
    return {row["task_id"]: row for row in rows[1:]}


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# Set (to "1") by --trust-remote-code or `trust_remote_code: true`: models and embedders may then run
# code shipped in their own repositories. An environment setting, so the processes a run starts inherit it.
TRUST_REMOTE_CODE_ENV = "CODELIFT_TRUST_REMOTE_CODE"


def trust_remote_code() -> bool:
    return os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"


def run_manifest(config: dict, **extra: Any) -> dict:
    """What `run.json` records beside every output: config, package versions, git revision, and
    whether models could run their own code."""
    packages = ["codelift", "torch", "transformers", "peft", "accelerate", "trl", "faiss-cpu",
                "sentence-transformers", "datasets", "bitsandbytes"]
    versions = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {"config": config, "versions": versions, "python": platform.python_version(),
            "git_revision": _git_revision(), "trust_remote_code": trust_remote_code(), **extra}
