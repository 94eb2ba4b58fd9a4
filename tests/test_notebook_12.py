"""Lesson 12 runs headless with SMOKE = True: the pruning sweep with its charts, the refusal of
2:4 speed on a CPU, the fine-tune, both checks, the two students, and the claim's verdicts."""

import json

import nbformat
import pytest

from efflab.check import read_answers
from efflab.report import NOTEBOOK_DIR, run_notebook

PATH = NOTEBOOK_DIR / "12_compression.ipynb"


def _errors(nb) -> list[str]:
    return [o.get("ename", "") + ": " + o.get("evalue", "") for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _images(cell) -> int:
    return sum(1 for o in cell.get("outputs", []) if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def _text(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   + str(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", []))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    answers = tmp_path_factory.mktemp("l12-answers") / "answers.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFLAB_ANSWERS", str(answers))
    try:
        out = run_notebook(PATH, tmp_path_factory.mktemp("l12-executed"), {"SMOKE": True},
                           timeout_s=900, results_dir=tmp_path_factory.mktemp("l12-results"))
    finally:
        mp.undo()
    nb = nbformat.read(str(out), as_version=4)
    return nb, {c.get("id"): c for c in nb.cells}, read_answers(answers)


def test_stripped_with_stable_ids_and_graded_cells():
    nb = json.loads(PATH.read_text())
    assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    ids = [c["id"] for c in nb["cells"]]
    assert len(ids) == len(set(ids))
    meta = [c.get("metadata", {}).get("nbgrader", {}) for c in nb["cells"]]
    assert sum(1 for m in meta if m.get("grade")) == 2 and sum(1 for m in meta if m.get("solution")) == 2
    for c in nb["cells"]:
        if c.get("metadata", {}).get("nbgrader", {}).get("solution"):
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
