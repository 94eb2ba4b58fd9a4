"""Lesson 13 runs headless with SMOKE = True: the shipped sweep loads and fits, the smallest
budget reruns live and reproduces the shipped losses, both checks pass, the check-by-training runs."""

import pytest
from notebook_support import errors as _errors
from notebook_support import execute_lesson, graded_cells
from notebook_support import images as _images

from efflab.check import judge, read_answers
from efflab.course.report import NOTEBOOK_DIR

PATH = NOTEBOOK_DIR / "13_scaling_laws.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson(PATH.name, tmp_path_factory, timeout_s=900)
    return run.nb, run.cells, read_answers(run.answers), run.results


def test_stripped_with_stable_ids_and_graded_cells():
    graded, solutions = graded_cells(PATH)
    assert len(graded) == 2 and len(solutions) == 2


def test_runs_and_draws(executed):
    nb, cells, _, _ = executed
    assert not _errors(nb)
    assert _images(cells["c13-rerun"]) >= 1
    assert _images(cells["c13-fit"]) >= 1 and _images(cells["c13-law"]) >= 1
    assert _images(cells["c13-check-train"]) >= 1


def test_rerun_reproduces_the_shipped_losses(executed):
    _, _, _, results = executed
    from efflab.core.store import Store
    from efflab.studies.scaling import load_shipped, runs_frame

    rerun = runs_frame(Store(results / "scaling.sqlite").records())
    shipped = load_shipped().set_index(["budget", "name"])["val_loss"]
    assert len(rerun) >= 3
    for r in rerun.itertuples():
        if (r.budget, r.name) in shipped.index:  # same recipe and seed: the same loss to rounding
            assert abs(r.val_loss - shipped[(r.budget, r.name)]) < 0.02, r.name


def test_both_checks_pass_with_the_solutions(executed):
    _, _, answers, _ = executed
    got = {a["exercise"]: judge(a["exercise"], a["evidence"]).passed for a in answers}
    assert got == {"compute_optimal": True, "optimal_loss": True}
