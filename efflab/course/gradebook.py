"""Bulk grading: ``efflab grade SUBMISSIONS/ --out gradebook.csv [--workers N]``.

For every submission (see :func:`efflab.course.submission.discover`; two entries of the
folder with one NFC-normalised student id are both refused, naming the files):

1. open it without trusting it (:func:`open_submission`): not a notebook, malformed, too
   large -> zero for every check of the assignment, with the reason;
2. match it with its instructor notebook (``--source``: one notebook, or a folder matched by
   the assignment name a student version carries, then by file name);
3. restore every code cell that is not a solution cell (set-up, sweeps, checks, the
   ``parameters`` cell) and every locked cell from the instructor's version, by cell id
   (hidden checks come back; a deleted or edited check cell does not help), and inject
   ``SMOKE = True``;
4. run it in a sandbox (:mod:`efflab.course.sandbox`): bubblewrap (refused where it is
   missing, unless ``trusted_class``), its own folder, time, memory and output limits;
5. recompute every verdict here, in the grader's process, with ``efflab.check.judge`` from
   the evidence each restored check cell logged — once that evidence is found to rest on the
   same data as the grader's own reference run of the instructor notebook (made once per
   class, before the submissions; :mod:`efflab.course.trusted`). A check cell that logged
   nothing (say ``efflab.check`` was patched to "pass") earns nothing; evidence logged by other
   cells, or for exercises the cell does not call, is ignored;
6. call every learner-written function again in a fresh probe sandbox, on seeds drawn from the
   grader's key, and judge those outputs too.

A check cell is worth its nbgrader ``points``; it earns ``points × the lowest fraction`` its
checks give (each visible and hidden call must pass, as in nbgrader), zero if it raised, timed
out or did not run. In a trusted class (no sandbox), a submission that changed files outside
its folder gets zero throughout.

Writes ``gradebook.csv`` (one row per student, file and check cell: points, max_points,
status, feedback; cells a spreadsheet would run as a formula escaped), ``gradebook.html`` (a
summary table, then every row), ``gradebook.log.json`` (seconds, restored cells, violations,
full verdicts per submission: the only part that varies between runs) and
``gradebook_executed/`` (each executed notebook, for reading what a student saw). Grading the
same folder with the same flags twice gives byte-identical CSV and HTML.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import json
import os
import queue
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
import pandas as pd

from efflab.check import REGISTRY, judge
from efflab.core.config import ConfigError
from efflab.core.data import load_corpus
from efflab.course import cells as C
from efflab.course import trusted as T
from efflab.course.report import NOTEBOOK_DIR
from efflab.course.sandbox import (
    INSTALL_BWRAP,
    CellRun,
    Limits,
    SandboxResult,
    bwrap_problem,
    run_probes,
    run_sandboxed,
)
from efflab.course.submission import Submission, ambiguous, discover, open_submission
from efflab.measurement import hardware

COLUMNS = ["student", "file", "notebook", "grade_id", "exercises", "points", "max_points",
           "status", "feedback"]
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # OWASP: what a spreadsheet may run as a formula


@dataclass(frozen=True)
class Row:
    student: str
    file: str  # the submission, relative to the submissions folder
    notebook: str
    grade_id: str
    exercises: str
    points: float
    max_points: float
    status: str  # correct | partial | wrong | unanswered | error | timeout | not_run | ...
    feedback: str


_SANDBOX_PATH = re.compile(r"/[^\s'\"]*efflab-grade-[^/\s'\"]*(/[^\s'\"]*)?")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def _clean(text: str) -> str:
    """Reasons without what changes from run to run (sandbox paths, memory addresses)."""
    text = _SANDBOX_PATH.sub("<sandbox>", text or "")
    return _ADDRESS.sub("0x…", text).strip()


def load_sources(source: str | os.PathLike) -> dict[str, nbformat.NotebookNode]:
    """Instructor notebooks by assignment name (file stem)."""
    source = Path(source)
    paths = [source] if source.is_file() else sorted(source.glob("*.ipynb")) if source.is_dir() else []
    if not paths:
        raise ConfigError("--source", str(source), "an instructor notebook or a folder of them")
    out = {}
    for p in paths:
        nb = nbformat.read(str(p), as_version=4)
        if not C.grade_cells(nb):
            if source.is_file():
                raise ConfigError("--source", str(p), "a notebook with nbgrader grade cells")
            continue
        out[p.stem] = nb
    return out


def _match(sub: Submission, sources: dict) -> str | None:
    if len(sources) == 1:
        return next(iter(sources))
    a = sub.assignment
    return a if a in sources else None


def _zero_rows(student, file, notebook, gcs, status, reason) -> list[Row]:
    return [Row(student, file, notebook, g.grade_id, " ".join(g.exercises), 0.0, g.points,
                status, reason) for g in gcs]


def _stable(fb) -> str:
    """A verdict as the gradebook writes it: without the expected and received values, which
    may quote numbers measured in this run (the log keeps the full text)."""
    return _clean(str(dataclasses.replace(fb, expected="", got="")))


def score_cell(g: C.GradeCell, run: CellRun | None, before: list[CellRun], note: str,
               reference: list | str | None = None, probes: list | None = None,
               factor: float = T.MEASURED_FACTOR) -> tuple:
    """(points, status, feedback) of one check cell from what its run reported.

    ``reference``: the evidence the grader's own run of the instructor notebook logged in this
    cell (or why it has none); the submission's evidence must rest on the same data
    (:func:`efflab.course.trusted.disagreement`). ``probes``: the grader's own probe entries
    for the cell's function exercises; each must pass too. ``None`` for either skips it (unit
    tests of the scoring alone)."""
    context = ""
    for r in before:  # the first thing that went wrong in the cells leading to this check
        if r.status != "ok":
            what = r.reason or r.status
            context = f" (cell {r.cell_id or r.index} before it: {_clean(what)})"
            break
    if run is None:
        return 0.0, "not_run", "not run: " + (_clean(note) or "the run reported nothing")
    if run.status in ("not_run", "dead", "timeout"):
        return 0.0, run.status, _clean(run.reason)
    if run.status == "error":
        return 0.0, "error", f"the check cell raised {_clean(run.reason)}{context}"
    if not g.exercises:  # an nbgrader-style test cell: passing means running without error
        return g.points, "correct", "ran without error"
    if isinstance(reference, str):
        return 0.0, "no_reference", _clean(
            "not graded: the grader's own run of the instructor notebook failed this check "
            f"({reference}); ask your instructor")
    judged = []
    for name in g.exercises:
        entries = [e for e in run.evidence if e.get("exercise") == name]
        if not entries:
            return 0.0, "error", (f"no answer was logged for {name}: the check did not run as "
                                  "given (was efflab.check replaced?)")
        if reference is not None:
            ref = [e for e in reference if e.get("exercise") == name]
            if len(ref) != len(entries):
                return 0.0, "mismatch", (f"{name} was logged {len(entries)} times where the lesson "
                                         f"checks it {len(ref)} times (was efflab.check replaced?)")
            for e, r in zip(entries, ref):
                why = T.disagreement(name, e.get("evidence"), r.get("evidence"), factor)
                if why:
                    return 0.0, "mismatch", _clean(f"{name}: {why}")
        judged += [judge(name, e.get("evidence")) for e in entries]
        if probes is not None and getattr(REGISTRY.get(name), "function", False):
            mine = [p for p in probes if p.get("exercise") == name]
            if not mine:
                return 0.0, "error", (f"the grader could not call your function for {name} "
                                      "again on its own inputs (define it in the answer cell, "
                                      "with the imports it needs)")
            for p in mine:
                ev = p.get("evidence")
                if isinstance(ev, dict) and "seed" in ev:
                    ev = {**ev, "seed": p.get("seed")}  # the grader's seed, whatever came back
                judged.append(judge(name, ev))
    fractions = [fb.points / fb.max_points if fb.max_points else 0.0 for fb in judged]
    fraction = min(fractions)
    if fraction >= 1:
        return g.points, "correct", "correct"
    worst = judged[fractions.index(fraction)]
    status = "partial" if fraction > 0 else worst.status
    return round(g.points * fraction, 6), status, _stable(worst)


@dataclass
class Trust:
    """What the grader made itself for one class: the reference evidence per instructor
    notebook (``{notebook: {grade_id: entries | why missing}}``; while :func:`grade` runs, a
    Future of it), the probe key, the factor measured values may differ by."""

    references: dict
    key: bytes
    factor: float = T.MEASURED_FACTOR


def _positions(gcs, instructor, nb) -> dict:
    return {g.grade_id: C.find_cell(nb.cells, instructor.cells[g.index]) for g in gcs}


def reference_run(instructor, limits: Limits, calibration_dir: Path | None = None,
                  isolation: str = "bwrap") -> dict:
    """The grader's own run of ``instructor`` (SMOKE, the same sandbox and limits as every
    submission): the reference evidence of each grade cell, or why it has none."""
    gcs = C.grade_cells(instructor)
    runnable = C.set_parameters(instructor, SMOKE=True)
    ids = [str(instructor.cells[g.index].get("id", "")) for g in gcs]
    result = run_sandboxed(dict(runnable), ids, limits, calibration_dir, name="reference",
                           isolation=isolation)
    return T.reference_of(result, gcs, _positions(gcs, instructor, runnable))


def _probe_entries(runnable, instructor, gcs, positions, limits, key, isolation) -> tuple[dict, dict]:
    """The grader's probes of every function exercise of a submission, in one fresh sandboxed
    run: ({grade_id: entries}, a log entry)."""
    calls, last = [], -1
    for g in gcs:
        at = positions[g.grade_id]
        for name, expr in T.function_calls(instructor.cells[g.index].source):
            if at is None:
                continue
            calls.append({"grade_id": g.grade_id, "exercise": name, "expr": expr,
                          "seeds": T.probe_seeds(key, name)})
            last = max(last, at)
    if not calls:
        return {}, {}
    program = T.probe_program(runnable, instructor, last + 1, [c["expr"] for c in calls])
    result = run_probes(program, calls, limits, isolation)
    by_cell: dict = {}
    for e in result.entries:
        by_cell.setdefault(str(e.get("grade_id")), []).append(e)
    problems = sorted({p for e in result.entries for p in e.get("problems", [])})
    return by_cell, {"note": result.note, "problems": problems, "entries": len(result.entries),
                     "seconds": round(result.seconds, 1), "violations": result.violations}


def grade_submission(sub: Submission, sources: dict, limits: Limits,
                     calibration_dir: Path | None = None, file: str | None = None,
                     refused: str | None = None, isolation: str = "bwrap",
                     trust: Trust | None = None) -> tuple[list[Row], dict]:
    """The rows of one submission and its log entry.

    ``file``: the submission as the gradebook names it (default: its file name);
    ``refused``: a reason not to run it at all (two submissions with one id), every check
    then scores zero with it; ``isolation``: see :func:`run_sandboxed`; ``trust``: the
    class's reference runs and probe key (made here, for this submission alone, if None).
    """
    file = file or sub.path.name
    log = {"student": sub.student, "file": file, "problem": sub.problem}
    key = _match(sub, sources)
    nb_name = key or sub.assignment or sub.path.name
    if key is None:
        reason = refused or sub.problem or (
            f"no instructor notebook for assignment {sub.assignment!r} "
            f"(known: {', '.join(sorted(sources))})")
        return [Row(sub.student, file, nb_name, "", "", 0.0, 0.0,
                    "refused" if refused else "not_graded", reason)], log
    instructor = sources[key]
    gcs = C.grade_cells(instructor)
    if trust is None:
        trust = Trust({}, T.grader_key())
    if key not in trust.references:
        trust.references[key] = reference_run(instructor, limits, calibration_dir, isolation)
    if refused:
        log["problem"] = refused
        return _zero_rows(sub.student, file, key, gcs, "refused", refused), log
    if sub.problem:
        status = "not_a_notebook" if sub.problem.startswith("not a notebook") else "malformed"
        return _zero_rows(sub.student, file, key, gcs, status, sub.problem), log
    restored, changes = C.restore_cells(sub.notebook, instructor)
    runnable = C.set_parameters(restored, SMOKE=True)
    positions = _positions(gcs, instructor, runnable)
    ids = [str(instructor.cells[g.index].get("id", "")) for g in gcs]
    result: SandboxResult = run_sandboxed(dict(runnable), ids, limits, calibration_dir,
                                          name=sub.name or "submission.ipynb",
                                          isolation=isolation)
    log.update({"restored": changes, "violations": result.violations, "note": result.note,
                "seconds": round(result.seconds, 1),
                "cells": [asdict(c) | {"evidence": len(c.evidence)} for c in result.cells]})
    log["executed"] = result.notebook
    probes, probe_log = _probe_entries(runnable, instructor, gcs, positions, limits, trust.key,
                                       isolation)
    log["probes"] = probe_log
    violations = result.violations + probe_log.get("violations", [])
    if violations:
        reason = "zero: the submission " + "; ".join(violations)
        return _zero_rows(sub.student, file, key, gcs, "violation", reason), log
    reference = trust.references[key]
    if isinstance(reference, Future):  # grade() runs it beside the first submissions: wait here
        reference = reference.result()
    by_index = {c.index: c for c in result.cells}
    rows, prev, verdicts = [], -1, {}
    for g in gcs:
        at = positions[g.grade_id]
        before = [c for c in result.cells if prev < c.index < (at if at is not None else -1)]
        run = by_index.get(at)
        points, status, feedback = score_cell(g, run, before, result.note,
                                              reference.get(g.grade_id, "no such check cell"),
                                              probes.get(g.grade_id, []), trust.factor)
        if run is not None and run.evidence and g.exercises:  # the full verdicts, for the log
            verdicts[g.grade_id] = [_clean(str(judge(e.get("exercise"), e.get("evidence"))))
                                    for e in run.evidence if e.get("exercise") in g.exercises]
        if status == "mismatch" and run is not None:  # for the instructor: what differed
            log.setdefault("mismatched", {})[g.grade_id] = {
                "submission": run.evidence, "reference": reference.get(g.grade_id)}
        rows.append(Row(sub.student, file, key, g.grade_id, " ".join(g.exercises), points,
                        g.points, status, feedback))
        prev = at if at is not None else prev
    log["verdicts"] = verdicts
    return rows, log




def csv_safe(value):
    """A CSV cell a spreadsheet will not run: text starting with ``= + - @``, a tab or a
    carriage return gets a leading single quote (OWASP's CSV-injection rule)."""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def _html(df: pd.DataFrame, limits: Limits) -> str:
    totals = (df.groupby(["student", "file", "notebook"], sort=True)[["points", "max_points"]]
              .sum().reset_index())
    summary = "".join(
        f"<tr><td>{html.escape(r.student)}</td><td>{html.escape(r.file)}</td>"
        f"<td>{html.escape(r.notebook)}</td>"
        f"<td style='text-align:right'>{r.points:g} / {r.max_points:g}</td></tr>"
        for r in totals.itertuples())
    colour = {"correct": "#1a7f37", "partial": "#9a6700"}
    rows = "".join(
        f"<tr><td>{html.escape(r.student)}</td><td>{html.escape(r.file)}</td>"
        f"<td>{html.escape(r.notebook)}</td>"
        f"<td>{html.escape(r.grade_id)}</td><td>{html.escape(r.exercises)}</td>"
        f"<td style='text-align:right'>{r.points:g} / {r.max_points:g}</td>"
        f"<td style='color:{colour.get(r.status, '#cf222e')}'>{html.escape(r.status)}</td>"
        f"<td>{html.escape(r.feedback)}</td></tr>" for r in df.itertuples())
    lim = (f"time limits: {limits.cell_s:g} s per cell, {limits.notebook_s:g} s per notebook; "
           f"memory limit {limits.memory_bytes / 2**30:g} GiB (per process and in all)")
    return ("<!doctype html><meta charset=utf-8><title>efflab gradebook</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;vertical-align:top}"
            "table{border-collapse:collapse}tr:nth-child(even){background:#f6f8fa}</style>"
            f"<h1>efflab gradebook</h1><p>{html.escape(lim)}</p>"
            "<h2>Totals</h2><table><tr><th>student</th><th>file</th><th>notebook</th>"
            f"<th>points</th></tr>{summary}</table><h2>Every check</h2><table><tr>"
            "<th>student</th><th>file</th><th>notebook</th><th>check</th><th>exercises</th>"
            "<th>points</th><th>status</th><th>feedback</th></tr>"
            f"{rows}</table>\n")


def cpu_slots(workers: int) -> list[tuple[int, ...]]:
    """This process's CPUs split into ``workers`` equal groups, one per submission graded at
    once ([] where affinity cannot be set, or there are fewer CPUs than workers)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    cpus = sorted(os.sched_getaffinity(0))
    per = len(cpus) // workers
    if per < 1:
        return []
    return [tuple(cpus[i * per:(i + 1) * per]) for i in range(workers)]


def grade(submissions: str | os.PathLike, out: str | os.PathLike = "gradebook.csv",
          source: str | os.PathLike | None = None, limits: Limits | None = None,
          workers: int = 1, calibration_dir: str | os.PathLike | None = None,
          progress: bool = False, trusted_class: bool = False,
          probe_key: str | os.PathLike | None = None,
          measured_factor: float = T.MEASURED_FACTOR) -> pd.DataFrame:
    """Grade every submission in ``submissions``; write the gradebook files; return the rows.

    ``source``: the instructor notebook(s) (default: efflab's lessons). ``limits``: the
    sandbox's time and memory limits. ``workers``: submissions graded at once (each in its
    own sandbox; math threads per kernel default to cores ÷ workers). Every submission runs
    under bubblewrap; without it grading is refused, unless ``trusted_class`` says the class
    is trusted (then each runs as a plain child process, outside writes only detected).

    Before the class, each instructor notebook a submission needs is run once the same way:
    every verdict must rest on the same data as that run (measured values within
    ``measured_factor``), and learner functions are probed again on seeds drawn from
    ``probe_key`` (default: a key file in the grader's cache); see :mod:`efflab.course.trusted`.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError("--workers", workers, "an integer >= 1")
    if not (isinstance(measured_factor, (int, float)) and measured_factor > 1):
        raise ConfigError("--measured-factor", measured_factor, "a number > 1")
    isolation = "process" if trusted_class else "bwrap"
    if not trusted_class and (why := bwrap_problem()):
        raise ConfigError("sandbox", why, f"bubblewrap ({INSTALL_BWRAP}), or --trusted-class "
                                          "for a class you trust (no sandbox)")
    sources = load_sources(source if source is not None else NOTEBOOK_DIR)
    limits = limits or Limits()
    slots = cpu_slots(workers)
    if limits.threads is None:
        limits = dataclasses.replace(limits, threads=len(slots[0]) if slots else
                                     max(1, (os.cpu_count() or 1) // workers))
    if calibration_dir is None:
        calibration_dir = getattr(hardware, "CACHE_DIR", None)
    folder = Path(submissions)
    entries = discover(folder)
    refusals = ambiguous(entries, folder)

    cal = Path(calibration_dir) if calibration_dir else None
    opened = [open_submission(path, student=student) for student, path in entries]
    trust = Trust({}, T.grader_key(probe_key), float(measured_factor))
    free: queue.Queue = queue.Queue()
    for slot in slots or [None] * workers:
        free.put(slot)

    def reference(key):
        """The reference run of one instructor notebook, on the CPUs one submission gets (its
        measurements are the ones to compare with); several notebooks run side by side."""
        if progress:
            print(f"reference run of {key} (the instructor's notebook, as every submission "
                  "will run)", flush=True)
        slot = free.get()
        try:
            return reference_run(sources[key], dataclasses.replace(limits, cpus=slot)
                                 if slot else limits, cal, isolation)
        finally:
            free.put(slot)

    keys = sorted({k for sub in opened if (k := _match(sub, sources)) is not None})
    if keys:
        # the sandboxes see the checkout read-only: prepared here once, every run reads the
        # default corpus from data/cache instead of preparing it again in its own folder
        load_corpus()
    def warn_if_failed(key: str, run: Future) -> None:
        """Once a reference run ends: name the checks the instructor's own notebook failed."""
        if run.exception() is not None:
            return  # raised again where a submission waits on it
        failed = [gid for gid, r in run.result().items() if isinstance(r, str)]
        if failed:
            print(f"warning: the instructor notebook {key} failed its own checks "
                  f"{', '.join(failed)} under these limits; those checks are not graded",
                  flush=True)

    def one(item):
        (student, path), sub = item
        rel = path.relative_to(folder).as_posix()
        slot = free.get()  # a worker's own CPUs: side-by-side runs never share a core
        try:
            rows, log = grade_submission(
                sub, sources, dataclasses.replace(limits, cpus=slot) if slot else limits, cal,
                file=rel, refused=refusals.get(path), isolation=isolation, trust=trust)
        finally:
            free.put(slot)
        if progress:
            got = sum(r.points for r in rows)
            print(f"{student} ({rel}): {got:g}/{sum(r.max_points for r in rows):g}", flush=True)
        return rows, log

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # the reference runs are queued first, so each has started (or finished) before any
        # submission waits on it, and the other workers run submissions meanwhile: a
        # submission's own runs never need the reference, only its scoring does
        for key in keys:
            trust.references[key] = run = pool.submit(reference, key)
            run.add_done_callback(functools.partial(warn_if_failed, key))
        done = list(pool.map(one, zip(entries, opened)))
    for key in keys:
        trust.references[key] = trust.references[key].result()
    rows = [r for rs, _ in done for r in rs]
    df = pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)
    # one order whatever the folder listing or the workers did: by student, then file; each
    # submission's checks stay in the notebook's order
    df = df.sort_values(["student", "file"], kind="stable").reset_index(drop=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        df.map(csv_safe).to_csv(f, index=False, lineterminator="\n")
    out.with_suffix(".html").write_text(_html(df, limits), encoding="utf-8")
    executed = out.parent / f"{out.stem}_executed"
    executed.mkdir(exist_ok=True)
    logs = []
    for (student, path), (_, log) in zip(entries, done):
        nb = log.pop("executed", None)
        if nb is not None:
            target = executed / f"{student}--{Path(path).stem}.ipynb"
            target.write_text(json.dumps(nb), encoding="utf-8")
        logs.append(log)
    out.with_suffix(".log.json").write_text(
        json.dumps({"limits": asdict(limits), "isolation": isolation,
                    "measured_factor": trust.factor, "references": trust.references,
                    "submissions": logs},
                   indent=1, default=str), encoding="utf-8")
    return df
