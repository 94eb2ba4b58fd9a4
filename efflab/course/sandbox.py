"""Run one submitted notebook where it can do little harm, and report what each cell did.

``run_sandboxed(nb, grade_cell_ids, limits)`` (the grader's side) makes a fresh folder::

    efflab-grade-XXXX/
        work/      the submission's only writable folder: its working directory, HOME,
                   TMPDIR, /tmp, EFFLAB_RESULTS and EFFLAB_ANSWERS all point inside it
        canary/    files the grader wrote and hashed (checked in a trusted class)

and runs ``python efflab/course/sandbox.py`` (the *driver*) inside it. By default the driver
runs under bubblewrap (``bwrap``, Debian's ``bubblewrap``, Flatpak's sandbox):

- ``--unshare-all``: its own PID, network (loopback only), IPC, UTS, cgroup and user
  namespaces; inside, the run is user 65534 with no capabilities and cannot make more user
  namespaces;
- ``--die-with-parent``, ``--new-session``: the driver is PID 2 under bwrap's own PID 1, so
  when the driver ends (or the grader kills the sandbox) every process of the run dies with
  it, a ``start_new_session=True`` child with an empty environment included;
- the file system is built from nothing: /usr, a few files of /etc (never /etc/shadow or
  /etc/ssl/private, which a root grader's mapped user would own), /sys, the interpreter,
  the venv, the efflab package and its ``data/`` (weights, prepared corpus) read-only; a new /proc
  (only the sandbox's processes) and a minimal /dev; the work folder read-write at
  ``/sandbox``, and /tmp inside it. The instructor's notebooks, the tests, the other
  submissions, the gradebook and the grader's own files are not there to read. Paths
  inside are fixed (``/sandbox``), so they read the same in every run.

``isolation="process"`` (``efflab grade --trusted-class``) runs the driver as a plain child
process instead: the same limits, outside writes only *detected* with the canary, no
namespaces. It is for a class the instructor trusts, or a machine without bubblewrap.

The driver marks itself non-dumpable (so the kernel cannot open ``/proc/<driver>/fd/1``,
the grader's channel), lowers its limits with ``resource.setrlimit`` (data segment, file
size, no core dumps) so the Jupyter kernel it starts inherits them, and
executes the cells one at a time with nbclient:

- a per-cell time limit, and a per-notebook deadline the per-cell limit never outlasts;
  a cell that hits it is interrupted, and if the kernel does not answer afterwards every
  later cell is "not run";
- a kernel that dies (a crash, a kill on memory) fails the cell it ran and every later one;
- ``input()`` raises at once (no stdin), widgets only display (nothing waits for them);
- a cell's outputs are kept up to ``output_bytes``, then cut with a note;
- before each check (grade) cell the kernel's answer log is pointed at a fresh file, so the
  evidence a check cell logged is known to come from that cell.

The memory limit is ``RLIMIT_DATA`` (private writable memory), not the address space: V8
(vl-convert, which draws the lessons' static charts) reserves tens of GiB of address space
it never touches, which ``RLIMIT_AS`` counts and kills. The grader also watches the total
resident memory and the process count of the whole run and kills all of it past the limits.

The driver reports each cell as a JSON line on its stdout (the kernel's own stdout and
stderr go to /dev/null). The grader reads that channel incrementally and caps it
(``MAX_REPORT_BYTES``; stderr keeps only its tail), so a flood is cut and recorded as the
reason, never read into memory whole; cells reported before a kill keep their result.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import json
import os
import resource
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty

TRACE = "@@efflab-cell "
NOTEBOOK = "@@efflab-notebook "
PROBE = "@@efflab-probe "
TOKEN_ENV = "EFFLAB_SANDBOX"
ANSWER_DIR = ".efflab-grading"
INSIDE = "/sandbox"              # where the work folder is mounted under bubblewrap
ISOLATIONS = ("bwrap", "process")
MAX_REPORT_BYTES = 256 * 2**20   # the driver's whole report (cells and the executed notebook)
MAX_PROBE_BYTES = 16 * 2**20     # a probe run's whole report (the outputs of every probe)
STDERR_TAIL = 64 * 2**10
INSTALL_BWRAP = "apt-get install bubblewrap"


@dataclass(frozen=True)
class Limits:
    """How long and how much one submission may take.

    ``cell_s``: seconds per cell; ``notebook_s``: seconds for the whole notebook, kernel start
    included; ``memory_bytes``: private memory (``RLIMIT_DATA``) of each process of the run,
    and the resident memory of all of them together; ``file_bytes``: the largest file it may
    write; ``output_bytes``: the outputs one cell may keep; ``processes``: processes of the run
    at once; ``probe_s``: how long an interrupted kernel gets to answer before it counts as
    hung; ``threads``: math-library threads per kernel; ``cpus``: the CPUs the whole run is
    pinned to (its affinity mask, which efflab's measurements read as "every CPU this process
    may use"), so runs graded side by side never share a core.
    """

    cell_s: float = 120.0
    notebook_s: float = 600.0
    memory_bytes: int = 6 * 2**30
    file_bytes: int = 1 * 2**30
    output_bytes: int = 8 * 2**20
    processes: int = 256
    probe_s: float = 10.0
    threads: int | None = None
    cpus: tuple[int, ...] | None = None

    def __post_init__(self):
        # imported here: the child runs this file as a script and must not import efflab
        # (and torch) just to run a notebook
        from efflab.core.config import ConfigError

        for name in ("cell_s", "notebook_s", "probe_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0):
                raise ConfigError(name, v, "a positive number of seconds")
        if self.cell_s > self.notebook_s:
            raise ConfigError("cell_s", self.cell_s, f"at most notebook_s={self.notebook_s}")
        for name in ("memory_bytes", "file_bytes", "output_bytes"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 2**20):
                raise ConfigError(name, v, "an integer number of bytes >= 1 MiB")
        if not (isinstance(self.processes, int) and self.processes >= 8):
            raise ConfigError("processes", self.processes, "an integer >= 8")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ConfigError("threads", self.threads, "None or an integer >= 1")
        if self.cpus is not None and not (isinstance(self.cpus, tuple) and self.cpus
                                          and all(isinstance(c, int) and c >= 0 for c in self.cpus)):
            raise ConfigError("cpus", self.cpus, "None or a non-empty tuple of CPU numbers")


@dataclass
class CellRun:
    """What happened to one code cell: ``status`` is ok | error | timeout | dead | not_run."""

    index: int
    cell_id: str
    status: str
    reason: str = ""
    evidence: list = field(default_factory=list)  # [{"exercise", "evidence"}] for grade cells


@dataclass
class SandboxResult:
    cells: list[CellRun]
    notebook: dict | None
    violations: list[str]
    note: str = ""  # what went wrong around the cells (kernel start, child crash, deadline)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------
# The driver: runs inside work/, with its own limits
# ------------------------------------------------------------------------------------------

def _emit(prefix: str, obj) -> None:
    sys.stdout.write(prefix + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36


def _set_limits(limits: dict) -> None:
    def lower(kind, value):
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))

    lower(resource.RLIMIT_DATA, int(limits["memory_bytes"]))
    lower(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    lower(resource.RLIMIT_CORE, 0)
    # no RLIMIT_NPROC: it counts every process of the user (and never binds root); the
    # grader counts the run's own processes instead (_Watch)


def _error_text(outputs, limits: dict, reply: dict | None = None) -> str:
    """"Name: first line" of the error a cell raised, or "". ``reply``: the content of the
    kernel's execute reply where its status was "error" — an error even when no error output
    came (IPython could not format the traceback, say, with memory exhausted)."""
    error = next((out for out in outputs if out.get("output_type") == "error"), reply)
    if not error:
        return ""
    value = str(error.get("evalue", "")).strip().splitlines()
    name = error.get("ename", "Error")
    text = value[0] if value else ""
    if name == "MemoryError" and not text:
        text = f"over the memory limit ({limits['memory_bytes'] / 2**30:g} GiB per process)"
    return f"{name}: {text}".strip()


def _read_answers(path: Path, cap: int = 4 * 2**20) -> list:
    if not path.is_file():
        return []
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(cap)
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("exercise"), str):
            entries.append({"exercise": entry["exercise"], "evidence": entry.get("evidence")})
    return entries


async def _quiet_execute(client, code: str, timeout: float) -> bool:
    """Run ``code`` silently in the kernel; True if it answered within ``timeout`` seconds."""
    from jupyter_core.utils import ensure_async  # child side: see _run_cells

    kc = client.kc
    msg_id = await ensure_async(kc.execute(code, silent=True, store_history=False,
                                           allow_stdin=False))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            msg = await ensure_async(kc.shell_channel.get_msg(timeout=min(left, 1.0)))
        except Empty:
            if not await ensure_async(client.km.is_alive()):
                return False
            continue
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg.get("content", {}).get("status") == "ok"


def _capped_client(output_bytes: int):
    """An nbclient ``NotebookClient`` that keeps at most ``output_bytes`` of outputs per cell."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_output

    class CappedClient(NotebookClient):
        kept: dict = {}

        def output(self, outs, msg, display_id, cell_index):
            used = self.kept.get(cell_index, 0)
            if used < 0:  # already cut
                return None
            content = msg.get("content", {})
            size = len(json.dumps(content, default=str))
            if used + size > output_bytes:
                self.kept[cell_index] = -1
                left = output_bytes - used
                if msg.get("msg_type") == "stream" and left > 0:  # keep the head of the text
                    head = {**msg, "content": {**content, "text": str(content.get("text", ""))[:left]}}
                    super().output(outs, head, display_id, cell_index)
                outs.append(new_output("stream", name="stderr", text=(
                    f"[output cut: over the grader's {output_bytes / 2**20:g} MiB per cell]\n")))
                return None
            self.kept[cell_index] = used + size
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


async def _run_cells(job: dict) -> None:
    # imported here, in the child, after __main__ has taken this folder off sys.path
    import nbformat
    from jupyter_core.utils import ensure_async
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    limits = job["limits"]
    start = time.monotonic()
    deadline = start + float(limits["notebook_s"])
    nb = nbformat.from_dict(job["notebook"])
    grade_ids = set(job["grade_cells"])
    work = Path.cwd()
    answers_dir = work / ANSWER_DIR
    answers_dir.mkdir(exist_ok=True)

    state = {"limit": "cell", "cell_s": float(limits["cell_s"])}

    def timeout_for(cell) -> float:
        left = deadline - time.monotonic()
        if left < state["cell_s"]:
            state["limit"] = "notebook"
            return max(left, 0.5)
        state["limit"] = "cell"
        return state["cell_s"]

    failed: dict = {}  # cell index -> the content of an execute reply whose status is "error"

    def on_cell_error(cell, cell_index, execute_reply):
        failed[cell_index] = dict(execute_reply.get("content") or {}) or {"ename": "Error"}

    client = _capped_client(int(limits["output_bytes"]))(
        nb, kernel_name="python3", timeout=int(limits["cell_s"]), timeout_func=timeout_for,
        allow_errors=True, interrupt_on_timeout=False, record_timing=False,
        on_cell_error=on_cell_error,
        startup_timeout=int(max(10, min(120, limits["notebook_s"]))),
        shutdown_kernel="immediate", resources={"metadata": {"path": str(work)}})
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    stopped = ""  # once set, every later cell is not run, with this reason

    def report(i, cell, status, reason="", evidence=()):
        _emit(TRACE, asdict(CellRun(i, str(cell.get("id", "")), status, reason, list(evidence))))

    try:
        async with client.async_setup_kernel(cwd=str(work), stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL):
            for i, cell in code_cells:
                if stopped:
                    report(i, cell, "not_run", stopped)
                    continue
                if time.monotonic() >= deadline:
                    stopped = f"notebook time limit ({limits['notebook_s']:g} s) reached"
                    report(i, cell, "not_run", stopped)
                    continue
                log = None
                if cell.get("id") in grade_ids:
                    log = answers_dir / f"cell-{i}-{secrets.token_hex(4)}.jsonl"
                    ok = await _quiet_execute(client, f"__import__('os').environ[{'EFFLAB_ANSWERS'!r}] = {str(log)!r}",
                                              timeout=max(1.0, min(limits["probe_s"], deadline - time.monotonic())))
                    if not ok:
                        stopped = "the kernel stopped answering"
                        report(i, cell, "not_run", stopped)
                        continue
                try:
                    await client.async_execute_cell(cell, i, execution_count=client.code_cells_executed + 1)
                except CellTimeoutError:
                    which = state["limit"]
                    limit = limits["cell_s"] if which == "cell" else limits["notebook_s"]
                    reason = f"{which} time limit ({limit:g} s) reached"
                    report(i, cell, "timeout", reason, _read_answers(log) if log else ())
                    if which == "notebook":
                        stopped = reason
                        continue
                    await ensure_async(client.km.interrupt_kernel())
                    if not await _quiet_execute(client, "pass", timeout=limits["probe_s"]):
                        stopped = f"the kernel did not stop after the {reason}"
                    continue
                except DeadKernelError:
                    reason = "the kernel died (a crash, or killed for memory)"
                    report(i, cell, "dead", reason)
                    stopped = f"not run: {reason} in cell {cell.get('id') or i}"
                    continue
                err = _error_text(cell.get("outputs", []), limits, failed.pop(i, None))
                evidence = _read_answers(log) if log else ()
                report(i, cell, "error" if err else "ok", err, evidence)
    except Exception as e:  # the kernel would not start, or nbclient failed around the cells
        _emit(TRACE, {"index": -1, "cell_id": "", "status": "setup_error",
                      "reason": f"{type(e).__name__}: {str(e)[:300]}", "evidence": []})
    _emit(NOTEBOOK, nbformat.from_dict(nb))


def _run_probes(job: dict) -> None:
    """The probe run: a fresh interpreter that runs only the code the grader chose (the
    learner's solution cells and the imports before them), then calls each learner function
    through its exercise's collector, on the seeds the grader drew, one report line each.

    The learner's own prints go to /dev/null; the report goes to the channel this driver held
    before any learner code ran."""
    import efflab.check
    from efflab.check.core import Exercise, to_jsonable

    def exercise_named(name):  # its topic module alone: pure-Python checks need no torch
        ex = getattr(efflab.check, name, None)
        return ex if isinstance(ex, Exercise) else efflab.check.REGISTRY.get(name)

    # resolved before any learner code runs, so that code cannot swap the registry's entries
    exercises = {c["exercise"]: exercise_named(c["exercise"]) for c in job["calls"]}

    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    sys.stdout = open(os.devnull, "w", encoding="utf-8")

    def emit(obj) -> None:
        channel.write(PROBE + json.dumps(obj) + "\n")
        channel.flush()

    import signal

    def late(signum, frame):
        raise TimeoutError("over its share of the probe run's time")

    signal.signal(signal.SIGALRM, late)
    steps = len(job["cells"]) + sum(len(c["seeds"]) for c in job["calls"])  # a cell's share
    share = max(1.0, 0.8 * float(job["limits"].get("cell_s", 60)) / max(1, steps))

    def timed(fn):
        signal.setitimer(signal.ITIMER_REAL, share)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace: dict = {"__name__": "__main__"}
    problems = []
    import ast

    for i, code in enumerate(job["cells"]):
        try:  # statement by statement: a line needing the notebook's data does not stop a def
            statements = [ast.Module([node], []) for node in ast.parse(code).body]
        except SyntaxError as e:
            problems.append(f"SyntaxError: {str(e)[:200]}")
            continue
        for tree in statements:
            try:
                timed(lambda tree=tree, i=i: exec(  # noqa: S102
                    compile(tree, f"<solution cell {i}>", "exec"), namespace))
            except BaseException as e:  # noqa: BLE001 - the learner's code: go on, say why
                problems.append(f"{type(e).__name__}: {str(e)[:200]}")
    for call in job["calls"]:
        ex = exercises[call["exercise"]]
        for seed in call["seeds"]:
            try:
                code = compile(call["expr"], "<check cell>", "eval")
                evidence = timed(lambda ex=ex, code=code, seed=seed: ex.collect(
                    eval(code, namespace), seed=seed))  # noqa: S307
            except BaseException as e:  # noqa: BLE001
                evidence = {"collect_error": f"{type(e).__name__}: {str(e)[:200]}"}
            emit({"grade_id": call["grade_id"], "exercise": call["exercise"], "seed": seed,
                  "evidence": to_jsonable(evidence), "problems": problems})


def _kill_descendants() -> None:
    """Kill every process below the driver (orphans included: the driver is a subreaper)."""
    try:
        import psutil
    except ImportError:
        return
    for p in psutil.Process().children(recursive=True):
        try:
            p.kill()
        except psutil.Error:
            continue


def child_main() -> int:
    _prctl(PR_SET_DUMPABLE, 0)         # the kernel may not open /proc/<driver>/fd/*
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the run come back to the driver
    job = json.loads(sys.stdin.read())
    _set_limits(job["limits"])
    try:
        if job.get("mode") == "probe":
            _run_probes(job)
        else:
            asyncio.run(_run_cells(job))
    finally:
        _kill_descendants()
    return 0


# ------------------------------------------------------------------------------------------
# The grader's side
# ------------------------------------------------------------------------------------------

CANARY_FILES = {
    "README.txt": "Grader canary: a submission must not change, add or delete files here.\n",
    "instructor/solutions.ipynb": '{"cells": [], "note": "decoy, not the real solutions"}\n',
    "instructor/gradebook.csv": "student,points\nsomeone,0\n",
}


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "symlink"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[rel + "/"] = "dir"
    return out


def _violations(root: Path, canary_before: dict) -> list[str]:
    found = []
    extra = sorted(p.name for p in root.iterdir() if p.name not in ("work", "canary"))
    if extra:
        found.append(f"wrote outside its folder: {', '.join(extra)}")
    canary = root / "canary"
    after = _tree(canary) if canary.is_dir() else {}
    deleted = sorted(set(canary_before) - set(after))
    added = sorted(set(after) - set(canary_before))
    changed = sorted(k for k in set(after) & set(canary_before) if after[k] != canary_before[k])
    for what, names in (("deleted", deleted), ("added", added), ("changed", changed)):
        if names:
            shown = ", ".join("canary/" + n for n in names[:4]) + (" ..." if len(names) > 4 else "")
            found.append(f"{what} files outside its folder ({shown})")
    return found


def reap(token: str) -> int:
    """Kill every process (of any parentage) whose environment carries this run's token."""
    import psutil

    killed = 0
    for p in psutil.process_iter():
        try:
            if p.pid == os.getpid():
                continue
            if p.environ().get(TOKEN_ENV) == token:
                p.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


_BWRAP_OK: dict[str, str] = {}


def bwrap_problem() -> str | None:
    """None if bubblewrap can build a sandbox here, else why not (with what to do)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return f"bubblewrap is not installed ({INSTALL_BWRAP})"
    if exe not in _BWRAP_OK:
        try:
            out = subprocess.run([exe, *_NAMESPACES, "--ro-bind", "/", "/", "true"],
                                 capture_output=True, text=True, timeout=30)
            _BWRAP_OK[exe] = "" if out.returncode == 0 else (
                f"bubblewrap cannot make a sandbox here: {out.stderr.strip()[:200]} "
                "(are user namespaces enabled? sysctl kernel.unprivileged_userns_clone=1)")
        except (OSError, subprocess.SubprocessError) as e:
            _BWRAP_OK[exe] = f"bubblewrap failed to start: {e}"
    return _BWRAP_OK[exe] or None


_NAMESPACES = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534",
               "--gid", "65534", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
               "--hostname", "sandbox"]


def _readonly_paths() -> list[str]:
    """What the kernel needs to run, read-only: the interpreter, the venv, efflab and its data."""
    import efflab

    package = Path(efflab.__file__).resolve().parent
    wanted = {Path(sys.base_prefix).resolve(), Path(sys.prefix), Path(sys.prefix).resolve(),
              Path(sys.executable).resolve().parent, package}
    data = package.parent / "data"  # the checkpoints (data/weights), the prepared corpus
    if data.is_dir():
        wanted.add(data)
    for p in sys.path:  # site-packages living outside the prefixes (never the tests' folders)
        if p and "site-packages" in p and Path(p).is_dir():
            wanted.add(Path(p).resolve())
    out = sorted(str(p) for p in wanted if p.exists() and str(p) not in ("/", "/usr"))
    # a folder inside another one is already there
    return [p for p in out if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in out)]


_ETC = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "localtime", "timezone",
        "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl/certs",
        "ca-certificates", "fonts", "mime.types", "os-release", "debian_version", "machine-id",
        "locale.alias", "gai.conf", "protocols", "services", "magic", "magic.mime")


def bwrap_args(work: Path) -> list[str]:
    """bubblewrap's arguments for a sandbox whose only writable folder is ``work``."""
    args = list(_NAMESPACES) + ["--ro-bind", "/usr", "/usr"]
    for name in _ETC:  # only what a Python kernel reads: a root grader owns /etc/shadow
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/sys", "/sys"]
    for p in _readonly_paths():
        args += ["--ro-bind", p, p]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--bind", str(work), INSIDE, "--bind", str(work / "tmp"), "/tmp",
             "--chdir", INSIDE]
    return args


