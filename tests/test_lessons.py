"""Every lesson in one table: its structure read from the committed file, then the lesson run
headless under papermill with SMOKE = True (in folders of its own) and read back.

What every lesson must do is tested once for all of them (no cell errors, the charts drawn, every
check it calls logged and passing when judged again here, as a grader would); what one lesson
claims is a function in ``CLAIMS``, keyed by the lesson's file stem."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from notebook_support import Executed, cell_text, errors, execute_lesson, images, text

from efflab import check
from efflab.core.store import Store
from efflab.course.report import notebooks
from efflab.ui.predictions import guesses

LESSONS = {p.stem: p for p in notebooks()}
TIMEOUT_S = {"12_compression": 900, "13_scaling_laws": 900}  # the rest: 600 s

# lesson -> (charts it must draw at least, the exercises it must log)
EXPECTED = {
    "00_tour": (2, {"mfu_of", "bits_per_byte_of"}),
    "01_batching": (3, {"saturation", "largest_fitting_batch"}),
    "02_precision": (4, {"bytes_per_param", "bf16_round", "fp8_e4m3_round"}),
    "03_checkpointing": (1, {"kept_activations", "recompute_overhead"}),
    "04_attention": (1, {"online_softmax", "score_bytes"}),
    "05_quantization": (1, {"group_quantize", "decode_bound"}),
    "06_moe": (4, {"route", "balance_loss"}),
    "07_pareto": (2, {"pareto", "request_latency"}),
    "08_inside_a_step": (4, {"matmul_roofline", "which_roof"}),
    "09_fusion": (1, {"gelu_bias_bytes", "chain_bytes"}),
    "10_kv_cache_and_speculation": (5, {"kv_bytes", "break_even_acceptance"}),
    "11_serving": (4, {"policy_meets_ttft", "kv_waste"}),
    "12_compression": (6, {"block_flops_sparsity", "soft_target_loss"}),
    "13_scaling_laws": (4, {"isoflop_vertex", "tokens_per_param"}),
    "14_distributed": (10, {"alpha_beta", "step_time_8", "state_bytes_per_rank",
                            "comm_bytes_per_rank"}),
    "15_model_parallel": (5, {"tp_rank_bytes", "tp_step_comm", "pipeline_bubble", "ring_merge"}),
    "16_finetune_memory": (6, {"lora_trainable", "nf4_quantize", "adam8bit_bytes"}),
}


@dataclass
class Run:
    """An executed lesson with what it wrote: its records and its answer log."""

    executed: Executed
    records: list[dict]
    answers: list[dict]

    @property
    def nb(self):
        return self.executed.nb

    @property
    def cells(self) -> dict:
        return self.executed.cells


@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    """``lesson(stem)``: the lesson executed once for this module, whichever test asks first."""
    runs: dict[str, Run] = {}

    def get(stem: str) -> Run:
        if stem not in runs:
            ex = execute_lesson(LESSONS[stem].name, tmp_path_factory,
                                timeout_s=TIMEOUT_S.get(stem, 600))
            records = Store(ex.results).records() if ex.results.exists() else []
            answers = check.read_answers(ex.answers) if ex.answers.exists() else []
            runs[stem] = Run(ex, records, answers)
        return runs[stem]

    return get


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _checks_called(source: str) -> list[str]:
    return re.findall(r"efflab\.check\.(\w+)\(", source)


# ---- read from the committed files -------------------------------------------------------------


def test_the_table_names_every_lesson_and_lessons_are_numbered_without_gaps():
    assert list(LESSONS) == list(EXPECTED)
    assert [int(n[:2]) for n in LESSONS] == list(range(len(LESSONS)))


@pytest.mark.parametrize("stem", list(LESSONS))
def test_committed_lesson_is_stripped_with_smoke_parameters_and_stable_ids(stem):
    cells = json.loads(LESSONS[stem].read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged and "SMOKE = False" in "".join(tagged[0]["source"])
    assert not any(c.get("outputs") or c.get("execution_count")
                   for c in cells if c["cell_type"] == "code")
    ids = [c.get("id") for c in cells]
    assert all(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("stem", list(LESSONS))
def test_lesson_has_checked_exercises_recorded_predictions_and_nbgrader_cells(stem):
    cells = json.loads(LESSONS[stem].read_text())["cells"]
    src = ["".join(c["source"]) for c in cells]
    answers = [i for i, c in enumerate(cells) if _nbgrader(c).get("solution")]
    assert len(answers) >= 2, f"{stem}: {len(answers)} exercises"
    for i in answers:  # a solution between the markers, then its check cell
        assert "### BEGIN SOLUTION" in src[i] and "### END SOLUTION" in src[i], cells[i]["id"]
        later = [j for j in range(i + 1, len(cells)) if _nbgrader(cells[j]).get("grade")]
        assert later and _checks_called(src[later[0]]), f"no check after {cells[i]['id']}"
    grades = [c for c in cells if _nbgrader(c)]
    assert len({_nbgrader(c)["grade_id"] for c in grades}) == len(grades)  # unique grade ids
    called = set()
    for c, s in zip(cells, src):
        meta = _nbgrader(c)
        if meta.get("grade"):
            assert meta["locked"] and not meta["solution"] and meta["points"] > 0
            for name in _checks_called(s):
                assert name in check.REGISTRY, name
                called.add(name)
        if "### BEGIN HIDDEN TESTS" in s:
            assert meta.get("grade") and "### END HIDDEN TESTS" in s
    assert EXPECTED[stem][1] <= called
    # every "Predict first" prompt records a guess, and every guess is compared afterwards
    prompts = sum(s.count("**Predict first.**") for c, s in zip(cells, src)
                  if c["cell_type"] == "markdown")
    predicted = [n for s in src for n in re.findall(r"efflab\.predict\(f?\"([^\"]+)\"", s)]
    assert len(predicted) >= prompts, f"{stem}: {prompts} prompts, {len(predicted)} guesses"
    compared = "\n".join(s for s in src if "compare_prediction" in s)
    for name in predicted:
        assert name in compared, f"{stem}: the guess {name!r} is never compared"


# ---- what every executed lesson shows ---------------------------------------------------------


@pytest.mark.parametrize("stem", list(LESSONS))
def test_lesson_runs_without_errors_and_draws(lesson, stem):
    run = lesson(stem)
    found = errors(run.nb)
    assert not found, found[0]
    assert images(run.nb) >= EXPECTED[stem][0]


@pytest.mark.parametrize("stem", list(LESSONS))
def test_every_check_of_an_executed_lesson_passes_when_judged_again(lesson, stem):
    run = lesson(stem)
    called = {n for c in run.nb.cells if c.cell_type == "code" for n in _checks_called(c.source)}
    logged = {e["exercise"] for e in run.answers}
    assert called and called <= logged, f"checks that never logged: {called - logged}"
    assert EXPECTED[stem][1] <= logged
    for entry in run.answers:  # judged again here, in this process, as a grader does
        fb = check.judge(entry["exercise"], entry["evidence"])
        assert fb.passed, str(fb)
    for cell in run.nb.cells:  # and the check cells said so to the learner
        if _nbgrader(cell).get("grade") and _checks_called(cell.source):
            assert "✗" not in text(cell), cell.get("id")
    if run.executed.results.exists():
        assert isinstance(guesses(Store(run.executed.results)), dict)


# ---- what each lesson claims, on its own outputs ----------------------------------------------


def _ok(records, **knobs):
    return [r for r in records if r["status"] == "ok"
            and all(r["knobs"].get(k) == v for k, v in knobs.items())]


def claims_00_tour(run: Run):
    ok = [r for r in run.records if r["status"] == "ok"]
    assert {r["workload"] for r in ok} == {"train"}
    assert {r["knobs"]["batch_size"] for r in ok} >= {1, 2, 4}  # the single point + the lab sweep
    # the learner's MFU function agrees with the MFU efflab.measure computed for the same step
    assert "(the same)" in cell_text(run.nb, "ex00-mfu-use")


def claims_01_batching(run: Run):
    records = run.records
    by = {(r["workload"], r["knobs"]["batch_size"], r["status"]) for r in records}
    assert {("train", 1, "ok"), ("train", 4, "ok"), ("decode", 1, "ok"), ("decode", 8, "ok")} <= by
    refused = [r for r in records if r["status"] == "refused"]
    assert refused and "budget" in refused[0]["message"]
    train = sorted((r for r in records if r["workload"] == "train" and r["status"] == "ok"
                    and r.get("budget_bytes") is None), key=lambda r: r["knobs"]["batch_size"])
    # memory grows with the batch: the lesson's claim, checked on its own records
    assert train[-1]["memory"]["peak_bytes"] > train[0]["memory"]["peak_bytes"]


def claims_02_precision(run: Run):
    assert _ok(run.records, precision="fp32")
    for r in run.records:
        assert r["status"] in ("ok", "refused"), r.get("message")
        if r["status"] == "refused":
            assert "GFLOP/s" in r["message"]
    takeaways = text(run.cells["l02-takeaways"], markdown=True)  # computed, with their numbers
    assert re.search(r"bf16: training loss at most [\d.]+ nats from fp32's", takeaways), takeaways
    small = {r["knobs"]["precision"]: r for r in run.records
             if r["preset"] == "cpu-tiny" and r["status"] == "ok"}
    if "bf16-pure" in small:  # weights stored in 2 bytes instead of 4
        assert (small["bf16-pure"]["memory"]["by_category"]["parameters"] * 2
                == small["fp32"]["memory"]["by_category"]["parameters"])


def claims_03_checkpointing(run: Run):
    sweep = {r["knobs"]["checkpointing"]: r for r in run.records if r["status"] == "ok"
             and r["budget_bytes"] is None and r["knobs"].get("checkpointing_every", 1) == 1}
    assert set(sweep) == {"none", "selective", "blocks"}
    assert (sweep["blocks"]["memory"]["peak_bytes"] < sweep["selective"]["memory"]["peak_bytes"]
            < sweep["none"]["memory"]["peak_bytes"])
    # every 2nd block: activations between every block's and none's, as the lesson's verdict says
    every2 = [r for r in run.records if r["status"] == "ok" and r["knobs"].get("checkpointing_every") == 2]
    acts = {m: r["memory"]["by_category"]["activations"] for m, r in sweep.items()}
    assert len(every2) == 1
    assert acts["blocks"] < every2[0]["memory"]["by_category"]["activations"] < acts["none"]
    assert "between" in cell_text(run.nb, "ex03-every-k")
    budgeted = [r for r in run.records if r["budget_bytes"] is not None]
    assert {r["status"] for r in budgeted} == {"ok", "refused"}  # fits with it, refused without


def claims_04_attention(run: Run):
    assert {r["knobs"]["attention"] for r in _ok(run.records)} == {"naive", "sdpa"}


def claims_05_quantization(run: Run):
    dec = {r["knobs"]["quantization"]: r for r in _ok(run.records, workload="decode")
           if r["preset"] == "cpu-small"}
    assert set(dec) >= {"none", "int8-weight", "int4-weight"}
    w = {q: r["memory"]["by_category"]["parameters"] for q, r in dec.items()}
    assert w["int4-weight"] < w["int8-weight"] < 0.4 * w["none"]
    ev = {r["knobs"]["quantization"]: r["quality"]["bits_per_byte"]
          for r in _ok(run.records, workload="eval")}
    assert ev["int8-weight"] == pytest.approx(ev["none"], rel=0.01)
    # int8-dynamic is in the speed sweep, and the results are verdicts with their numbers
    assert "int8-dynamic" in dec
    speed = text(run.cells["l05-speed-verdict"], markdown=True)
    assert re.search(r"int8-dynamic runs at [\d.]+× fp32's speed", speed), speed
    takeaways = text(run.cells["l05-takeaways"], markdown=True)
    assert re.search(r"int8-weight: [+-][\d.]+ bits/byte against fp32", takeaways), takeaways


def claims_06_moe(run: Run):
    # besides the four charts (live curves, load histogram, loss per FLOP and per s): top-1 and
    # top-2 each set against dense, and the collapse verdict, computed from the run's own counts
    gaps = cell_text(run.nb, "f6fb6e24")
    for k in (1, 2):
        assert re.search(rf"top-{k}: last held-out loss [\d.]+ against dense", gaps), gaps
    assert re.search(r"routing (more|not more) concentrated", cell_text(run.nb, "649c0815"))


def claims_07_pareto(run: Run):
    assert _ok(run.records, workload="decode") and _ok(run.records, workload="train")
    verdict = text(run.cells["l07-quant-verdict"], markdown=True)
    assert re.search(r"int8-weight against none, batch 1, this run:\*\* quality [+-][\d.]+%", verdict)
    assert re.search(r"latency [\d.]+×", verdict), verdict


def _png(run: Run, cell_id: str) -> bool:
    return any("image/png" in o.get("data", {}) for o in run.cells[cell_id].get("outputs", []))


def claims_08_inside_a_step(run: Run):
    for cell_id in ("c08-profile", "c08-roofline", "c08-decode", "c08-timeline"):
        assert _png(run, cell_id), cell_id
    traces = list((run.executed.results / "traces").glob("*.json"))
    assert traces and "traceEvents" in json.loads(traces[0].read_text())
    # parameters and optimizer state predicted exactly at every batch size
    table = cell_text(run.nb, "c08-mem-batches")
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()]
    assert rows and all(r[2] == "1.0" and r[3] == "1.0" for r in rows), table
    assert all(0.85 <= float(r[1]) <= 1.15 for r in rows), table  # activations within 15%


def claims_09_fusion(run: Run):
    out = cell_text(run.nb, "c09-kernels-check")
    diffs = [float(w.rstrip(",")) for w in out.replace("=", " ").split() if "e-" in w or "e+" in w]
    assert diffs and max(diffs) < 1e-4, out
    assert re.search(r"interpreted \(correctness only\): (True|False)",
                     cell_text(run.nb, "c09-kernel-bytes"))
    sweep = cell_text(run.nb, "c09-compile-sweep")
    assert "source:" in sweep
    assert ("stored:" in sweep and " measured " in sweep) or ("no stored benchmark" in sweep)


def claims_10_kv_cache_and_speculation(run: Run):
    assert "greedy speculative output == greedy target output" in cell_text(run.nb, "l10-draft")
    verdict = cell_text(run.nb, "l10-verdict")
    assert "speculation pays" in verdict or "does not reach 1.5x" in verdict
    assert "p = " in cell_text(run.nb, "l10-sampling")


def claims_11_serving(run: Run):
    assert "refused:" in cell_text(run.nb, "l11-refuse")
    assert "request 0" in cell_text(run.nb, "l11-demo")


def claims_12_compression(run: Run):
    cells = run.cells
    assert images(cells["c12-sweep"]) >= 2          # quality and speed vs sparsity
    assert images(cells["c12-distill"]) >= 2        # live curves + the prediction chart
    assert images(cells["c12-frontier"]) == 2       # the frontier on both costs
    assert "compute capability" in text(cells["c12-refusal"], markdown=True)
    verdicts = text(cells["c12-frontier"], markdown=True)
    assert verdicts.count("98%") >= 2 and ("reached" in verdicts or "No candidate" in verdicts)
    table = text(cells["c12-sweep"], markdown=True)
    for method in ("dense", "unstructured-global", "unstructured-layer", "2:4", "structured"):
        assert method in table


def claims_13_scaling_laws(run: Run):
    from efflab.studies.scaling import load_shipped, runs_frame

    for cell_id in ("c13-rerun", "c13-fit", "c13-law", "c13-check-train"):
        assert images(run.cells[cell_id]) >= 1, cell_id
    rerun = runs_frame(Store(Path(run.executed.results) / "scaling.sqlite").records())
    shipped = load_shipped().set_index(["budget", "name"])["val_loss"]
    assert len(rerun) >= 3
    for r in rerun.itertuples():
        if (r.budget, r.name) in shipped.index:  # same recipe and seed: the same loss to rounding
            assert abs(r.val_loss - shipped[(r.budget, r.name)]) < 0.02, r.name
    # the learner's tokens per parameter, applied to the fit, states its verdict beside Chinchilla's
    ratio = cell_text(run.nb, "c13-ex1-apply")
    assert "tokens per parameter" in ratio and "Chinchilla's ~20" in ratio


def claims_14_distributed(run: Run):
    kinds = {(r["kind"], r["world_size"], r["rank"]) for r in run.records if r["status"] == "ok"}
    assert {("allreduce", 2, 0), ("allreduce", 2, 1), ("ddp", 1, 0), ("ddp", 2, 0), ("ddp", 2, 1),
            ("sharding", 2, 0), ("sharding", 2, 1)} <= kinds
    assert all(r.get("loadavg") for r in run.records)  # the shared host's load, with every record
    gaps = [float(line.rsplit(":", 1)[1]) for line in cell_text(run.nb, "c14-loss").splitlines()
            if "largest loss difference" in line]
    assert gaps and max(gaps) <= 1e-4
    zero = cell_text(run.nb, "c14-zero-compare")
    assert "= unsharded" in zero and ": True" in zero and ": False" not in zero
    refuse = cell_text(run.nb, "c14-refuse")
    assert "refused:" in refuse and "scheduler" in refuse
    assert {e["exercise"] for e in run.answers} == EXPECTED["14_distributed"][1]
    assert cell_text(run.nb, "c14-ex3-use").count("MiB per rank") == 4
    volume = cell_text(run.nb, "c14-volume")  # DDP and ZeRO-2 send the paper's bytes, measured
    assert re.search(r"DDP: sends [\d,]+ bytes .* they agree", volume)
    assert re.search(r"ZeRO-2: sends [\d,]+ bytes .* they agree", volume)
    assert "ZeroRedundancyOptimizer" in volume and "FSDP gathered" in volume
    z2 = cell_text(run.nb, "c14-zero2")  # torch's ZeRO-2: sharded at rest, gathered through backward
    assert "0.50×4P at rest" in z2 and "1.50×4P between forward and backward" in z2
    end = cell_text(run.nb, "c14-takeaway-run")
    assert "ZeRO-2 sent 1.00× DDP's bytes" in end and "FSDP 1.41×" in end
    assert cell_text(run.nb, "c14-ex4-use").count("(1.00x yours)") == 2  # DDP and ZeRO-2


def claims_15_model_parallel(run: Run):
    kinds = {(r["kind"], r["rank"]) for r in run.records if r["status"] == "ok"}
    assert {(k, r) for k in ("tp", "pp", "ring") for r in (0, 1)} <= kinds
    equal = cell_text(run.nb, "c15-equal")
    assert equal.count("within 1e-5: True") == 2 and "False" not in equal
    for cell in ("c15-tp", "c15-ex1-apply", "c15-ex2-apply"):
        said = cell_text(run.nb, cell)
        assert "True" in said and "False" not in said, cell
    assert "every stage and schedule: True" in cell_text(run.nb, "c15-activations")
    assert "of (p − 1)/(m + p − 1)" in cell_text(run.nb, "c15-bubble")
    refuse = cell_text(run.nb, "c15-refuse")
    assert "refused:" in refuse and "scheduler" in refuse
    logged = [e["exercise"] for e in run.answers]
    assert sorted(logged) == sorted(2 * list(EXPECTED["15_model_parallel"][1]))  # + hidden checks


def claims_16_finetune_memory(run: Run):
    share = cell_text(run.nb, "c16-apply")
    measured, theory = re.search(r"measured ([\d.]+) %, theory ([\d.]+) %", share).groups()
    assert measured == theory
    assert "(within 10%)" in cell_text(run.nb, "c16-mem")
    assert "exactly the formula's bytes" in cell_text(run.nb, "c16-levels")
    opt = cell_text(run.nb, "c16-opt")
    assert float(re.search(r"8-bit: ([\d.]+)x fp32", opt).group(1)) <= 0.27
    assert float(re.search(r"4-bit: ([\d.]+)x fp32", opt).group(1)) <= 0.15
    assert "(within 1e-6)" in cell_text(run.nb, "c16-acc")
    assert cell_text(run.nb, "c16-ft").count("paired, same windows") >= 4
    merge = cell_text(run.nb, "c16-merge")
    assert merge.count("within 1e-6: True") == 2 and "adapters left: 0" in merge
    assert sorted(e["exercise"] for e in run.answers) == sorted(
        ["lora_trainable", "adam8bit_bytes", "nf4_quantize", "nf4_quantize"])  # + hidden check


CLAIMS = {name[len("claims_"):]: fn for name, fn in dict(globals()).items()
          if name.startswith("claims_")}


def test_every_lesson_has_its_claims():
    assert set(CLAIMS) == set(LESSONS)


@pytest.mark.parametrize("stem", list(LESSONS))
def test_lesson_claims_hold_on_its_own_outputs(lesson, stem):
    CLAIMS[stem](lesson(stem))
