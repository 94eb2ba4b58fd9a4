"""The course tools: student versions, submissions, the sandboxed grader, class results.

The fixture class (tests/fixtures/class/make_class.py) is nine submissions of a two-exercise
notebook — all correct, partly wrong (+ an ``input()``), a dying kernel, an infinite loop, a
memory hog, one that tries to delete files outside its folder, a PDF, a truncated notebook,
and a cheat that patches efflab.check and deletes a check cell — graded end to end (under
bubblewrap) against tests/fixtures/class/expected_gradebook.csv. The hostile class is in
tests/test_grading_hostile.py.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import psutil
import pytest

import efflab.check
from efflab.cli import main
from efflab.core.config import ConfigError
from efflab.core.store import Store
from efflab.course import cells as C
from efflab.course.assignment import NOT_ANSWERED, student_version
from efflab.course.class_results import class_table, pool
from efflab.course.gradebook import _html, grade, score_cell
from efflab.course.report import NOTEBOOK_DIR, notebooks, run_notebook
from efflab.course.sandbox import CellRun, Limits
from efflab.course.submission import open_submission, submit
from efflab.ui.charts.class_results import class_results_chart

FIXTURES = Path(__file__).parent / "fixtures" / "class"
ASSIGNMENT = FIXTURES / "assignment.ipynb"
sys.path.insert(0, str(FIXTURES))
if not os.environ.get("CI"):  # in CI the class tools are installed: missing, they fail
    pytest.importorskip("nbgrader", reason="the fixture class is made with nbgrader's "
                        "preprocessors: pip install 'efflab[class]'")
import make_class  # noqa: E402  (the fixture class lives beside its notebook)

# small limits so the loop and the hog end fast; the cell limit still leaves a loaded 2-core
# host time to import torch in a fresh kernel
CLASS_LIMITS = Limits(cell_s=30, notebook_s=150, memory_bytes=3 * 2**30)


def _instructor():
    return nbformat.read(str(ASSIGNMENT), as_version=4)


def _outside_solutions(nb) -> str:
    """Every line of the notebook that is not inside a solution region, as one text."""
    kept = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if C.SOLUTION_BEGIN in line:
                inside = True
            elif C.SOLUTION_END in line:
                inside = False
            elif not inside:
                kept.append(line.strip())
    return "\n".join(kept)


def _check_student_version(instructor, student) -> None:
    """No solution or hidden-test line survives; outputs cleared; parameters and ids kept."""
    others = set(_outside_solutions(instructor).splitlines())
    text = "\n".join(line.strip() for c in student.cells for line in c.source.splitlines())
    student_lines = set(text.splitlines())
    leaked = {line for line in C.solution_lines(instructor) - others if line in student_lines}
    assert not leaked, f"solution lines in the student version: {sorted(leaked)[:5]}"
    hidden_only = C.hidden_lines(instructor) - {
        line.strip() for c in instructor.cells for line in C.without_hidden(c.source).splitlines()}
    assert not (hidden_only & student_lines), "a hidden check survived"
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert [c.get("id") for c in student.cells] == [c.get("id") for c in instructor.cells]
    params = [c for c in instructor.cells if C.is_parameters(c)]
    assert [c.source for c in student.cells if C.is_parameters(c)] == [c.source for c in params]
    assert [(g.grade_id, g.points) for g in C.grade_cells(student)] == [
        (g.grade_id, g.points) for g in C.grade_cells(instructor)]
    for cell in student.cells:
        if C.is_solution(cell) and cell.cell_type == "code":
            assert NOT_ANSWERED in cell.source


# ---------------------------------------------------------------------- student versions

def test_student_version_of_the_fixture_strips_answers_and_hidden_checks():
    nb = _instructor()
    student = student_version(nb, "assignment")
    _check_student_version(nb, student)
    assert "return tokens_per_step / (latency_ms / 1e3)" in C.solution_lines(nb)  # the check bites
    assert student.metadata["efflab"]["assignment"] == "assignment"
    checks = [c for c in student.cells if C.is_grade(c)]
    assert all(c.metadata["deletable"] is False and c.metadata["editable"] is False for c in checks)
    assert all(c.metadata["nbgrader"].get("checksum") for c in checks)  # nbgrader autograde's
    assert nb.cells[5].source.count("BEGIN HIDDEN TESTS") == 1  # the instructor copy untouched


def test_a_solution_outside_a_solution_cell_is_refused_with_the_reason():
    nb = _instructor()
    nb.cells[2].source += "\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION"
    with pytest.raises(ConfigError, match="ClearSolutions"):
        student_version(nb, "assignment")


def test_assign_every_lesson(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["assign", str(NOTEBOOK_DIR), "--out", str(out)]) == 0
    lessons = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in lessons)
    with_solutions = 0
    for path in lessons:
        instructor = nbformat.read(str(path), as_version=4)
        student = nbformat.read(str(out / path.name), as_version=4)
        _check_student_version(instructor, student)
        with_solutions += bool(C.solution_lines(instructor))
    assert with_solutions >= 1
    assert main(["assign", str(NOTEBOOK_DIR), "--out", str(NOTEBOOK_DIR)]) == 2  # never over itself
    assert "other than the instructor" in capsys.readouterr().err


def test_student_notebook_stops_at_the_first_unanswered_exercise(tmp_path):
    import papermill

    student = student_version(_instructor(), "assignment")
    path = tmp_path / "assignment.ipynb"
    nbformat.write(student, str(path))
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run_notebook(path, tmp_path / "ran", {"SMOKE": True}, timeout_s=300,
                     results_dir=tmp_path / "results")
    assert "NotImplementedError" in str(err.value) and NOT_ANSWERED in str(err.value)
    ran = nbformat.read(str(tmp_path / "ran" / "assignment.ipynb"), as_version=4)
    failed = [c.get("id") for c in ran.cells if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed == ["ex1-check"]  # the first check that calls the unanswered function


# ---------------------------------------------------------------------- restoring cells

def test_restore_puts_back_deleted_and_edited_check_cells_and_keeps_answers():
    instructor = _instructor()
    sub = student_version(instructor, "assignment")
    ids = [c.id for c in sub.cells]
    sub.cells[ids.index("ex1-answer")].source = "def tokens_per_s(a, b):\n    return 42.0"
    sub.cells[ids.index("ex2-check")].source = "print('all good')"          # edited check
    sub.cells[ids.index("params")].source = "SMOKE = False\nBATCH = 4096"   # edited sizes
    scratch = nbformat.v4.new_code_cell("x = 1")
    scratch["id"] = "mine"
    sub.cells.insert(ids.index("ex2"), scratch)
    sub.cells = [c for c in sub.cells if c.id != "ex1-check"]               # deleted check
    restored, changes = C.restore_cells(sub, instructor)
    got = [c.id for c in restored.cells]
    assert got == ["title", "params", "setup", "ex1", "ex1-answer", "ex1-check", "mine", "ex2",
                   "ex2-answer", "ex2-check", "end"]
    by_id = {c.id: c for c in restored.cells}
    assert "BEGIN HIDDEN TESTS" in by_id["ex1-check"].source                 # hidden checks back
    assert by_id["ex2-check"].source == "efflab.check.online_softmax(update)"
    assert by_id["params"].source.endswith("SEQ_LEN = 64")
    assert by_id["ex1-answer"].source.endswith("return 42.0")              # the answer is theirs
    assert sorted(changes) == ["restored deleted cell check_tokens_per_s",
                               "restored edited cell check_online_softmax",
                               "restored edited cell params"]
    ran = C.set_parameters(restored, SMOKE=True)
    at = [c.id for c in ran.cells].index("injected-parameters")
    assert ran.cells[at - 1].id == "params" and "SMOKE = True" in ran.cells[at].source
    untouched, none = C.restore_cells(student_version(instructor, "assignment"), instructor)
    assert none == []  # an honest student version needs no restoring


# ---------------------------------------------------------------------- scoring from evidence

RECORD = {"latency_ms": {"median": 20.0}, "throughput": {"tokens_per_step": 256}}
OTHER = {"latency_ms": {"median": 7.5}, "throughput": {"tokens_per_step": 1024}}


def _evidence(answer, record, batch):
    return {"exercise": "throughput",
            "evidence": efflab.check.throughput.collect(answer, df=record, batch_size=batch)}


def test_score_cell_recomputes_every_verdict_from_the_evidence():
    g = C.GradeCell(index=5, cell_id="ex1-check", grade_id="t", points=1.0,
                    exercises=("throughput",))
    right = [_evidence(12800.0, RECORD, 4), _evidence(1024 / 0.0075, OTHER, 8)]
    run = CellRun(6, "ex1-check", "ok", "", right)
    assert score_cell(g, run, [], "") == (1.0, "correct", "correct")
    # the visible check right, the hidden one wrong (a hard-coded number): no points
    hard_coded = [_evidence(12800.0, RECORD, 4), _evidence(12800.0, OTHER, 8)]
    pts, status, text = score_cell(g, CellRun(6, "ex1-check", "ok", "", hard_coded), [], "")
    assert (pts, status) == (0.0, "wrong") and "throughput" in text
    # a unit slip: the judge's hint about milliseconds reaches the gradebook
    pts, status, text = score_cell(g, CellRun(6, "x", "ok", "", [_evidence(12.8, RECORD, 4)]), [], "")
    assert (pts, status) == (0.0, "wrong") and "milliseconds" in text
    # evidence for another exercise (a forged line) does not count; nothing logged -> zero
    forged = [{"exercise": "online_softmax", "evidence": {"seed": 4}}]
    pts, status, text = score_cell(g, CellRun(6, "x", "ok", "", forged), [], "")
    assert pts == 0.0 and "no answer was logged for throughput" in text
    # an error, a timeout, a dead kernel, a missing run: zero with the reason
    before = [CellRun(4, "ex1-answer", "timeout", "cell time limit (5 s) reached")]
    pts, status, text = score_cell(g, CellRun(6, "x", "error", "NameError: name 'f'"), before, "")
    assert (pts, status) == (0.0, "error") and "NameError" in text and "cell time limit" in text
    assert score_cell(g, CellRun(6, "x", "timeout", "cell time limit (5 s) reached"), [], "")[:2] == (0.0, "timeout")
    assert score_cell(g, None, [], "notebook time limit (9 s) reached")[1:] == (
        "not_run", "not run: notebook time limit (9 s) reached")


def test_partial_credit_is_the_lowest_fraction(monkeypatch):
    from efflab.check import Exercise, Verdict

    name = "grading_test_half"
    ex = Exercise(name, 2.0, collect_fn=lambda answer: {"answer": float(answer)})
    ex.judge_with(lambda ev: Verdict(ev["answer"] > 0, fraction=min(1.0, ev["answer"])))
    monkeypatch.setitem(efflab.check.REGISTRY, name, ex)  # registered for this test only
    g = C.GradeCell(index=0, cell_id="c", grade_id="h", points=4.0, exercises=(name,))
    ev = [{"exercise": name, "evidence": {"answer": a}} for a in (1.0, 0.5, 0.75)]
    pts, status, _ = score_cell(g, CellRun(0, "c", "ok", "", ev), [], "")
    assert (pts, status) == (2.0, "partial")


def test_limits_are_checked():
    with pytest.raises(ConfigError, match="cell_s"):
        Limits(cell_s=0)
    with pytest.raises(ConfigError, match="notebook_s"):
        Limits(cell_s=60, notebook_s=30)
    with pytest.raises(ConfigError, match="memory_bytes"):
        Limits(memory_bytes=1000)


# ---------------------------------------------------------------------- submissions

def _store_with_records(folder: Path, records: list[dict]) -> Path:
    store = Store(folder)
    for r in records:
        store.append(r)
    with sqlite3.connect(store.path) as db:  # a table another module adds (predictions)
        db.execute("CREATE TABLE IF NOT EXISTS predictions (name TEXT, value REAL, unit TEXT)")
        db.execute("INSERT INTO predictions VALUES ('step_ms', 12.5, 'ms')")
    return folder


def _record(machine_threads=2, **kw):
    knobs = {"batch_size": 1, "seq_len": 16, "workload": "train", "seed": 0, "threads": None,
             "precision": "fp32", "quantization": "none", "group_size": 64,
             "checkpointing": "none", "checkpointing_every": 1, "moe_experts": 0}
    tokens = kw.pop("tokens_per_s", 1000.0)
    peak = kw.pop("peak_bytes", 2**20)
    status = kw.pop("status", "ok")
    created = kw.pop("created", "2026-01-01T00:00:00")
    knobs.update(kw)
    return {"schema": "efflab.record/1", "status": status, "preset": "cpu-tiny",
            "workload": knobs["workload"], "knobs": knobs, "created": created,
            "throughput": {"tokens_per_s": tokens}, "memory": {"peak_bytes": peak}}


def test_submit_writes_one_zip_with_everything_and_it_reads_back(tmp_path, monkeypatch):
    from efflab.measurement import hardware

    cache = tmp_path / "cache"
    cache.mkdir()
    fp = hardware.fingerprint()
    (cache / f"calibration-quick-cpu-{fp}.json").write_text(json.dumps({"fingerprint": fp, "peak": 1}))
    monkeypatch.setattr(hardware, "CACHE_DIR", cache)
    nb = student_version(_instructor(), "assignment")
    nb_path = tmp_path / "work" / "assignment.ipynb"
    nb_path.parent.mkdir()
    nbformat.write(nb, str(nb_path))
    (nb_path.parent / "efflab_answers.jsonl").write_text('{"exercise": "throughput", "evidence": {}}\n')
    monkeypatch.delenv("EFFLAB_ANSWERS", raising=False)
    results = _store_with_records(tmp_path / "results", [_record(), _record(batch_size=8)])
    out = submit(nb_path, student="ada", results=results, calibrate_if_missing=False)
    assert out == nb_path.parent / "ada-assignment.zip"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("manifest.json"))
        for name, digest in manifest["files"].items():  # every file listed with its hash
            import hashlib
            assert hashlib.sha256(z.read(name)).hexdigest() == digest
    assert {"manifest.json", "assignment.ipynb", "answers.jsonl", "machine.json",
            "store/records.jsonl", "store/predictions.jsonl", "store/meta.jsonl"} <= names
    assert manifest["student"] == "ada" and manifest["assignment"] == "assignment"
    assert manifest["fingerprint"] == fp
    sub = open_submission(out, student="ada")
    assert sub.problem is None and sub.assignment == "assignment"
    assert [r["knobs"]["batch_size"] for r in sub.records] == [1, 8]
    assert sub.tables["predictions"] == [{"name": "step_ms", "value": 12.5, "unit": "ms"}]
    assert sub.machine["calibrations"] == [{"fingerprint": fp, "peak": 1}]
    with pytest.raises(ConfigError, match="--student"):
        submit(nb_path, student="../evil", results=results, calibrate_if_missing=False)


def test_open_submission_names_what_is_wrong(tmp_path):
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(b"%PDF-1.4 hello")
    assert open_submission(pdf).problem.startswith("not a notebook")
    bad = tmp_path / "b.ipynb"
    bad.write_text('{"cells": [')
    assert open_submission(bad).problem.startswith("malformed notebook")
    empty = tmp_path / "c.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("notes.txt", "no notebook here")
    assert open_submission(empty).problem == "malformed submission: no notebook inside"
    renamed = tmp_path / "d.json"  # a notebook under another name still counts
    nbformat.write(_instructor(), str(renamed))
    assert open_submission(renamed).problem is None


# ---------------------------------------------------------------------- the fixture class

@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("class")
    results = _store_with_records(root / "alice-results", [_record()])

    def as_zip(nb_path, out):
        submit(nb_path, out=out, student=out.stem, results=results, calibrate_if_missing=False)

    subs = make_class.write_class(root / "submissions", submit_zip=as_zip)
    t0 = time.perf_counter()
    df = grade(subs, root / "out" / "gradebook.csv", source=ASSIGNMENT, limits=CLASS_LIMITS,
               workers=2)
    seconds = time.perf_counter() - t0
    return root, subs, df, seconds


def test_the_fixture_class_grades_as_expected(graded_class):
    root, subs, df, seconds = graded_class
    print(f"fixture class of {len(make_class.CLASS)} graded in {seconds:.0f} s")
    expected = list(csv.DictReader(open(FIXTURES / "expected_gradebook.csv")))
    got = pd.read_csv(root / "out" / "gradebook.csv")
    assert list(got.columns) == ["student", "file", "notebook", "grade_id", "exercises", "points",
                                 "max_points", "status", "feedback"]
    assert len(got) == len(expected)
    for want, row in zip(expected, got.itertuples()):
        where = f"{want['student']}/{want['grade_id']}: {row.feedback}"
        assert (row.student, row.grade_id) == (want["student"], want["grade_id"]), where
        assert row.file.startswith(want["student"] + "."), where
        assert (row.points, row.max_points) == (float(want["points"]), float(want["max_points"])), where
        assert row.status == want["status"], where
        assert want["feedback_contains"] in row.feedback, where
    page = (root / "out" / "gradebook.html").read_text()
    assert all(s in page for s in make_class.CLASS) and "30 s per cell" in page
    log = json.loads((root / "out" / "gradebook.log.json").read_text())
    by_student = {s["student"]: s for s in log["submissions"]}
    assert by_student["ivan"]["restored"] == ["restored deleted cell check_tokens_per_s"]
    assert by_student["alice"]["restored"] == []
    bob = {c["cell_id"]: c for c in by_student["bob"]["cells"]}
    assert bob["scratch-ex1-check"]["status"] == "error"  # input() raised; nothing hung
    assert "StdinNotImplementedError" in bob["scratch-ex1-check"]["reason"]
    assert bob["ex2-check"]["status"] == "ok"  # and the cells after it ran
    executed = root / "out" / "gradebook_executed"
    assert (executed / "alice--alice.ipynb").is_file() and not (executed / "gina--gina.ipynb").exists()


def test_grading_again_gives_the_same_bytes(graded_class, tmp_path):
    root, subs, df, _ = graded_class
    again = tmp_path / "again"
    again.mkdir()
    chosen = ("alice", "bob", "carol", "gina")  # a pass, a wrong answer, a dead kernel, a PDF
    for name in ("alice.zip", "bob.ipynb", "carol.ipynb", "gina.pdf"):
        (again / name).write_bytes((subs / name).read_bytes())
    df2 = grade(again, tmp_path / "gradebook.csv", source=ASSIGNMENT, limits=CLASS_LIMITS,
                workers=2)
    first = df[df["student"].isin(chosen)].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, df2)
    # the same rows, written again, are the same bytes: no timings, paths or addresses
    lines = (root / "out" / "gradebook.csv").read_bytes().splitlines(keepends=True)
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.decode().split(",")[0] in chosen]
    assert (tmp_path / "gradebook.csv").read_bytes() == b"".join(kept)
    assert (tmp_path / "gradebook.html").read_text() == _html(first, CLASS_LIMITS)


# ---------------------------------------------------------------------- class results

def _machine_zip(path: Path, fingerprint: str, cpu: str, records: list[dict]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("manifest.json", json.dumps({"schema": "efflab.submission/1",
                                                "notebook": "x.ipynb", "fingerprint": fingerprint}))
        z.writestr("x.ipynb", nbformat.writes(nbformat.v4.new_notebook()))
        z.writestr("machine.json", json.dumps({"fingerprint": fingerprint,
                                               "env": {"cpu": cpu, "threads": 2, "gpu": None}}))
        z.writestr("store/records.jsonl", "\n".join(json.dumps(r) for r in records))


def test_class_results_pool_ratios_per_machine(tmp_path, capsys):
    subs = tmp_path / "subs"
    subs.mkdir()
    a = [_record(batch_size=b, tokens_per_s=t) for b, t in ((1, 100.0), (4, 300.0), (16, 250.0))]
    a += [_record(batch_size=1, precision="bf16", tokens_per_s=5.0),
          _record(workload="decode", quantization="int8-weight", tokens_per_s=180.0),
          _record(workload="decode", tokens_per_s=100.0),
          _record(workload="decode", quantization="int4-weight", group_size=32, tokens_per_s=150.0),
          _record(checkpointing="blocks", peak_bytes=2**20 // 4),
          _record(checkpointing="blocks", batch_size=4, peak_bytes=1, status="oom"),
          _record(seq_len=32, precision="bf16", tokens_per_s=1.0)]  # no fp32 twin: unpaired
    b = [_record(batch_size=1, tokens_per_s=50.0), _record(batch_size=8, tokens_per_s=400.0),
         _record(batch_size=1, precision="bf16", tokens_per_s=100.0)]
    _machine_zip(subs / "ann.zip", "aaaa11112222", "EPYC", a)
    _machine_zip(subs / "ann2.zip", "aaaa11112222", "EPYC", a)  # the same store twice
    _machine_zip(subs / "bo.zip", "bbbb33334444", "M2", b)
    (subs / "cy.pdf").write_bytes(b"%PDF")
    records, curves = pool(subs)
    assert len(records) == len(a) + len(b) and curves.empty
    t = class_table(records)
    got = {(r.comparison, r.machine[-7:-1]): (r.median, r.n) for r in t.itertuples()}
    assert got == {("batching gain (train)", "aaaa11"): (3.0, 1),
                   ("batching gain (train)", "bbbb33"): (8.0, 1),
                   ("bf16 ÷ fp32 speed", "aaaa11"): (0.05, 1),
                   ("bf16 ÷ fp32 speed", "bbbb33"): (2.0, 1),
                   ("int8 decode gain", "aaaa11"): (1.8, 1),
                   ("int4 decode gain", "aaaa11"): (1.5, 1),
                   ("checkpointing saving", "aaaa11"): (4.0, 1)}
    assert list(dict.fromkeys(t["comparison"]))[0] == "batching gain (train)"
    spec = class_results_chart(t).to_dict()
    points = [layer for layer in spec["layer"] if layer["mark"].get("type") == "point"
              or layer["mark"] == "point"]
    assert len(points) == 1  # one point mark; one row per machine and comparison
    assert main(["class-results", str(subs), "--out", str(tmp_path / "class.json")]) == 0
    table = pd.read_csv(tmp_path / "class.csv")
    assert len(table) == len(t) and (tmp_path / "class.json").is_file()
    assert "batching gain (train)" in capsys.readouterr().out


def test_moe_loss_at_equal_flops_from_stored_curves():
    from efflab.course.class_results import moe_loss_ratios

    curves = pd.DataFrame(
        [{"variant": "dense", "flops": f, "val_loss": loss} for f, loss in ((1, 3.0), (2, 2.0), (3, 1.5))]
        + [{"variant": "MoE 4×top-1", "flops": f, "val_loss": loss} for f, loss in ((1, 3.2), (2.5, 2.2))]
        + [{"variant": "MoE 4×top-1, no balancing", "flops": 2.5, "val_loss": 9.0}])
    curves["machine"], curves["student"] = "m", "s"
    (row,) = moe_loss_ratios(curves)
    # compared at 2.5 FLOPs, the most both reached: dense interpolates to 1.75
    assert row["comparison"] == "MoE ÷ dense loss" and row["value"] == pytest.approx(2.2 / 1.75)
    # the lesson run twice: each run is its own pair, not one curve zig-zagging between runs
    again = curves.assign(run="r1")
    second = curves.assign(run="r2", val_loss=curves["val_loss"] * [1, 1, 1, 0.5, 0.5, 1])
    rows = moe_loss_ratios(pd.concat([again, second], ignore_index=True))
    assert sorted(r["value"] for r in rows) == pytest.approx(sorted([2.2 / 1.75, 1.1 / 1.75]))


def test_train_curves_are_kept_per_run_and_pooled_from_a_submission(tmp_path):
    from efflab.core.config import Knobs
    from efflab.core.store import Store
    from efflab.course.class_results import moe_loss_ratios
    from efflab.course.submission import dump_store
    from efflab.measurement.training import train_curves

    variants = {"dense": Knobs(), "MoE 2×top-1": Knobs(moe_experts=2, moe_top_k=1)}
    kw = dict(preset="cpu-tiny", steps=4, batch_size=2, seq_len=16, warmup=1, eval_every=2,
              calibration={"fingerprint": "test", "bandwidth_bytes_per_s": 10e9,
                           "matmul": {"float32": {"flops_per_s": 100e9, "sizes": [256]}}},
              progress=False)
    curves = train_curves(variants, store=tmp_path, **kw)
    kept = Store(tmp_path).curves()
    assert set(kept["run"]) == {curves.attrs["run"]}
    assert list(kept["variant"]) == list(curves["variant"])
    assert kept["val_loss"].notna().sum() == curves["val_loss"].notna().sum() == 4
    assert kept["flops"].tolist() == pytest.approx(curves["flops"].tolist())
    train_curves(variants, store=False, **kw)  # not kept
    assert len(Store(tmp_path).curves()) == len(curves)
    # what a submission carries: the store's curves table, row by row
    lines = dump_store(Store(tmp_path).path)["store/curves.jsonl"].decode().splitlines()
    pooled = pd.DataFrame([json.loads(line) for line in lines]).assign(machine="m", student="s")
    (ratio,) = moe_loss_ratios(pooled)
    last = curves.dropna(subset=["val_loss"]).groupby("variant")["val_loss"].last()
    assert ratio["value"] == pytest.approx(last["MoE 2×top-1"] / last["dense"])


def test_grade_command_without_running_a_kernel(tmp_path, capsys, monkeypatch):
    subs = tmp_path / "subs"
    (subs / "zed").mkdir(parents=True)
    (subs / "zed" / "answers.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (subs / "amy.txt").write_text("I did not do it")
    out = tmp_path / "book.csv"
    assert main(["grade", str(subs), "--source", str(ASSIGNMENT), "--out", str(out)]) == 0
    book = pd.read_csv(out)
    assert list(book["student"]) == ["amy", "amy", "zed", "zed"]
    assert list(book["status"]) == ["not_a_notebook"] * 2 + ["malformed"] * 2
    assert book["points"].sum() == 0 and book["max_points"].sum() == 6
    assert "4 rows, 2 students" in capsys.readouterr().out
    assert main(["grade", str(subs), "--source", str(ASSIGNMENT), "--workers", "0"]) == 2
    assert main(["grade", str(subs), "--source", str(tmp_path / "none.ipynb")]) == 2
    capsys.readouterr()
    from efflab.course import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)  # a machine without bwrap
    assert main(["grade", str(subs), "--source", str(ASSIGNMENT), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "apt-get install bubblewrap" in err and "--trusted-class" in err
    assert main(["grade", str(subs), "--source", str(ASSIGNMENT), "--out", str(out),
                 "--trusted-class"]) == 0
    assert json.loads(out.with_suffix(".log.json").read_text())["isolation"] == "process"


@pytest.mark.parametrize("workers", [1, 2])
def test_submissions_run_beside_the_reference_run_and_wait_for_it_only_to_be_scored(
        tmp_path, monkeypatch, capsys, workers):
    """The reference run takes one worker; the others run submissions meanwhile (their runs
    never need it). Every submission is still scored against it, and a reference that fails
    its own checks is reported. The sandbox is replaced by timed stand-ins: this tests the
    schedule, not the runs."""
    import threading

    from efflab.course import gradebook as G
    from efflab.course.sandbox import SandboxResult

    events, lock = [], threading.Lock()

    def note(what):
        with lock:
            events.append((what, time.monotonic()))

    def reference_run(instructor, limits, calibration_dir=None, isolation="bwrap"):
        note("reference start")
        time.sleep(1.0)
        note("reference end")
        return {g.grade_id: "the reference failed here" for g in C.grade_cells(instructor)}

    def run_sandboxed(nb, ids, limits, calibration_dir=None, name="", isolation="bwrap"):
        note("submission start")
        time.sleep(0.3)
        cells = [CellRun(i, c["id"], "ok") for i, c in enumerate(nb["cells"]) if c["id"] in ids]
        return SandboxResult(cells=cells, notebook=None, violations=[])

    monkeypatch.setattr(G, "reference_run", reference_run)
    monkeypatch.setattr(G, "run_sandboxed", run_sandboxed)
    monkeypatch.setattr(G, "_probe_entries", lambda *a, **k: ({}, {}))
    subs = tmp_path / "subs"
    subs.mkdir()
    for student in ("amy", "bob", "cy"):
        (subs / f"{student}.ipynb").write_bytes(ASSIGNMENT.read_bytes())
    df = grade(subs, tmp_path / "book.csv", source=ASSIGNMENT, workers=workers,
               trusted_class=True)
    ref_end = next(t for what, t in events if what == "reference end")
    first_sub = min(t for what, t in events if what == "submission start")
    if workers == 1:
        assert first_sub >= ref_end  # one worker: the reference first, as queued
    else:
        assert first_sub < ref_end  # a second worker did not wait for it
    assert sorted(set(df.student)) == ["amy", "bob", "cy"]
    assert (df.points == 0).all() and df.feedback.str.contains("the reference failed here").all()
    assert "failed its own checks" in capsys.readouterr().out
    log = json.loads((tmp_path / "book.log.json").read_text())
    assert set(log["references"]) == {"assignment"}  # the results, not their futures


def test_the_grader_reads_a_flooding_child_only_up_to_its_cap():
    import subprocess

    from efflab.course.sandbox import _pump

    flood = subprocess.Popen(  # 1 MiB lines on both streams, for ever
        [sys.executable, "-c", "import sys\nwhile True:\n    sys.stdout.write('x' * 2**20 + '\\n')"
         "\n    sys.stderr.write('e' * 2**20)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        report, err, note = _pump(flood, b"{}", Limits(), time.monotonic() + 60, None,
                                  cap=8 * 2**20)
    finally:
        flood.kill()
        flood.wait()
    assert "more than 8 MiB to the grader's channel" in note and time.monotonic() - t0 < 30
    assert report.bytes <= 8 * 2**20 + 2**16 and len(err) <= 2**16 and report.cells == []


def _run_as_trusted(cells: list[str], limits: Limits):
    """Code cells (ids c0, c1, ...) run the trusted-class way (a plain process): the run, and
    {cell id: (status, reason)}."""
    from efflab.course.sandbox import run_sandboxed

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    for i, source in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        cell["id"] = f"c{i}"
        nb.cells.append(cell)
    result = run_sandboxed(dict(nb), [], limits, isolation="process")
    return result, {c.cell_id: (c.status, c.reason) for c in result.cells}


def test_notebook_time_limit_stops_the_rest_and_no_process_outlives_the_run():
    import psutil

    cells = ["x = 1",
             "import subprocess, time\n"
             "p = subprocess.Popen(['sleep', '300'], start_new_session=True)  # detached\n"
             "print(p.pid, flush=True)\n"
             "time.sleep(300)",
             "y = 2"]
    # the trusted-class path (a plain process): the driver, a subreaper, kills what is left
    result, status = _run_as_trusted(cells, Limits(cell_s=25, notebook_s=25, probe_s=5))
    assert status["c0"][0] == "ok"
    assert status["c1"] == ("timeout", "notebook time limit (25 s) reached")
    assert status["c2"] == ("not_run", "notebook time limit (25 s) reached")
    assert result.violations == []
    pid = int(result.notebook["cells"][1]["outputs"][0]["text"].split()[0])
    time.sleep(0.5)
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert not alive, "a process the submission started outlived the grading run"


def test_a_cell_that_raises_is_an_error_though_its_traceback_never_shows():
    # IPython prints no error output when it cannot format a traceback (memory exhausted), or
    # when a submission silences it: the kernel's execute reply still says "error"
    cells = ["get_ipython().showtraceback = lambda *a, **k: None",
             "raise ValueError('the answer is wrong')",
             "x = 1"]
    result, status = _run_as_trusted(cells, Limits(cell_s=25, notebook_s=60, probe_s=5))
    assert result.notebook["cells"][1]["outputs"] == []  # nothing shown...
    assert status == {"c0": ("ok", ""), "c1": ("error", "ValueError: the answer is wrong"),
                      "c2": ("ok", "")}  # ...and still an error


def test_a_sandboxed_lesson_prepares_a_corpus_though_the_checkout_is_read_only():
    """On a fresh clone data/cache does not exist yet and the sandbox mounts the checkout
    read-only: a cell preparing a corpus must still run (it raised 'Read-only file system', so
    the instructor's own notebooks graded 0). A one-off max_bytes gives a key nothing cached."""
    import random

    from efflab.course.sandbox import bwrap_problem, run_sandboxed

    if bwrap_problem():
        pytest.skip(f"no bubblewrap sandbox here: {bwrap_problem()}")
    cap = random.randrange(200_000, 400_000)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    cell = nbformat.v4.new_code_cell(
        "from efflab.core.data import DEFAULT_CACHE, prepare_corpus, stdlib_root\n"
        f"c = prepare_corpus(stdlib_root() / 'json', max_bytes={cap})\n"
        "print(c.train.size > 0, DEFAULT_CACHE.exists() and not __import__('os').access(DEFAULT_CACHE, 2))")
    cell["id"] = "corpus"
    nb.cells.append(cell)
    result = run_sandboxed(dict(nb), [], Limits(cell_s=60, notebook_s=90), isolation="bwrap")
    (run,) = result.cells
    assert (run.status, run.reason) == ("ok", ""), run
    assert result.notebook["cells"][0]["outputs"][0]["text"].split()[0] == "True"


def _dead_or_zombie(p) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_grader_kills_a_run_past_its_memory_or_process_limit():
    import subprocess

    from efflab.course.sandbox import _Watch

    hog = subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(200 * 2**20)\n"
                            "x[::4096] = b'1' * len(x[::4096])\nprint(1, flush=True)\ntime.sleep(60)"],
                           stdout=subprocess.PIPE)
    forks = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                              "ps = [subprocess.Popen(['sleep', '60']) for _ in range(12)]\n"
                              "print(1, flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
    try:
        hog.stdout.readline(), forks.stdout.readline()
        small = Limits(memory_bytes=128 * 2**20, processes=8)
        assert "more than 0.125 GiB of memory together" in _Watch(hog, small).over()
        watch = _Watch(forks, small)
        assert "more than 8 processes" in watch.over()
        sleepers = watch.processes()[1:]
        watch.kill()
        assert forks.wait(timeout=10) != 0
        # SIGKILL lands asynchronously: give the killed sleepers (each would sleep 60 s) a
        # moment to die, then none may be left running
        _, alive = psutil.wait_procs(sleepers, timeout=5)
        assert all(_dead_or_zombie(p) for p in alive), alive
        assert _Watch(hog, Limits()).over() == ""
    finally:
        for p in (hog, forks):
            p.kill()
            p.wait()


