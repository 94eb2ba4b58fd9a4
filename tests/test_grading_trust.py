"""What a grade rests on (efflab.course.trusted): agreement with the grader's own run of the
lesson, and the grader's own probes of a learner's function.

The sandboxed path of both is exercised by the fixture class (tests/test_grading.py) and the
hostile class (tests/test_grading_hostile.py); here each piece is tried on its own, with honest
evidence, honest evidence from a busier run, and evidence made up to fit a wrong answer."""

from __future__ import annotations

import copy
import os
import stat

import nbformat
import pytest

from efflab import check
from efflab.check import REGISTRY
from efflab.course import cells as C
from efflab.course import trusted as T
from efflab.course.report import notebooks

THROUGHPUT = {"answer": 12800.0, "batch_size": 4, "latency_ms": 20.0, "tokens_per_step": 256}


def test_the_same_data_agree_and_a_busier_run_is_not_a_forgery():
    assert T.disagreement("throughput", THROUGHPUT, THROUGHPUT) == ""
    slower = {**THROUGHPUT, "latency_ms": 20.0 * 2.5, "answer": 5120.0}  # a loaded machine
    assert T.disagreement("throughput", slower, THROUGHPUT) == ""
    # the answer itself is the learner's: it is never compared with the reference's
    assert T.disagreement("throughput", {**THROUGHPUT, "answer": 1.0}, THROUGHPUT) == ""


@pytest.mark.parametrize("forged, field", [
    ({"latency_ms": 256.0}, "latency_ms"),         # a measurement invented to fit an answer
    ({"latency_ms": 20.0 / 3.5}, "latency_ms"),    # ... or too fast to be this machine
    ({"latency_ms": -20.0}, "latency_ms"),         # the wrong sign
    ({"tokens_per_step": 512}, "tokens_per_step"),  # a given is never measured: exactly
    ({"batch_size": 8}, "batch_size"),
])
def test_evidence_made_to_fit_is_named_by_its_field(forged, field):
    why = T.disagreement("throughput", {**THROUGHPUT, **forged}, THROUGHPUT)
    assert why.startswith(field) and "grader's own run" in why
    assert str(forged[field]) not in why  # the field, never the value


def test_missing_extra_and_nested_fields_disagree():
    assert "fields" in T.disagreement("throughput", {"answer": 1.0, "batch_size": 4}, THROUGHPUT)
    rows = {"answer": 4, "fraction": 0.9, "points": [[1, 100.0], [2, 190.0], [4, 300.0]]}
    assert T.disagreement("saturation", rows, rows) == ""
    moved = copy.deepcopy(rows)
    moved["points"][1][0] = 3  # a batch size is not measured
    assert T.disagreement("saturation", moved, rows).startswith("points[1][0]")
    shorter = {**rows, "points": rows["points"][:2]}
    assert T.disagreement("saturation", shorter, rows).startswith("points is not")


def test_a_whole_run_slower_agrees_and_one_number_moved_to_fit_does_not():
    rows = {"answer": 8, "fraction": 0.9,
            "points": [[b, t] for b, t in ((1, 100.0), (2, 190.0), (4, 300.0), (8, 390.0),
                                           (16, 400.0))]}
    loaded = copy.deepcopy(rows)  # the whole run 2.5x slower, with some noise
    for p, noise in zip(loaded["points"], (1.3, 0.8, 1.0, 1.1, 0.9)):
        p[1] = p[1] / 2.5 * noise
    assert T.disagreement("saturation", loaded, rows) == ""
    nudged = copy.deepcopy(rows)  # one point raised to make batch 4 "saturate"
    nudged["points"][2][1] = 300.0 * 3.5
    assert T.disagreement("saturation", nudged, rows).startswith("points[2][1]")
    assert "of the rest of the run" in T.disagreement("saturation", nudged, rows)
    far = copy.deepcopy(rows)  # a table from a machine 4x faster than this one
    for p in far["points"]:
        p[1] *= 4
    assert T.disagreement("saturation", far, rows).startswith("the measurements")
    assert T.disagreement("saturation", loaded, rows, factor=1.5) != ""


