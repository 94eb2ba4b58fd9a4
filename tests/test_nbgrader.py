"""nbgrader itself accepts efflab's assignments: ``nbgrader generate_assignment`` takes every
lesson as shipped, and ``nbgrader autograde`` grades a solved submission to full points and a
wrong answer to none for its cell (with ``EFFLAB_CHECKS_RAISE=1``, a check that does not pass
raises, which is what nbgrader counts).

Each test builds a throw-away course folder (nbgrader's layout: source/, release/,
submitted/, autograded/, gradebook.db). ``generate_assignment`` runs on every lesson in
``make test``; ``autograde`` runs on the fixture assignment there and on every lesson (SMOKE)
in ``make test-long``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from efflab.course import cells as C
from efflab.course.report import notebooks

FIXTURE = Path(__file__).parent / "fixtures" / "class" / "assignment.ipynb"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("nbgrader", path=str(BIN)) is None,
                                reason="nbgrader is not installed (pip install -e '.[class]')")


def _nbgrader(course: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # alembic
    out = subprocess.run([str(BIN / "nbgrader"), *args, "--force"], cwd=course, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[ERROR]" not in out.stderr and "| ERROR]" not in out.stderr, out.stderr[-3000:]
    return out


def _course(tmp_path: Path, assignment: str, sources: list[Path]) -> Path:
    course = tmp_path / "course"
    (course / "source" / assignment).mkdir(parents=True)
    for p in sources:
        shutil.copy(p, course / "source" / assignment / p.name)
    (course / "nbgrader_config.py").write_text(
        'c = get_config()\nc.CourseDirectory.course_id = "efflab"\n'
        f"c.CourseDirectory.root = {str(course)!r}\n"
        "c.ExecutePreprocessor.timeout = 600\n")
    return course


def test_generate_assignment_accepts_every_lesson_as_shipped(tmp_path):
    lessons = notebooks()
    course = _course(tmp_path, "lessons", lessons)
    _nbgrader(course, "generate_assignment", "lessons", "--create")
    released = {p.name: nbformat.read(str(p), as_version=4)
                for p in (course / "release" / "lessons").glob("*.ipynb")}
    assert sorted(released) == sorted(p.name for p in lessons)
    for name, nb in released.items():
        text = "\n".join(c.source for c in nb.cells)
        assert C.SOLUTION_BEGIN not in text and C.HIDDEN_BEGIN not in text, name
        grades = [c for c in nb.cells if C.is_grade(c)]
        assert grades and all(c.metadata["nbgrader"].get("checksum") for c in grades), name


def _autograde(tmp_path: Path, sources: list[Path],
               students: dict[str, dict[str, nbformat.NotebookNode]] | None = None
               ) -> dict[str, dict[str, tuple[float, float]]]:
    """Generate, submit (each instructor notebook as ``alice``, SMOKE injected as papermill
    would, plus ``students``: name -> {file name: notebook}), autograde with
    ``EFFLAB_CHECKS_RAISE=1``: {student: {notebook: (score, max score)}} from nbgrader's own
    gradebook."""
    from nbgrader.api import Gradebook

    course = _course(tmp_path, "ps", sources)
    _nbgrader(course, "generate_assignment", "ps", "--create")
    handed = {"alice": {p.name: nbformat.read(str(p), as_version=4) for p in sources},
              **(students or {})}
    for student, nbs in handed.items():
        target = course / "submitted" / student / "ps"
        target.mkdir(parents=True)
        for name, nb in nbs.items():
            nbformat.write(C.set_parameters(nb, SMOKE=True), str(target / name))
    os.environ["EFFLAB_CHECKS_RAISE"] = "1"  # a check that does not pass raises: nbgrader's rule
    try:
        _nbgrader(course, "autograde", "ps", "--create")
    finally:
        os.environ.pop("EFFLAB_CHECKS_RAISE", None)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {s: {nb.name: (nb.score, nb.max_score) for nb in gb.find_submission("ps", s).notebooks}
                for s in handed}


def test_autograde_gives_the_fixture_assignments_solution_full_points_and_a_slip_none(tmp_path):
    sys.path.insert(0, str(FIXTURE.parent))
    import make_class

    slip = make_class.student_notebook({**make_class.RIGHT, "ex1-answer": make_class.TOKENS_MS_SLIP})
    scores = _autograde(tmp_path, [FIXTURE], {"bob": {FIXTURE.name: slip}})
    assert scores["alice"] == {"assignment": (3.0, 3.0)}, scores
    assert scores["bob"] == {"assignment": (2.0, 3.0)}, scores  # the wrong tokens/s earns nothing


@pytest.mark.long
def test_autograde_gives_every_lessons_solution_full_points(tmp_path):
    lessons = notebooks()
    scores = _autograde(tmp_path, lessons)["alice"]
    assert set(scores) == {p.stem for p in lessons}
    short = {k: v for k, v in scores.items() if v[0] != v[1] or v[1] <= 0}
    assert not short, short