def sandbox_env(work: Path, token: str, limits: Limits, inside: str | None = None) -> dict[str, str]:
    """The environment of the driver and its kernel: everything the run writes stays in work/.

    ``inside``: where work/ appears to the run (``/sandbox`` under bubblewrap); the
    environment is then built from nothing instead of copied from the grader's.
    """
    here = inside or str(work)
    if inside:
        env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin",
                                        "/usr/bin", "/bin"]),
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    else:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("EFFLAB_", "JUPYTER_", "JPY_", "PYTEST", "IPYTHONDIR"))}
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    profile = work / "home" / ".ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    # the kernel keeps its input history in memory only, so no history file in the
    # submission's folder ever holds the check cells it ran (hidden tests included)
    (profile / "ipython_kernel_config.py").write_text('c.HistoryManager.hist_file = ":memory:"\n')
    tmp, home = f"{here}/tmp", f"{here}/home"
    env.update({
        "HOME": home, "TMPDIR": tmp, "TEMP": tmp, "TMP": tmp, "IPYTHONDIR": f"{home}/.ipython",
        "EFFLAB_RESULTS": f"{here}/results",
        "EFFLAB_ANSWERS": f"{here}/efflab_answers.jsonl",
        "EFFLAB_CACHE": f"{home}/.cache/efflab",
        "EFFLAB_STATIC_CHARTS": "1",
        "MPLBACKEND": "Agg",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        TOKEN_ENV: token,
    })
    if limits.threads:
        env.update({"OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads)})
    return env


class _Watch:
    """The run's processes, as the grader sees them: total resident memory, count, kill."""

    def __init__(self, proc: subprocess.Popen, limits: Limits):
        import psutil

        self.psutil, self.limits = psutil, limits
        self.root = psutil.Process(proc.pid)

    def processes(self) -> list:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return []

    def over(self) -> str:
        """Why the run must be killed now ('' if it may go on)."""
        procs = self.processes()
        if len(procs) > self.limits.processes:
            return f"the run started more than {self.limits.processes} processes at once"
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except self.psutil.Error:
                continue
        if rss > self.limits.memory_bytes:
            return (f"the run's processes held more than {self.limits.memory_bytes / 2**30:g} GiB "
                    "of memory together")
        return ""

    def kill(self) -> None:
        for p in reversed(self.processes()):  # children first: nothing is left to re-fork
            try:
                p.kill()
            except self.psutil.Error:
                continue


@dataclass
class _Report:
    cells: list = field(default_factory=list)
    notebook: dict | None = None
    probes: list = field(default_factory=list)
    bytes: int = 0
    cut: str = ""  # why reading stopped early


def _pump(proc: subprocess.Popen, job: bytes, limits: Limits, deadline: float,
          watch: _Watch | None, cap: int = MAX_REPORT_BYTES,
          late: str = "") -> tuple[_Report, bytes, str]:
    """Feed ``job`` to the driver and read its report as it comes, never more than ``cap``
    bytes; stderr keeps its last ``STDERR_TAIL`` bytes. Returns (report, stderr tail, note)."""
    report, note = _Report(), ""
    try:
        proc.stdin.write(job)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    pending, err = b"", b""
    next_watch = 0.0

    def take(line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if text.startswith(TRACE):
            try:
                report.cells.append(CellRun(**json.loads(text[len(TRACE):])))
            except (ValueError, TypeError):
                pass
        elif text.startswith(PROBE):
            try:
                entry = json.loads(text[len(PROBE):])
                if isinstance(entry, dict):
                    report.probes.append(entry)
            except ValueError:
                pass
        elif text.startswith(NOTEBOOK):
            try:
                nb = json.loads(text[len(NOTEBOOK):])
                report.notebook = nb if isinstance(nb, dict) else None
            except ValueError:
                pass

    open_streams = 2
    while open_streams:
        now = time.monotonic()
        if now >= deadline:
            note = late or f"notebook time limit ({limits.notebook_s:g} s) reached; the run was killed"
            break
        if watch is not None and now >= next_watch:
            next_watch = now + 0.5
            why = watch.over()
            if why:
                note = why + "; the run was killed"
                break
        for key, _ in sel.select(timeout=min(0.5, max(0.01, deadline - now))):
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "err":
                err = (err + chunk)[-STDERR_TAIL:]
                continue
            report.bytes += len(chunk)
            if report.bytes > cap:
                note = (f"the run wrote more than {cap / 2**20:g} MiB to the grader's channel; "
                        "cut there and killed")
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                take(line)
        if note:
            break
    sel.close()
    if pending and not note:
        take(pending)
    report.cut = note
    return report, err, note


def run_sandboxed(nb: dict, grade_cell_ids: list[str], limits: Limits,
                  calibration_dir: Path | None = None, name: str = "submission.ipynb",
                  isolation: str = "bwrap") -> SandboxResult:
    """Execute ``nb`` (a notebook dict) in a fresh sandbox folder; see the module docstring.

    ``calibration_dir``: calibration files copied into the sandbox's cache, so a notebook that
    calibrates does not measure the machine again (numbers are never graded). ``isolation``:
    "bwrap" (bubblewrap, the default) or "process" (a trusted class: a plain child process).
    The notebook itself reaches the driver through a pipe: neither it nor its hidden checks
    are written into the submission's folder. ``name`` is kept for the grading log only.
    """
    job = {"notebook": nb, "grade_cells": grade_cell_ids, "limits": asdict(limits)}
    report, note, violations, seconds = _drive(job, limits, calibration_dir, isolation,
                                               limits.notebook_s + 60, MAX_REPORT_BYTES)
    cells = report.cells
    setup = [c for c in cells if c.status == "setup_error"]
    if setup and not note:
        note = "the kernel could not run the notebook: " + setup[0].reason
    cells = [c for c in cells if c.status != "setup_error"]
    return SandboxResult(cells=cells, notebook=report.notebook, violations=violations, note=note,
                         seconds=seconds)


@dataclass
class ProbeResult:
    """What a probe run sent back: one entry per (call, seed) that ran, and what went wrong."""

    entries: list   # {"grade_id", "exercise", "seed", "evidence", "problems"}
    note: str = ""
    violations: list = field(default_factory=list)
    seconds: float = 0.0


def run_probes(cells: list[str], calls: list[dict], limits: Limits,
               isolation: str = "bwrap") -> ProbeResult:
    """Run ``cells`` (code) in a fresh sandboxed interpreter, then each call of ``calls``
    (``{"grade_id", "exercise", "expr", "seeds"}``): ``expr`` names the learner's function,
    which the exercise's collector calls on each seed's probes. Only the outputs come back,
    over the driver's channel, capped at ``MAX_PROBE_BYTES``; the run gets ``limits.cell_s``
    seconds in all."""
    job = {"mode": "probe", "cells": list(cells), "calls": list(calls), "limits": asdict(limits)}
    report, note, violations, seconds = _drive(
        job, limits, None, isolation, limits.cell_s, MAX_PROBE_BYTES,
        late=f"the probe run's time limit ({limits.cell_s:g} s, one cell's) reached; killed")
    return ProbeResult(entries=report.probes, note=note, violations=violations, seconds=seconds)


def _drive(job: dict, limits: Limits, calibration_dir: Path | None, isolation: str,
           seconds: float, cap: int, late: str = "") -> tuple[_Report, str, list[str], float]:
    """Start the driver in a fresh sandbox folder, hand it ``job`` through a pipe, read its
    report (at most ``cap`` bytes, for at most ``seconds``); kill every process of the run."""
    from efflab.core.config import ConfigError

    if isolation not in ISOLATIONS:
        raise ConfigError("isolation", isolation, ", ".join(ISOLATIONS))
    if isolation == "bwrap" and (why := bwrap_problem()):
        raise ConfigError("sandbox", why, "bubblewrap installed, or --trusted-class")
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="efflab-grade-"))
    token = secrets.token_hex(12)
    note = ""
    report = _Report()
    violations: list[str] = []
    try:
        work, canary = root / "work", root / "canary"
        work.mkdir()
        if isolation == "process":  # under bubblewrap nothing outside work/ is even visible
            for rel, text in CANARY_FILES.items():
                (canary / rel).parent.mkdir(parents=True, exist_ok=True)
                (canary / rel).write_text(text)
            canary_before = _tree(canary)
        inside = INSIDE if isolation == "bwrap" else None
        env = sandbox_env(work, token, limits, inside=inside)
        if calibration_dir is not None and Path(calibration_dir).is_dir():
            cache = work / "home" / ".cache" / "efflab"
            cache.mkdir(parents=True, exist_ok=True)
            for f in sorted(Path(calibration_dir).glob("calibration-*.json")):
                shutil.copyfile(f, cache / f.name)
        # run this file as a script: ``-m efflab.course.sandbox`` would import efflab (and torch)
        driver = [sys.executable, str(Path(__file__).resolve())]
        pass_fds: tuple = ()
        if isolation == "bwrap":
            # the arguments go through a pipe (--args), so /proc/1/cmdline inside stays short
            r, w = os.pipe()
            os.write(w, b"".join(a.encode() + b"\0" for a in bwrap_args(work)))
            os.close(w)
            command, pass_fds = [shutil.which("bwrap"), "--args", str(r), *driver], (r,)
        else:
            command = driver
        pin = None
        if limits.cpus and hasattr(os, "sched_setaffinity"):
            cpus = frozenset(limits.cpus)

            def pin():  # in the child, before bwrap runs: every process of the run inherits it
                os.sched_setaffinity(0, cpus)
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, pass_fds=pass_fds, preexec_fn=pin)
        for fd in pass_fds:
            os.close(fd)
        watch = _Watch(proc, limits)
        try:
            report, err, note = _pump(proc, json.dumps(job).encode(), limits,
                                      time.monotonic() + seconds, watch, cap, late)
        finally:
            if proc.poll() is None:
                watch.kill()
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        if proc.returncode not in (0, None) and not note:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            note = f"the grading process ended with status {proc.returncode}: {tail[0][:200]}"
        reap(token)
        if isolation == "process":
            violations = _violations(root, canary_before)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report, note, violations, time.monotonic() - t0


if __name__ == "__main__":
    # run as a script, this file's folder heads sys.path: drop it before importing anything more
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _here]
    sys.exit(child_main())
