"""Run one submitted notebook where it can do little harm, and report what each cell did.

``run_sandboxed(nb, limits)`` (the grader's side) makes a fresh folder::

    efflab-grade-XXXX/
        work/      the submission's working directory: HOME, TMPDIR, EFFLAB_RESULTS and
                   EFFLAB_ANSWERS all point inside it; the notebook is the only file given
        canary/    files the grader wrote and hashed; nothing may change them

and starts ``python -m efflab.course.sandbox`` in ``work/`` (its own process, its own
session). That child lowers its own limits with ``resource.setrlimit`` (address space, file
size, no core dumps) so the Jupyter kernel it starts inherits them, then executes the cells
one at a time with nbclient:

- a per-cell time limit, and a per-notebook deadline the per-cell limit never outlasts;
  a cell that hits it is interrupted, and if the kernel does not answer afterwards every
  later cell is "not run";
- a kernel that dies (a crash, a kill on memory) fails the cell it ran and every later one;
- ``input()`` raises at once (no stdin), widgets only display (nothing waits for them);
- before each check (grade) cell the kernel's answer log is pointed at a fresh file, so the
  evidence a check cell logged is known to come from that cell.

The child reports each cell as a JSON line on its stdout (the kernel's own stdout and stderr
go to /dev/null, so the notebook cannot print into that channel); the grader keeps the partial
report if it must kill the child at the deadline. Afterwards the grader compares the canary
tree and the folder listing with what it wrote, and kills every process still carrying this
run's token in its environment.

What this does NOT give (no containers here): the code runs as the grader's own user, so it
can read any file that user can (the installed efflab, the instructor notebooks if they sit
on the same machine) and write outside its folder where the canary does not look; the
address-space limit is per process; the network is not cut off. Run the grader as an
unprivileged user with nothing else to lose, or inside a container, for an untrusted class.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import secrets
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
TOKEN_ENV = "EFFLAB_SANDBOX"
ANSWER_DIR = ".efflab-grading"


@dataclass(frozen=True)
class Limits:
    """How long and how much one submission may take.

    ``cell_s``: seconds per cell; ``notebook_s``: seconds for the whole notebook, kernel start
    included; ``memory_bytes``: address space of every process of the run (kernel included);
    ``file_bytes``: the largest file it may write; ``probe_s``: how long an interrupted kernel
    gets to answer before it counts as hung; ``threads``: math-library threads per kernel.
    """

    cell_s: float = 120.0
    notebook_s: float = 600.0
    memory_bytes: int = 6 * 2**30
    file_bytes: int = 1 * 2**30
    probe_s: float = 10.0
    threads: int | None = None

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
        for name in ("memory_bytes", "file_bytes"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 2**20):
                raise ConfigError(name, v, "an integer number of bytes >= 1 MiB")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ConfigError("threads", self.threads, "None or an integer >= 1")


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
# The child: runs inside work/, with its own limits
# ------------------------------------------------------------------------------------------

def _emit(prefix: str, obj) -> None:
    sys.stdout.write(prefix + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _set_limits(limits: dict) -> None:
    def lower(kind, value):
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))

    lower(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    lower(resource.RLIMIT_FSIZE, int(limits["file_bytes"]))
    lower(resource.RLIMIT_CORE, 0)


def _error_text(outputs, limits: dict) -> str:
    for out in outputs:
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip().splitlines()
            name = out.get("ename", "Error")
            text = value[0] if value else ""
            if name == "MemoryError" and not text:
                text = f"over the memory limit ({limits['memory_bytes'] / 2**30:g} GiB per process)"
            return f"{name}: {text}".strip()
    return ""


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


async def _run_cells(job: dict) -> None:
    # imported here, in the child, after __main__ has taken this folder off sys.path
    import nbformat
    from jupyter_core.utils import ensure_async
    from nbclient import NotebookClient
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

    client = NotebookClient(nb, kernel_name="python3", timeout=int(limits["cell_s"]),
                            timeout_func=timeout_for, allow_errors=True,
                            interrupt_on_timeout=False, record_timing=False,
                            startup_timeout=int(max(10, min(120, limits["notebook_s"]))),
                            shutdown_kernel="immediate",
                            resources={"metadata": {"path": str(work)}})
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
                err = _error_text(cell.get("outputs", []), limits)
                evidence = _read_answers(log) if log else ()
                report(i, cell, "error" if err else "ok", err, evidence)
    except Exception as e:  # the kernel would not start, or nbclient failed around the cells
        _emit(TRACE, {"index": -1, "cell_id": "", "status": "setup_error",
                      "reason": f"{type(e).__name__}: {str(e)[:300]}", "evidence": []})
    _emit(NOTEBOOK, nbformat.from_dict(nb))


def child_main() -> int:
    job = json.loads(sys.stdin.read())
    _set_limits(job["limits"])
    asyncio.run(_run_cells(job))
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


def sandbox_env(work: Path, token: str, limits: Limits) -> dict[str, str]:
    """The environment of the child and its kernel: everything the run writes stays in work/."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EFFLAB_", "JUPYTER_", "JPY_", "PYTEST", "IPYTHONDIR"))}
    home = work / "home"
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home), "TMPDIR": str(work / "tmp"), "TEMP": str(work / "tmp"),
        "TMP": str(work / "tmp"),
        "EFFLAB_RESULTS": str(work / "results"),
        "EFFLAB_ANSWERS": str(work / "efflab_answers.jsonl"),
        "EFFLAB_CACHE": str(home / ".cache" / "efflab"),
        "EFFLAB_STATIC_CHARTS": "1",
        "MPLBACKEND": "Agg",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        TOKEN_ENV: token,
    })
    if limits.threads:
        env.update({"OMP_NUM_THREADS": str(limits.threads), "MKL_NUM_THREADS": str(limits.threads)})
    return env


