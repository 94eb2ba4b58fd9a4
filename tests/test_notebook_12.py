"""Lesson 12 runs headless with SMOKE = True: the pruning sweep with its charts, the refusal of
2:4 speed on a CPU, the fine-tune, both checks, the two students, and the claim's verdicts."""

import pytest
from notebook_support import errors as _errors
from notebook_support import execute_lesson, graded_cells, text
from notebook_support import images as _images

from efflab.check import read_answers
from efflab.course.report import NOTEBOOK_DIR

PATH = NOTEBOOK_DIR / "12_compression.ipynb"


def _text(cell) -> str:
    return text(cell, markdown=True)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson(PATH.name, tmp_path_factory, timeout_s=900)
    return run.nb, run.cells, read_answers(run.answers)


def test_stripped_with_stable_ids_and_graded_cells():
    graded, solutions = graded_cells(PATH)
    assert len(graded) == 2 and len(solutions) == 2
    for c in solutions:
        assert "### BEGIN SOLUTION" in "".join(c["source"])


def test_runs_and_draws(executed):
    nb, cells, _ = executed
    assert not _errors(nb)
    assert _images(cells["c12-sweep"]) >= 2          # quality and speed vs sparsity
    assert _images(cells["c12-distill"]) >= 2        # live curves + the prediction chart
    assert _images(cells["c12-frontier"]) == 2       # the frontier on both costs


def test_refusal_and_verdicts_are_said(executed):
    _, cells, _ = executed
    assert "compute capability" in _text(cells["c12-refusal"])
    text = _text(cells["c12-frontier"])
    assert text.count("98%") >= 2 and ("reached" in text or "No candidate" in text)


def test_pruning_table_holds_every_method(executed):
    _, cells, _ = executed
    table = _text(cells["c12-sweep"])
    for method in ("dense", "unstructured-global", "unstructured-layer", "2:4", "structured"):
        assert method in table


def test_both_checks_pass_with_the_solutions(executed):
    _, _, answers = executed
    from efflab.check import judge

    got = {a["exercise"]: judge(a["exercise"], a["evidence"]).passed for a in answers}
    assert got == {"mlp_flops_sparsity": True, "soft_target_loss": True}
