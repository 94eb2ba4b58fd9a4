"""What each lesson grades: every lesson holds the exercises the course promises, and the
instructor guide's table is the one ``efflab assign --list`` prints from the notebooks."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from efflab.cli import main
from efflab.course.assignment import exercise_table, exercise_table_markdown
from efflab.course.report import NOTEBOOK_DIR

ROOT = Path(__file__).resolve().parents[1]
ROWS = exercise_table(NOTEBOOK_DIR)
LESSONS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_lesson_has_two_exercises_one_of_them_code_and_a_hidden_check(lesson):
    rows = [r for r in ROWS if r["lesson"] == lesson]
    checks = [n for r in rows for n in r["checks"]]
    assert len(checks) >= 2, f"{lesson}: {checks}"
    assert any(r["code"] for r in rows), f"{lesson}: no exercise probes a learner function"
    assert any(r["hidden"] for r in rows), f"{lesson}: no hidden check"
    assert all(r["points"] > 0 for r in rows), rows


def test_the_table_tells_code_and_hidden_checks_apart(tmp_path):
    nb = (tmp_path / "one.ipynb")
    cell = nbformat.v4.new_code_cell(
        "efflab.check.saturation(x)\n### BEGIN HIDDEN TESTS\nefflab.check.route(f, seed=3)\n"
        "### END HIDDEN TESTS")
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": 3,
                                 "grade_id": "g1", "schema_version": 3}
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), str(nb))
    [row] = exercise_table(nb)
    assert row == {"lesson": "one", "grade_id": "g1", "points": 3.0,
                   "checks": ["saturation", "route"], "hidden": ["route"], "code": ["route"]}
    text = exercise_table_markdown([row])
    assert "| one (3 points) | `g1` | 3 | `saturation`, `route` (code, hidden) |" in text


def test_the_instructor_guide_lists_what_every_lesson_grades(capsys):
    assert main(["assign", "--list", str(NOTEBOOK_DIR)]) == 0
    printed = capsys.readouterr().out
    guide = (ROOT / "docs" / "instructors.md").read_text()
    table = re.search(r"<!-- exercise-table -->\n(.*?)<!-- /exercise-table -->", guide, re.S)
    assert table, "docs/instructors.md has no exercise table between its markers"
    assert table.group(1) == printed, (
        "the guide's exercise table is stale: paste `efflab assign --list` between the markers")