def run_sandboxed(nb: dict, grade_cell_ids: list[str], limits: Limits,
                  calibration_dir: Path | None = None, name: str = "submission.ipynb") -> SandboxResult:
    """Execute ``nb`` (a notebook dict) in a fresh sandbox folder; see the module docstring.

    ``calibration_dir``: calibration files copied into the sandbox's cache, so a notebook that
    calibrates does not measure the machine again (numbers are never graded).
    """
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="efflab-grade-"))
    token = secrets.token_hex(12)
    cells: list[CellRun] = []
    executed = None
    note = ""
    try:
        work, canary = root / "work", root / "canary"
        work.mkdir()
        for rel, text in CANARY_FILES.items():
            (canary / rel).parent.mkdir(parents=True, exist_ok=True)
            (canary / rel).write_text(text)
        canary_before = _tree(canary)
        env = sandbox_env(work, token, limits)
        if calibration_dir is not None and Path(calibration_dir).is_dir():
            cache = Path(env["EFFLAB_CACHE"])
            cache.mkdir(parents=True, exist_ok=True)
            for f in Path(calibration_dir).glob("calibration-*.json"):
                shutil.copyfile(f, cache / f.name)
        (work / Path(name).name).write_text(json.dumps(nb))
        job = {"notebook": nb, "grade_cells": grade_cell_ids,
               "limits": {k: v for k, v in asdict(limits).items()}}
        # run this file as a script: ``-m efflab.course.sandbox`` would import efflab (and torch)
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=work, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.notebook_s + 60)
        except subprocess.TimeoutExpired:
            reap(token)
            proc.kill()
            out, err = proc.communicate()
            note = f"notebook time limit ({limits.notebook_s:g} s) reached; the run was killed"
        for line in out.decode("utf-8", "replace").splitlines():
            if line.startswith(TRACE):
                try:
                    cells.append(CellRun(**json.loads(line[len(TRACE):])))
                except (ValueError, TypeError):
                    continue
            elif line.startswith(NOTEBOOK):
                try:
                    executed = json.loads(line[len(NOTEBOOK):])
                except ValueError:
                    pass
        if proc.returncode not in (0, None) and not note:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            note = f"the grading process ended with status {proc.returncode}: {tail[0][:200]}"
        reap(token)
        violations = _violations(root, canary_before)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    setup = [c for c in cells if c.status == "setup_error"]
    if setup and not note:
        note = "the kernel could not run the notebook: " + setup[0].reason
    cells = [c for c in cells if c.status != "setup_error"]
    return SandboxResult(cells=cells, notebook=executed, violations=violations, note=note,
                         seconds=time.monotonic() - t0)


if __name__ == "__main__":
    # run as a script, this file's folder heads sys.path: drop it before importing anything more
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _here]
    sys.exit(child_main())
