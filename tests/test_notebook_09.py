"""Lesson 09 runs headless with SMOKE = True (no live compile): both exercises pass with the
shipped solutions, the fused kernels agree with torch, and the stored benchmark is labelled."""

import json

import pytest
from notebook_support import cell_text as _text
from notebook_support import errors, execute_lesson


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson("09_fusion.ipynb", tmp_path_factory)
    return run.nb, run.out


def test_notebook_runs_without_errors(executed):
    nb, _ = executed
    found = errors(nb)
    assert not found, found[0]


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
