"""Lesson 14's charts: theory beside measurement, spread on every measured point, and a plain
placeholder (never an error) before any data arrives. Specs only: nothing is rendered."""

import json

import pandas as pd

from efflab.systems.distributed import AlphaBeta, fit_line
from efflab.ui.charts import distributed as dviz


def _marks(chart) -> list[str]:
    spec = chart.to_dict()
    return [m if isinstance(m, str) else m["type"]
            for m in (layer.get("mark") for layer in spec.get("layer", [spec]))]


def _allreduce_frame():
    n = [4, 64, 1024, 16384, 262144]
    t = [0.5 + b / 4e5 for b in n]
    return pd.DataFrame({"world_size": 2, "bytes": n, "median_ms": t, "p25_ms": [x * 0.9 for x in t],
                         "p75_ms": [x * 1.3 for x in t], "n": 9})


def test_allreduce_chart_draws_fit_spread_and_held_out_points():
    f = _allreduce_frame()
    chart = dviz.allreduce_chart(f, fit_line(AlphaBeta(5e-4, 4e8), 4, 262144), [64, 16384])
    assert _marks(chart) == ["line", "rule", "tick", "point"]
    spec = json.dumps(chart.to_dict())
    assert "held out (test)" in spec and "p75_ms" in spec


def test_step_time_chart_puts_the_prediction_beside_the_measurement():
    f = pd.DataFrame([
        {"world_size": 2, "bucket_cap_mb": 25.0, "n_buckets": 1, "step_ms": 80.0, "step_p25_ms": 75.0,
         "step_p75_ms": 90.0, "n": 5, "compute_ms": 70.0, "compute_p25_ms": 68.0,
         "compute_p75_ms": 72.0, "pred_ms": 78.0, "comm_pred_ms": 8.0, "pred_error": -0.025},
        {"world_size": 1, "bucket_cap_mb": 25.0, "n_buckets": 1, "step_ms": 150.0,
         "step_p25_ms": 140.0, "step_p75_ms": 160.0, "n": 5, "compute_ms": 150.0,
         "compute_p25_ms": 140.0, "compute_p75_ms": 160.0, "pred_ms": None, "comm_pred_ms": None,
         "pred_error": None}])
    chart = dviz.step_time_chart(f)
    assert _marks(chart) == ["bar", "rule", "tick"]
    # one process has no "compute only" bar: alone, a step is all compute
    bars = chart.to_dict()["datasets"]
    rows = [r for d in bars.values() for r in d if "what" in r]
    assert sum(r["what"].startswith("compute") for r in rows) == 1


def test_memory_chart_stacks_categories_with_the_formula_tick():
    f = pd.DataFrame([{"sharding": s, "rank": r, "world_size": 2, "category": c,
                       "measured_bytes": 100, "formula_bytes": 100, "n_params": 25}
                      for s in ("none", "zero1") for r in (0, 1)
                      for c in ("parameters", "gradients", "optimizer")])
    assert _marks(dviz.memory_chart(f)) == ["bar", "tick"]


def _sharding_records():
    """Two ranks' sharding records as the worker writes them, for P = 1000 parameters."""
    from efflab.systems.distributed.volume import paper_volume, summarise
    from efflab.systems.distributed.zero import memory_per_rank

    P, psi = 1000, 4000
    steps = {"none": [("all_reduce", psi)], "zero1": [("all_reduce", psi), ("broadcast", psi)],
             "zero2": [("all_gather", psi), ("reduce_scatter", psi)],
             "fsdp": [("all_gather", psi), ("all_gather", 0.8 * psi), ("reduce_scatter", psi)]}
    held = {"parameters": psi, "gradients": psi, "optimizer": 2 * psi, "total": 4 * psi}
    recs = []
    for rank in (0, 1):
        rows = []
        for s, calls in steps.items():
            coll = [{"op": k, "kind": k, "bytes": b} for k, b in calls]
            rows.append({"sharding": s, "rank": rank, "world_size": 2, "status": "ok",
                         "n_params": P, "collectives": coll, "comm": summarise(coll, 2),
                         "paper_sent_bytes": paper_volume(P, 2, s),
                         "formula": memory_per_rank(P, 2, s),
                         "phases": {ph: held for ph in ("after_forward", "backward_peak",
                                                        "after_step")}})
        recs.append({"kind": "sharding", "status": "ok", "rank": rank,
                     "result": {"shardings": rows}})
    return recs