def test_a_function_exercise_compares_only_its_seed_and_unanswered_is_left_to_the_judge():
    ev = {"seed": 7, "outputs": [{"out": 1.0}]}
    assert T.disagreement("score_bytes", {**ev, "outputs": [{"out": 2.0}]}, ev) == ""
    assert T.disagreement("score_bytes", {**ev, "seed": 8}, ev).startswith("seed")
    assert T.disagreement("throughput", {"unanswered": True}, THROUGHPUT) == ""
    assert T.disagreement("throughput", {"collect_error": "x"}, THROUGHPUT) == ""


def test_every_exercise_says_what_is_its_answer_and_what_is_measured():
    for name, ex in REGISTRY.items():
        assert ex.answer_keys, name
        assert not set(ex.answer_keys) & set(ex.measured_keys), name


def test_probe_seeds_follow_the_key_and_the_key_file_is_private(tmp_path):
    key = T.grader_key(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert T.grader_key(tmp_path / "k") == key  # made once, then read back
    seeds = T.probe_seeds(key, "route")
    assert seeds == T.probe_seeds(key, "route") and len(set(seeds)) == T.PROBE_SEEDS
    assert seeds != T.probe_seeds(key, "pareto")
    assert seeds != T.probe_seeds(T.grader_key(tmp_path / "other"), "route")
    assert all(0 <= s < 2**31 for s in seeds)


def _cell(source, cid, solution=False):
    c = nbformat.v4.new_code_cell(source)
    c["id"] = cid
    if solution:
        c.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                  "grade_id": cid}
    return c


def test_the_probe_program_is_the_solution_cells_the_function_needs_and_the_imports():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell("import math\nimport torch as th\nfrom os.path import *\nrows = load_a_big_sweep()",
              "setup"),  # th: not read by the code the probes run, so not imported
        _cell("def helper(x):\n    return math.sqrt(x)", "helper", solution=True),
        _cell("while True:\n    pass", "other-answer", solution=True),  # not needed: not run
        _cell("%timeit 1\ndef f(x, fused=1):\n    return helper(x) + fused", "answer", solution=True),
        _cell("scratch = 1/0", "scratch"),
        _cell("efflab.check.score_bytes(f)", "check"),
    ]
    nb.cells.insert(3, _cell("fused = 2 * numel  # a total of the lesson's, not the function's",
                             "totals", solution=True))
    code = T.probe_program(nb, nb, 6, ["f"])  # f's parameter "fused" is not a free name
    assert code == ["import math\nfrom os.path import *", "def helper(x):\n    return math.sqrt(x)",
                    "\ndef f(x, fused=1):\n    return helper(x) + fused"]
    assert T.function_calls("efflab.check.score_bytes(f)\nefflab.check.score_bytes(f, seed=4)\n"
                            "efflab.check.throughput(f(1), df=d, batch_size=4)") == [
        ("score_bytes", "f")]


def test_the_probe_program_keeps_the_imports_a_function_body_reads():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell("import altair as alt\nimport torch as th\nimport os.path\nx = 1", "setup"),
        _cell("def f(n):\n    return th.zeros(n).numel() + len(os.path.sep)", "answer",
              solution=True),
        _cell("efflab.check.score_bytes(f)", "check"),
    ]
    assert T.probe_program(nb, nb, 2, ["f"]) == [  # alt: read by nothing the probes run
        "import torch as th\nimport os.path", "def f(n):\n    return th.zeros(n).numel() + "
        "len(os.path.sep)"]


LESSON_FUNCTIONS = [(p.stem, g.grade_id) for p in notebooks()
                    for nb in [nbformat.read(str(p), as_version=4)]
                    for g in C.grade_cells(nb) if T.function_calls(nb.cells[g.index].source)]


