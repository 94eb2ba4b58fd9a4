"""Student versions of the lesson notebooks: ``efflab assign notebooks/ --out student/``.

The shipped notebooks are the instructor versions. A student version is made with nbgrader's
own preprocessors, in the order ``nbgrader generate_assignment`` runs them:

- ``LockCells``: check cells become read-only and undeletable in JupyterLab;
- ``ClearSolutions``: every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes a
  placeholder that raises ``NotImplementedError`` with a "not answered yet" message, so a
  student notebook run top to bottom stops at the first unanswered exercise and says why;
- ``ClearHiddenTests``: hidden checks (``### BEGIN HIDDEN TESTS`` ...) are removed;
- ``ClearOutput``: outputs and execution counts are cleared;
- ``ComputeChecksums`` and ``CheckCellMetadata``: nbgrader's checksums and metadata checks,
  so ``nbgrader autograde`` accepts the notebooks too.

Cell ids, tags (the ``parameters`` cell) and nbgrader metadata are kept: they are how the
grader matches a submission's cells with the instructor's. The student version records which
lesson it came from in ``metadata.efflab.assignment``.

nbgrader is an optional dependency (``pip install 'efflab[class]'``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat

from efflab.core.config import ConfigError

NOT_ANSWERED = ("not answered yet: replace these two lines with your answer, "
                "then run this cell again")
CODE_STUB = f"# YOUR ANSWER HERE\nraise NotImplementedError({NOT_ANSWERED!r})"
TEXT_STUB = "YOUR ANSWER HERE"


def _nbgrader():
    try:
        from nbgrader import preprocessors as P
    except ImportError as e:  # an optional dependency: say how to get it
        raise ConfigError("nbgrader", "not installed",
                          "install the course tools: pip install 'efflab[class]'") from e
    return P


def student_version(nb: nbformat.NotebookNode, assignment: str) -> nbformat.NotebookNode:
    """The student version of one instructor notebook (a new notebook; ``nb`` is untouched)."""
    P = _nbgrader()
    nb = copy.deepcopy(nb)
    resources: dict = {}
    steps = [
        P.LockCells(),
        P.ClearSolutions(code_stub={"python": CODE_STUB}, text_stub=TEXT_STUB),
        P.ClearHiddenTests(),
        P.ClearOutput(),
        P.ComputeChecksums(),
        P.CheckCellMetadata(),
    ]
    for step in steps:
        try:
            nb, resources = step.preprocess(nb, resources)
        except Exception as e:  # nbgrader raises RuntimeError / ValidationError with a reason
            raise ConfigError(f"{assignment} ({type(step).__name__})", str(e)[:300],
                              "solutions inside solution cells, hidden tests inside grade "
                              "cells, nbgrader metadata valid") from e
    nb.metadata["efflab"] = {"assignment": assignment, "version": "student"}
    return nb


def _sources(src: Path) -> list[Path]:
    if src.is_file():
        if src.suffix != ".ipynb":
            raise ConfigError("notebook", str(src), "a .ipynb file or a folder of them")
        return [src]
    if src.is_dir():
        found = sorted(p for p in src.glob("*.ipynb") if not p.name.startswith("."))
        if not found:
            raise ConfigError("notebooks", str(src), "a folder holding .ipynb notebooks")
        return found
    raise ConfigError("notebooks", str(src), "an existing .ipynb file or folder")


def assign(src: str | os.PathLike, out: str | os.PathLike = "student") -> list[Path]:
    """Write the student version of every notebook in ``src`` (a folder or one file) to ``out``.

    Returns the paths written. ``out`` must not be the instructor folder itself.
    """
    src, out = Path(src), Path(out)
    paths = _sources(src)
    out.mkdir(parents=True, exist_ok=True)
    if any(p.parent.resolve() == out.resolve() for p in paths):
        raise ConfigError("--out", str(out), "a folder other than the instructor notebooks' own")
    written = []
    for p in paths:
        nb = nbformat.read(str(p), as_version=4)
        student = student_version(nb, assignment=p.stem)
        target = out / p.name
        nbformat.write(student, str(target))
        written.append(target)
    return written


def assignment_of(nb: nbformat.NotebookNode) -> str | None:
    """The lesson a (student or submitted) notebook was made from, if it says."""
    meta = nb.get("metadata", {}).get("efflab", {})
    name = meta.get("assignment") if isinstance(meta, dict) else None
    return str(name) if name else None


__all__ = ["assign", "student_version", "assignment_of", "CODE_STUB", "NOT_ANSWERED"]


def exercise_table(src: str | os.PathLike = "notebooks") -> list[dict]:
    """What every lesson grades, read from its instructor notebook(s): one row per grade cell
    with its ``grade_id``, points, the checks it calls, which of those are hidden
    (``### BEGIN HIDDEN TESTS``) and which probe a learner-written function (code)."""
    from efflab.check import REGISTRY  # every exercise registered
    from efflab.course.cells import HIDDEN_BEGIN, check_names, grade_cells

    rows = []
    for p in _sources(Path(src)):
        nb = nbformat.read(str(p), as_version=4)
        for g in grade_cells(nb):
            source = nb.cells[g.index].source
            hidden = check_names(source.split(HIDDEN_BEGIN, 1)[1]) if HIDDEN_BEGIN in source else []
            rows.append({"lesson": p.stem, "grade_id": g.grade_id, "points": g.points,
                         "checks": list(g.exercises), "hidden": hidden,
                         "code": [n for n in g.exercises if n in REGISTRY and REGISTRY[n].function]})
    return rows


def _kinds(name: str, row: dict) -> str:
    kinds = [k for k in ("code", "hidden") if name in row[k]]
    return f" ({', '.join(kinds)})" if kinds else ""


def exercise_table_markdown(rows: list[dict]) -> str:
    """:func:`exercise_table` as a Markdown table, one line per grade cell, lesson totals in
    the lesson column's first row."""
    total = {}
    for r in rows:
        total[r["lesson"]] = total.get(r["lesson"], 0) + r["points"]
    lines = ["| lesson | graded cell | points | checks (code: a learner function probed on unseen "
             "inputs; hidden: only the grader's copy runs it) |", "|---|---|---|---|"]
    last = None
    for r in rows:
        lesson = f"{r['lesson']} ({total[r['lesson']]:g} points)" if r["lesson"] != last else ""
        last = r["lesson"]
        checks = ", ".join(f"`{n}`{_kinds(n, r)}" for n in r["checks"])
        lines.append(f"| {lesson} | `{r['grade_id']}` | {r['points']:g} | {checks} |")
    return "\n".join(lines) + "\n"