# make test grades three chart-drawing lessons in one class (each runs twice: the grader's
# reference run and the submission), make test-long every lesson
IN_MAKE_TEST = ("00_tour", "01_batching", "11_serving")


@pytest.mark.parametrize("lessons", [
    pytest.param(IN_MAKE_TEST, marks=pytest.mark.slow, id="three"),
    pytest.param(tuple(p.stem for p in notebooks()), marks=pytest.mark.long, id="all")])
def test_lessons_instructor_versions_grade_to_full_points_under_the_default_limits(
        lessons, tmp_path):
    """Honest work, static charts included (vl-convert's V8), passes the default limits, the
    reference run's agreement and the grader's own probes: each lesson's instructor version,
    handed in as a zip, graded in one class of the lessons with two workers."""
    subs, source = tmp_path / "subs", tmp_path / "source"
    source.mkdir()
    for lesson in lessons:
        work = tmp_path / "work" / lesson
        work.mkdir(parents=True)
        nb_path = work / f"{lesson}.ipynb"
        nb_path.write_bytes((NOTEBOOK_DIR / f"{lesson}.ipynb").read_bytes())
        (source / nb_path.name).write_bytes(nb_path.read_bytes())
        submit(nb_path, out=subs / f"t{lesson[:2]}.zip", student=f"t{lesson[:2]}",
               results=tmp_path / "results", answers=tmp_path / "none.jsonl",
               calibrate_if_missing=False)
    out = tmp_path / "gradebook.csv"
    assert main(["grade", str(subs), "--source", str(source), "--out", str(out),
                 "--workers", "2"]) == 0
    book = pd.read_csv(out)
    assert sorted(set(book["notebook"])) == sorted(lessons)
    assert len(book) >= 2 * len(lessons)
    short = book[book["points"] != book["max_points"]]
    assert short.empty, short[["notebook", "grade_id", "status", "feedback"]].to_string()
    executed = json.loads((tmp_path / "gradebook_executed" / "t00--t00.ipynb").read_text())
    assert any("image/svg+xml" in o.get("data", {}) for c in executed["cells"]
               for o in c.get("outputs", [])), "no static chart was drawn"
    log = json.loads(out.with_suffix(".log.json").read_text())
    assert all(isinstance(ref, list) for refs in log["references"].values() for ref in refs.values())
    probed = [s for s in log["submissions"] if s["probes"].get("entries")]
    assert probed, "no function exercise was probed by the grader"
