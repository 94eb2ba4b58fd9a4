"""Which cell is which in a lesson notebook, by nbgrader's conventions, and the cell surgery
grading needs: restore the instructor's check cells into a submission, set ``SMOKE = True``.

nbgrader marks cells in their metadata (``{"nbgrader": {"solution": ..., "grade": ...,
"locked": ..., "points": ..., "grade_id": ...}}``):

- a *solution* cell holds the learner's answer (between ``### BEGIN SOLUTION`` / ``### END
  SOLUTION`` in the instructor version);
- a *grade* cell (a check cell) calls ``efflab.check.<name>(...)`` and is worth ``points``;
  hidden checks sit in it between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``;
- a *locked* cell is read-only for the learner.

Cells are matched between the instructor's version and a submission by the notebook cell
``id`` (nbformat 4.5), falling back to nbgrader's ``grade_id`` — the way nbgrader's
``OverwriteCells`` matches them, without its database.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import nbformat
from nbformat import NotebookNode

SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# a call of a registered check: efflab.check.<name>( or check.<name>(
_CHECK_CALL = re.compile(r"\bcheck\.([A-Za-z_]\w*)\s*\(")


def nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def is_solution(cell) -> bool:
    return bool(nbgrader_meta(cell).get("solution", False))


def is_grade(cell) -> bool:
    return bool(nbgrader_meta(cell).get("grade", False))


def is_locked(cell) -> bool:
    """Locked, as nbgrader counts it: marked locked, or a grade cell that is not a solution."""
    meta = nbgrader_meta(cell)
    if is_solution(cell):
        return False
    return bool(meta.get("locked", False)) or is_grade(cell)


def is_parameters(cell) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def grade_id(cell) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def check_names(source: str) -> list[str]:
    """The ``efflab.check`` exercises a cell's source calls, in order, without repeats."""
    seen: list[str] = []
    for name in _CHECK_CALL.findall(source):
        if name not in seen:
            seen.append(name)
    return seen


@dataclass(frozen=True)
class GradeCell:
    """One graded cell of an instructor notebook: what it is worth and which checks it runs."""

    index: int
    cell_id: str
    grade_id: str
    points: float
    exercises: tuple[str, ...]


def grade_cells(nb: NotebookNode) -> list[GradeCell]:
    """The grade cells of an (instructor) notebook, in order."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and is_grade(cell):
            meta = nbgrader_meta(cell)
            out.append(GradeCell(index=i, cell_id=str(cell.get("id", "")),
                                 grade_id=str(meta.get("grade_id") or cell.get("id")),
                                 points=float(meta.get("points", 0) or 0),
                                 exercises=tuple(check_names(cell.source))))
    return out


def solution_lines(nb: NotebookNode) -> set[str]:
    """Every non-blank line inside a solution region or a solution cell (stripped)."""
    lines: set[str] = set()
    for cell in nb.cells:
        inside = False
        whole = is_solution(cell) and SOLUTION_BEGIN not in cell.source
        for line in cell.source.splitlines():
            if SOLUTION_BEGIN in line:
                inside = True
            elif SOLUTION_END in line:
                inside = False
            elif (inside or whole) and line.strip():
                lines.add(line.strip())
    return lines


def hidden_lines(nb: NotebookNode) -> set[str]:
    """Every non-blank line inside a hidden-tests region (stripped)."""
    lines: set[str] = set()
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if HIDDEN_BEGIN in line:
                inside = True
            elif HIDDEN_END in line:
                inside = False
            elif inside and line.strip():
                lines.add(line.strip())
    return lines


def _key(cell) -> tuple[str | None, str | None]:
    return (cell.get("id"), grade_id(cell))


def without_hidden(source: str) -> str:
    """The source as a student sees it: hidden-test regions dropped, trailing space ignored."""
    keep, inside = [], False
    for line in source.splitlines():
        if HIDDEN_BEGIN in line:
            inside = True
        elif HIDDEN_END in line:
            inside = False
        elif not inside:
            keep.append(line.rstrip())
    return "\n".join(keep).strip()


def _flags(cell) -> tuple:
    m = nbgrader_meta(cell)
    return (bool(m.get("solution")), bool(m.get("grade")), is_locked(cell),
            float(m.get("points", 0) or 0), m.get("grade_id"))


def find_cell(cells, cell) -> int | None:
    """Where ``cell`` (from another version of the notebook) sits in ``cells``: by id, then
    by nbgrader grade_id; None if absent."""
    cid, gid = _key(cell)
    for j, other in enumerate(cells):
        if cid and other.get("id") == cid:
            return j
    if gid:
        for j, other in enumerate(cells):
            if grade_id(other) == gid:
                return j
    return None


def restore_cells(submission: NotebookNode, instructor: NotebookNode) -> tuple[NotebookNode, list[str]]:
    """The submission with every instructor cell but the answers taken from the instructor.

    Every code cell that is not a solution cell (set-up, sweeps, checks, ``parameters``) and
    every locked or grade cell runs as the instructor wrote it, so the data a check is given
    are the lesson's, not the learner's.

    Like nbgrader's ``OverwriteCells`` (with ``add_missing_cells``), matched by cell id, then
    ``grade_id``: an edited check cell gets the instructor's source back (hidden tests
    included), a deleted one is inserted after the cell that precedes it in the instructor's
    version. The learner's own cells (answers, scratch cells) are kept as they are. Returns
    the new notebook and a list of what was changed, for the grading log.
    """
    nb = copy.deepcopy(submission)
    changes: list[str] = []
    anchor = -1  # where the previous instructor cell sits in the submission
    for cell in instructor.cells:
        j = find_cell(nb.cells, cell)
        if (is_locked(cell) or is_grade(cell) or is_parameters(cell)
                or (cell.cell_type == "code" and not is_solution(cell))):
            fresh = copy.deepcopy(cell)
            if fresh.cell_type == "code":
                fresh.outputs, fresh.execution_count = [], None
            label = grade_id(cell) or cell.get("id")
            if j is None:
                j = anchor + 1
                nb.cells.insert(j, fresh)
                changes.append(f"restored deleted cell {label}")
            else:
                old = nb.cells[j]
                if (without_hidden(old.get("source", "")) != without_hidden(cell.source)
                        or old.get("cell_type") != cell.cell_type
                        or _flags(old) != _flags(cell)):
                    changes.append(f"restored edited cell {label}")
                nb.cells[j] = fresh
        if j is not None:
            anchor = j
    return nb, changes


def set_parameters(nb: NotebookNode, **params) -> NotebookNode:
    """A copy with an ``injected-parameters`` cell after the ``parameters`` cell (at the top if
    there is none), as papermill does; an earlier injected cell is replaced."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    source = "# Parameters (injected by the grader)\n" + "".join(
        f"{k} = {v!r}\n" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    at = next((i + 1 for i, c in enumerate(nb.cells) if is_parameters(c)), 0)
    nb.cells.insert(at, cell)
    return nb


def read_notebook(raw: bytes | str) -> NotebookNode:
    """A validated nbformat-4 notebook from bytes; raises ValueError with the reason."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not text (not UTF-8 at byte {e.start})") from None
    try:
        nb = nbformat.reads(raw, as_version=4)
    except Exception as e:  # nbformat raises several kinds (JSON, schema, version)
        raise ValueError(f"not a readable notebook ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise ValueError(f"not a valid notebook ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(nb.get("cells"), list):
        raise ValueError("not a notebook (no cells)")
    return nb
