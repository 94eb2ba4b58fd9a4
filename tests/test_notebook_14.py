"""Lesson 14 runs headless with SMOKE = True: two torchrun launches (gloo over loopback), the
single-process reference, every chart, every check cell, and the refusal of 8 ranks on this host."""

import json

import pytest
from notebook_support import errors as _errors
from notebook_support import execute_lesson, graded_cells
from notebook_support import images as _images
from notebook_support import text as _text

from efflab.core.store import Store
from efflab.course.report import NOTEBOOK_DIR

PATH = NOTEBOOK_DIR / "14_distributed.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run = execute_lesson(PATH.name, tmp_path_factory)
    return run.nb, Store(run.results).records(), run.answers


def test_the_notebook_is_stripped_with_stable_ids_and_graded_cells():
    graded, solutions = graded_cells(PATH)
    assert len(graded) == 3 and len(solutions) == 3
    for c in solutions:
        src = "".join(c["source"])
        assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src


def test_runs_without_errors_and_draws_every_chart(executed):
    nb, _, _ = executed
    assert not _errors(nb), _errors(nb)
    # all-reduce fit, loss curves, step time, memory, and four guess-vs-measured charts
    assert _images(nb) >= 8


def test_records_both_launches_and_the_reference(executed):
    _, records, _ = executed
    kinds = {(r["kind"], r["world_size"], r["rank"]) for r in records if r["status"] == "ok"}
    assert {("allreduce", 2, 0), ("allreduce", 2, 1), ("ddp", 1, 0), ("ddp", 2, 0), ("ddp", 2, 1),
            ("sharding", 2, 0), ("sharding", 2, 1)} <= kinds
    assert all(r.get("loadavg") for r in records)  # the shared host's load, with every record


def test_loss_curves_match_and_state_is_sharded(executed):
    nb, _, _ = executed
    loss_cell = next(c for c in nb.cells if c.get("id") == "c14-loss")
    gaps = [float(line.rsplit(":", 1)[1]) for line in _text(loss_cell).splitlines()
            if "largest loss difference" in line]
    assert gaps and max(gaps) <= 1e-4
    zero_cell = next(c for c in nb.cells if c.get("id") == "c14-zero-compare")
    text = _text(zero_cell)
    assert "= unsharded" in text and ": True" in text and ": False" not in text


def test_eight_ranks_are_refused_with_the_reason(executed):
    nb, _, _ = executed
    cell = next(c for c in nb.cells if c.get("id") == "c14-refuse")
    assert "refused:" in _text(cell) and "scheduler" in _text(cell)


def test_the_solutions_pass_their_checks(executed):
    _, _, answers = executed
    from efflab.check import judge

    logged = [json.loads(line) for line in answers.read_text().splitlines()]
    assert {e["exercise"] for e in logged} == {"alpha_beta", "step_time_8", "zero1_bytes"}
    for e in logged:
        assert judge(e["exercise"], e["evidence"]).passed, e