def test_every_lesson_has_function_exercises_the_grader_can_find():
    lessons = {stem for stem, _ in LESSON_FUNCTIONS}
    assert len(LESSON_FUNCTIONS) >= 11 and len(lessons) >= 10, LESSON_FUNCTIONS


@pytest.mark.parametrize("stem, grade_id", LESSON_FUNCTIONS)
def test_a_lessons_own_solution_passes_the_graders_probes(stem, grade_id):
    """Honest work gets full marks from the probes: the instructor's solution, run as a probe
    run runs it (only the solution cells it needs, the imports before them), on seeds no
    lesson uses; a placeholder function on the same probes does not pass."""
    path = next(p for p in notebooks() if p.stem == stem)
    nb = nbformat.read(str(path), as_version=4)
    g = next(g for g in C.grade_cells(nb) if g.grade_id == grade_id)
    calls = T.function_calls(nb.cells[g.index].source)
    namespace: dict = {"__name__": "__main__"}
    for code in T.probe_program(nb, nb, g.index, [expr for _, expr in calls]):
        exec(compile(code, stem, "exec"), namespace)  # noqa: S102 - the instructor's own code
    for name, expr in calls:
        fn = eval(expr, namespace)  # noqa: S307
        for seed in T.probe_seeds(b"a key of this test", name):
            fb = check.judge(name, REGISTRY[name].collect(fn, seed=seed))
            assert fb.passed, (stem, name, seed, str(fb))
        wrong = REGISTRY[name].collect(lambda *a, **k: 0, seed=seed)
        assert not check.judge(name, wrong).passed, (stem, name)


def test_a_probe_run_defines_the_function_past_a_line_that_needs_the_notebook():
    """The probe run executes a solution cell statement by statement: a line that reads the
    lesson's data (absent there) fails alone, the function after it is still defined, called on
    the grader's seeds, and only its outputs come back; a learner's print goes nowhere."""
    from efflab.course.sandbox import Limits, run_probes

    cell = ("ratio = sweep_table['latency'].max()  # the lesson's data: not in a probe run\n"
            "print('@@efflab-probe {\"forged\": true}')\n"
            "def score(B, h, T, bytes_per_value):\n"
            "    return B * h * T * T * bytes_per_value\n")
    seeds = T.probe_seeds(b"k", "score_bytes")
    result = run_probes([cell], [{"grade_id": "g", "exercise": "score_bytes", "expr": "score",
                                  "seeds": seeds}], Limits(cell_s=60, notebook_s=60),
                        isolation="process")
    assert [e["seed"] for e in result.entries] == seeds and result.note == ""
    assert all(check.judge("score_bytes", e["evidence"]).passed for e in result.entries)
    assert "NameError" in result.entries[0]["problems"][0]
    assert not any("forged" in e for e in result.entries)


def test_an_exercise_with_noisier_measurements_widens_the_factor_for_itself_only():
    rows = [{"policy": "static", "rate": 10.0, "ttft_p50": 0.01, "ttft_p99": 0.02,
             "throughput_tok_s": 500.0},
            {"policy": "continuous", "rate": 10.0, "ttft_p50": 0.01, "ttft_p99": 0.03,
             "throughput_tok_s": 600.0}]
    ev = {"answer": "both", "rate": 10.0, "target_s": 0.05, "rows": rows}
    queued = copy.deepcopy(ev)
    queued["rows"][1]["ttft_p99"] = 0.03 * 6  # a queue that built up in one honest run
    assert T.disagreement("policy_meets_ttft", queued, ev) == ""
    assert T.disagreement("policy_meets_ttft", {**ev, "rate": 10.0 * 20}, ev) != ""
    busier = {**THROUGHPUT, "latency_ms": 20.0 * 6}
    assert T.disagreement("throughput", busier, THROUGHPUT) != ""  # 3x still holds there