def test_volume_chart_stacks_collectives_with_the_papers_tick():
    from efflab.studies.distributed import volume_table

    t = volume_table(_sharding_records(), AlphaBeta(5e-4, 4e8))
    chart = dviz.volume_chart(t)
    assert _marks(chart) == ["bar", "tick"]
    rows = [r for d in chart.to_dict()["datasets"].values() for r in d if "kind" in r]
    # DDP: one all-reduce; ZeRO-2: a reduce-scatter and an all-gather of the same size
    assert {r["kind"] for r in rows if r["layout"] == "DDP"} == {"all_reduce"}
    z2 = {r["kind"]: r["psi"] for r in rows if r["layout"] == "ZeRO-2"}
    assert z2["reduce_scatter"] == z2["all_gather"] == 0.5


def test_phase_memory_chart_has_three_phases_per_layout():
    from efflab.studies.distributed import phase_table

    chart = dviz.phase_memory_chart(phase_table(_sharding_records()))
    assert _marks(chart) == ["bar", "tick"]
    rows = [r for d in chart.to_dict()["datasets"].values() for r in d if "phase" in r]
    assert {(r["layout"], r["phase"]) for r in rows} >= {("ZeRO-2", "backward_peak"),
                                                       ("FSDP", "after_step")}


def test_empty_tables_give_placeholders():
    for build in (dviz.allreduce_chart, dviz.step_time_chart, dviz.memory_chart,
                  dviz.loss_curves_chart, dviz.volume_chart, dviz.phase_memory_chart):
        spec = json.dumps(build(pd.DataFrame()).to_dict())
        assert "yet" in spec


def _bubble_summary():
    return pd.DataFrame([{"schedule": s, "m": m, "idle": 0.55 / m ** 0.9, "idle_p25": 0.5 / m,
                          "idle_p75": 0.6 / m ** 0.8, "formula": 1 / (m + 1)}
                         for s in ("gpipe", "1f1b") for m in (1, 2, 4, 8)])


def test_bubble_chart_sets_the_measured_idle_share_beside_the_formula():
    chart = dviz.bubble_chart(_bubble_summary())
    spec = chart.to_dict()
    assert _marks(chart) == ["line", "rule", "point"]
    line, rule, point = spec["layer"]
    assert line["encoding"]["y"]["field"] == "formula"
    assert (rule["encoding"]["y"]["field"], rule["encoding"]["y2"]["field"]) == ("idle_p25", "idle_p75")
    assert point["encoding"]["y"]["field"] == "idle" and point["encoding"]["color"]["field"] == "schedule"
    assert point["encoding"]["x"]["scale"] == {"type": "log", "base": 2}
    with_sim = dviz.bubble_chart(_bubble_summary().assign(stage_sim=lambda d: d.formula * 1.1))
    assert _marks(with_sim) == ["line", "rule", "point", "point"]
    diamond = with_sim.to_dict()["layer"][3]
    assert diamond["mark"]["shape"] == "diamond" and diamond["encoding"]["y"]["field"] == "stage_sim"


def test_timeline_chart_has_a_bar_per_span_a_row_per_stage_and_a_panel_per_source():
    from efflab.studies.model_parallel import timeline_frame
    spans = [["F", 0, 0.0, 0.001], ["B", 0, 0.002, 0.004]]
    recs = [{"kind": "pp", "status": "ok", "rank": r, "world_size": 2,
             "knobs": {"schedule": "1f1b", "micro_batches": 1},
             "result": {"steps": [{"window_s": [0.0, 0.005], "spans": spans}]}} for r in (0, 1)]
    frame = timeline_frame(recs, "1f1b", 1)
    assert set(frame.source) == {"measured", "ideal"}
    spec = dviz.timeline_chart(frame).to_dict()
    assert spec["mark"]["type"] == "bar"
    enc = spec["encoding"]
    assert (enc["x"]["field"], enc["x2"]["field"], enc["y"]["field"]) == ("start_ms", "end_ms", "stage")
    assert enc["row"]["field"] == "source" and enc["color"]["field"] == "action"


def test_lesson_15_charts_give_placeholders_before_data():
    for chart in (dviz.bubble_chart(pd.DataFrame()), dviz.timeline_chart(pd.DataFrame())):
        assert _marks(chart) == ["text"]
