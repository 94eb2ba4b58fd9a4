"""Lesson 11 runs headless with SMOKE = True: no cell errors, every chart drawn, every check
cell passes with the solutions in place, and the lesson's own claims hold on its outputs."""

import json

import nbformat
import pytest

from efflab.check import read_answers
from efflab.report import NOTEBOOK_DIR, run_notebook

PATH = NOTEBOOK_DIR / "11_serving.ipynb"


def _errors(nb) -> list[str]:
    return [o.get("ename", "") + ": " + o.get("evalue", "") for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _images(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def _text(nb, cell_id) -> str:
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", ""))
        out.append(o.get("data", {}).get("text/plain", ""))
    return "".join(out)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    store = tmp_path_factory.mktemp("l11-results")
    answers = tmp_path_factory.mktemp("l11-answers") / "answers.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFLAB_ANSWERS", str(answers))
    try:
        out = run_notebook(PATH, tmp_path_factory.mktemp("l11-executed"), {"SMOKE": True},
                           timeout_s=600, results_dir=store)
    finally:
        mp.undo()
    return nbformat.read(str(out), as_version=4), read_answers(answers)


def test_the_notebook_is_stripped_with_stable_ids_and_graded_cells():
    nb = json.loads(PATH.read_text())
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    graded = [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")]
    solutions = [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    assert len(graded) == 2 and len(solutions) == 2
    for c in solutions:
        src = "".join(c["source"])
        assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src


def test_runs_and_its_claims_hold(executed):
    nb, answers = executed
    assert not _errors(nb), _errors(nb)
    assert _images(nb) >= 4  # TTFT and TPOT curves, waste, the prediction chart
    from efflab.check import judge
    names = {a["exercise"] for a in answers}
    assert {"policy_meets_ttft", "paged_waste"} <= names
    assert all(judge(a["exercise"], a["evidence"]).passed for a in answers)
    assert "refused:" in _text(nb, "l11-refuse")
    assert "request 0" in _text(nb, "l11-demo")
