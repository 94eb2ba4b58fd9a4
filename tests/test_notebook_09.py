"""Lesson 09 runs headless with SMOKE = True (no live compile): both exercises pass with the
shipped solutions, the fused kernels agree with torch, and the stored benchmark is labelled."""

import json

import nbformat
import pytest

from efflab.report import NOTEBOOK_DIR, run_notebook

NB = NOTEBOOK_DIR / "09_fusion.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb09")
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFLAB_ANSWERS", str(out / "answers.jsonl"))
    try:
        path = run_notebook(NB, out / "executed", {"SMOKE": True}, timeout_s=600,
                            results_dir=out / "results")
    finally:
        mp.undo()
    return nbformat.read(str(path), as_version=4), out


def _text(nb, cell_id) -> str:
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for o in cell.get("outputs", []))


def test_notebook_runs_without_errors(executed):
    nb, _ = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors[0]


def test_exercises_pass_with_the_solutions(executed):
    nb, out = executed
    assert "✓ correct" in _text(nb, "c09-ex1-check")
    assert "✓ correct" in _text(nb, "c09-ex2-check")
    logged = {json.loads(line)["exercise"] for line in (out / "answers.jsonl").read_text().splitlines()}
    assert {"gelu_bias_bytes", "softmax_row_reduction"} <= logged


def test_kernels_agree_and_are_never_timed_interpreted(executed):
    nb, _ = executed
    text = _text(nb, "c09-kernels-check")
    diffs = [float(w.rstrip(",")) for w in text.replace("=", " ").split() if "e-" in w or "e+" in w]
    assert diffs and max(diffs) < 1e-4, text
    assert "interpreted (correctness only): True" in _text(nb, "c09-kernel-bytes") or \
        "interpreted (correctness only): False" in _text(nb, "c09-kernel-bytes")


def test_compile_results_are_labelled_with_their_source(executed):
    nb, _ = executed
    text = _text(nb, "c09-compile-sweep")
    assert "source:" in text
    assert ("stored:" in text and " measured " in text) or ("no stored benchmark" in text)
