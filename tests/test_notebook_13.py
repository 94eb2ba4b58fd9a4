"""Lesson 13 runs headless with SMOKE = True: the shipped sweep loads and fits, the smallest
budget reruns live and reproduces the shipped losses, both checks pass, the check-by-training runs."""

import json

import nbformat
import pytest

from efflab.check import judge, read_answers
from efflab.report import NOTEBOOK_DIR, run_notebook

PATH = NOTEBOOK_DIR / "13_scaling_laws.ipynb"


def _errors(nb) -> list[str]:
    return [o.get("ename", "") + ": " + o.get("evalue", "") for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _images(cell) -> int:
    return sum(1 for o in cell.get("outputs", []) if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    answers = tmp_path_factory.mktemp("l13-answers") / "answers.jsonl"
    results = tmp_path_factory.mktemp("l13-results")
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFLAB_ANSWERS", str(answers))
    try:
        out = run_notebook(PATH, tmp_path_factory.mktemp("l13-executed"), {"SMOKE": True},
                           timeout_s=900, results_dir=results)
    finally:
        mp.undo()
    nb = nbformat.read(str(out), as_version=4)
    return nb, {c.get("id"): c for c in nb.cells}, read_answers(answers), results


def test_stripped_with_stable_ids_and_graded_cells():
    nb = json.loads(PATH.read_text())
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    meta = [c.get("metadata", {}).get("nbgrader", {}) for c in nb["cells"]]
    assert sum(1 for m in meta if m.get("grade")) == 2 and sum(1 for m in meta if m.get("solution")) == 2


def test_runs_and_draws(executed):
    nb, cells, _, _ = executed
    assert not _errors(nb)
    assert _images(cells["c13-rerun"]) >= 1
    assert _images(cells["c13-fit"]) >= 1 and _images(cells["c13-law"]) >= 1
    assert _images(cells["c13-check-train"]) >= 1


def test_rerun_reproduces_the_shipped_losses(executed):
    _, _, _, results = executed
    from efflab.scaling import load_shipped, runs_frame
    from efflab.store import Store

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
