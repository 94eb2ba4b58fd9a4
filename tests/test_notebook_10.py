"""Lesson 10 runs headless with SMOKE = True: no cell errors, every chart drawn, every check
cell passes with the solutions in place, and the lesson's own claims hold on its outputs."""

import pytest
from notebook_support import cell_text as _text
from notebook_support import errors as _errors
from notebook_support import execute_lesson, graded_cells
from notebook_support import images as _images

from efflab.check import read_answers
from efflab.course.report import NOTEBOOK_DIR

PATH = NOTEBOOK_DIR / "10_kv_cache_and_speculation.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson(PATH.name, tmp_path_factory)
    return run.nb, read_answers(run.answers)


def test_the_notebook_is_stripped_with_stable_ids_and_graded_cells():
    graded, solutions = graded_cells(PATH)
    assert len(graded) == 2 and len(solutions) == 2
    for c in solutions:
        src = "".join(c["source"])
        assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src


def test_runs_and_its_claims_hold(executed):
    nb, answers = executed
    assert not _errors(nb), _errors(nb)
    assert _images(nb) >= 5  # cache bytes, decode cost, speculation, and the prediction charts
    from efflab.check import judge
    names = {a["exercise"] for a in answers}
    assert {"kv_cache_bytes", "break_even_acceptance"} <= names
    assert all(judge(a["exercise"], a["evidence"]).passed for a in answers)
    assert "greedy speculative output == greedy target output" in _text(nb, "l10-draft")
    verdict = _text(nb, "l10-verdict")
    assert "speculation pays" in verdict or "does not reach 1.5x" in verdict
    assert "p = " in _text(nb, "l10-sampling")
