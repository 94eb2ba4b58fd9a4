"""Every lesson notebook runs headless under papermill with SMOKE = True, and writes real records."""

import json
import re

import nbformat
import pytest
from notebook_support import errors as _errors
from notebook_support import images as _images

from efflab import check
from efflab.core.store import Store
from efflab.course.report import notebooks, run_notebook
from efflab.ui.predictions import guesses

LESSONS = 8  # 00-07: the lessons this file executes; later ones have a test file each




def test_every_notebook_has_smoke_parameters_and_no_outputs():
    found = notebooks()
    names = [p.name for p in found]
    assert names[:8] == [
        "00_tour.ipynb", "01_batching.ipynb", "02_precision.ipynb", "03_checkpointing.ipynb",
        "04_attention.ipynb", "05_quantization.ipynb", "06_moe.ipynb", "07_pareto.ipynb"]
    # lessons are numbered without gaps: 00, 01, 02, ...
    assert [int(n[:2]) for n in names] == list(range(len(names))), names
    for path in found:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert tagged and "SMOKE = False" in "".join(tagged[0]["source"]), path.name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


def _checks_called(source: str) -> list[str]:
    return re.findall(r"efflab\.check\.(\w+)\(", source)


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


@pytest.mark.parametrize("path", notebooks()[:LESSONS], ids=lambda p: p.stem)
def test_lesson_has_checked_exercises_recorded_predictions_and_nbgrader_cells(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(c.get("id") for c in cells) and len({c["id"] for c in cells}) == len(cells)
    src = ["".join(c["source"]) for c in cells]
    answers = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution")]
    assert len(answers) >= 2, f"{path.name}: {len(answers)} exercises"
    for i in answers:  # a solution between the markers, then its check cell
        assert "### BEGIN SOLUTION" in src[i] and "### END SOLUTION" in src[i], cells[i]["id"]
        later = [j for j in range(i + 1, len(cells)) if _nbgrader(cells[j]).get("grade")]
        assert later and _checks_called(src[later[0]]), f"no check after {cells[i]['id']}"
    grades = [c for c in cells if _nbgrader(c)]
    assert len({_nbgrader(c)["grade_id"] for c in grades}) == len(grades)  # unique grade ids
    for c, s in zip(cells, src):
        meta = _nbgrader(c)
        if meta.get("grade"):
            assert meta["locked"] and not meta["solution"] and meta["points"] > 0
            for name in _checks_called(s):
                assert name in check.REGISTRY, name
        if "### BEGIN HIDDEN TESTS" in s:
            assert meta.get("grade") and "### END HIDDEN TESTS" in s
    # every "Predict first" prompt records a guess, and every guess is compared afterwards
    prompts = sum(s.count("**Predict first.**") for c, s in zip(cells, src)
                  if c["cell_type"] == "markdown")
    predicted = [n for s in src for n in re.findall(r"efflab\.predict\(f?\"([^\"]+)\"", s)]
    assert len(predicted) >= prompts, f"{path.name}: {prompts} prompts, {len(predicted)} guesses"
    compared = "\n".join(s for s in src if "compare_prediction" in s)
    for name in predicted:
        assert name in compared, f"{path.name}: the guess {name!r} is never compared"


class _Run(tuple):
    """(executed notebook, records), with the answer log and the guesses alongside."""


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run each notebook once, each with its own results store."""
    out = {}
    for path in notebooks()[:LESSONS]:  # later lessons have a test file each
        store = tmp_path_factory.mktemp(path.stem + "-results")
        nb_path = run_notebook(path, tmp_path_factory.mktemp("executed"), {"SMOKE": True},
                               timeout_s=600, results_dir=store)
        run = _Run((nbformat.read(str(nb_path), as_version=4), Store(store).records()))
        run.answers = check.read_answers(nb_path.parent / f"{path.stem}.answers.jsonl")
        run.store = store
        out[path.stem] = run
    return out


@pytest.mark.parametrize("stem", [p.stem for p in notebooks()[:LESSONS]])
def test_every_check_in_an_executed_lesson_passes_when_regraded(executed, stem):
    run = executed[stem]
    called = {n for c in run[0].cells if c.cell_type == "code" for n in _checks_called(c.source)}
    logged = {e["exercise"] for e in run.answers}
    assert called and called <= logged, f"checks that never logged: {called - logged}"
    for entry in run.answers:  # judged again here, in this process, as a grader does
        fb = check.judge(entry["exercise"], entry["evidence"])
        assert fb.passed, str(fb)
    assert isinstance(guesses(Store(run.store)), dict)  # the store holds a predictions table


def test_tour_runs_and_records_a_measurement(executed):
    nb, records = executed["00_tour"]
    assert not _errors(nb)
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["workload"] for r in ok} == {"train"}
    assert {r["knobs"]["batch_size"] for r in ok} >= {1, 2, 4}  # the single point + the lab sweep
    assert _images(nb) >= 2  # the training curve and the lab's static chart


def test_batching_runs_and_records_the_sweeps_and_the_refusal(executed):
    nb, records = executed["01_batching"]
    assert not _errors(nb)
    by = {(r["workload"], r["knobs"]["batch_size"], r["status"]) for r in records}
    assert {("train", 1, "ok"), ("train", 4, "ok"), ("decode", 1, "ok"), ("decode", 8, "ok")} <= by
    refused = [r for r in records if r["status"] == "refused"]
    assert refused and "budget" in refused[0]["message"]
    train = sorted((r for r in records if r["workload"] == "train" and r["status"] == "ok"
                    and r.get("budget_bytes") is None), key=lambda r: r["knobs"]["batch_size"])
    # memory grows with the batch: the lesson's claim, checked on its own records
    assert train[-1]["memory"]["peak_bytes"] > train[0]["memory"]["peak_bytes"]
    assert _images(nb) >= 3


def _ok(records, **knobs):
    return [r for r in records if r["status"] == "ok"
            and all(r["knobs"].get(k) == v for k, v in knobs.items())]


def test_precision_measures_fp32_and_refuses_only_with_a_measured_reason(executed):
    nb, records = executed["02_precision"]
    assert not _errors(nb)
    assert _ok(records, precision="fp32")
    for r in records:
        assert r["status"] in ("ok", "refused"), r.get("message")
        if r["status"] == "refused":
            assert "GFLOP/s" in r["message"]
    small = {r["knobs"]["precision"]: r for r in records
             if r["preset"] == "cpu-tiny" and r["status"] == "ok"}
    if "bf16-pure" in small:  # weights stored in 2 bytes instead of 4
        assert (small["bf16-pure"]["memory"]["by_category"]["parameters"] * 2
                == small["fp32"]["memory"]["by_category"]["parameters"])
    assert _images(nb) >= 3


def test_checkpointing_lowers_the_peak(executed):
    nb, records = executed["03_checkpointing"]
    assert not _errors(nb)
    sweep = {r["knobs"]["checkpointing"]: r for r in records
             if r["status"] == "ok" and r["budget_bytes"] is None}
    assert set(sweep) == {"none", "selective", "blocks"}
    assert (sweep["blocks"]["memory"]["peak_bytes"] < sweep["selective"]["memory"]["peak_bytes"]
            < sweep["none"]["memory"]["peak_bytes"])
    budgeted = [r for r in records if r["budget_bytes"] is not None]
    assert {r["status"] for r in budgeted} == {"ok", "refused"}  # fits with it, refused without


def test_attention_notebook_runs(executed):
    nb, records = executed["04_attention"]
    assert not _errors(nb)
    assert {r["knobs"]["attention"] for r in _ok(records)} == {"naive", "sdpa"}
    assert _images(nb) >= 1


def test_quantization_shrinks_the_weights(executed):
    nb, records = executed["05_quantization"]
    assert not _errors(nb)
    dec = {r["knobs"]["quantization"]: r for r in _ok(records, workload="decode")
           if r["preset"] == "cpu-small"}
    assert set(dec) >= {"none", "int8-weight", "int4-weight"}
    w = {q: r["memory"]["by_category"]["parameters"] for q, r in dec.items()}
    assert w["int4-weight"] < w["int8-weight"] < 0.4 * w["none"]
    ev = {r["knobs"]["quantization"]: r["quality"]["bits_per_byte"]
          for r in _ok(records, workload="eval")}
    assert ev["int8-weight"] == pytest.approx(ev["none"], rel=0.01)


def test_moe_notebook_trains_and_draws_the_load(executed):
    nb, _ = executed["06_moe"]
    assert not _errors(nb)
    assert _images(nb) >= 4  # live curves, load histogram, loss per FLOP, loss per second


def test_pareto_notebook_finds_a_frontier(executed):
    nb, records = executed["07_pareto"]
    assert not _errors(nb)
    assert _ok(records, workload="decode") and _ok(records, workload="train")
    assert _images(nb) >= 2
