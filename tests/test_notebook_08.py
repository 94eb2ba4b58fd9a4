"""Lesson 08 runs headless with SMOKE = True: a profile, two rooflines, the memory timeline, both
exercises answered correctly by the shipped solutions, and a trace written."""

import json

import pytest
from notebook_support import cell_text as _text
from notebook_support import errors, execute_lesson


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson("08_inside_a_step.ipynb", tmp_path_factory)
    return run.nb, run.out


def _outputs(nb, cell_id):
    cell = next(c for c in nb.cells if c.get("id") == cell_id)
    return cell.get("outputs", [])


def test_notebook_runs_without_errors_and_draws(executed):
    nb, _ = executed
    found = errors(nb)
    assert not found, found[0]
    for cell_id in ("c08-profile", "c08-roofline", "c08-decode", "c08-timeline"):
        assert any("image/png" in o.get("data", {}) for o in _outputs(nb, cell_id)), cell_id


def test_exercises_pass_with_the_solutions(executed):
    nb, out = executed
    assert "✓ correct" in _text(nb, "c08-ex1-check")
    assert "✓ correct" in _text(nb, "c08-ex2-check")
    logged = [json.loads(line)["exercise"] for line in (out / "answers.jsonl").read_text().splitlines()]
    assert {"matmul_roofline", "which_roof"} <= set(logged)


def test_trace_and_memory_claims_hold(executed):
    nb, out = executed
    traces = list((out / "results" / "traces").glob("*.json"))
    assert traces and "traceEvents" in json.loads(traces[0].read_text())
    # parameters and optimizer state predicted exactly at every batch size
    table = _text(nb, "c08-mem-batches")
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()]
    assert rows and all(r[2] == "1.0" and r[3] == "1.0" for r in rows), table
    assert all(0.85 <= float(r[1]) <= 1.15 for r in rows), table  # activations within 15%
