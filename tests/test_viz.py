"""Charts and live charts, on hand-built records: fast, and no torch needed by what is tested.

The properties checked are the ones a wrong chart would break: one measured point per ok
record, theory values equal to the input column, ordered error bars, failures drawn as failures
(not as measurements), stacked memory summing to the measured peak, and rendering offline.
"""

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import pytest
from record_factory import fake_record

from efflab.ui.charts import charts
from efflab.ui.charts.charts import (
    MIB,
    dashboard,
    latency_chart,
    memory_chart,
    quality_chart,
    records_frame,
    throughput_chart,
    to_html,
    to_png,
    to_svg,
    training_curve_chart,
)
from efflab.ui.charts.live import LiveChart, static_mode

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- synthetic records

def ok_record(b, workload="train", preset="cpu-small", budget=None, T=128):
    """A plausible "ok" record of the shape ``efflab.measure`` returns (numbers made up)."""
    tokens = b if workload == "decode" else b * T
    lat = (6.0 + 3.1 * b) if workload == "train" else (2.0 + 1.1 * b)
    cats = {"parameters": 3_400_000, "gradients": 3_400_000 if workload == "train" else 0,
            "optimizer": 6_800_000 if workload == "train" else 0, "activations": 1_300_000 * b,
            "kv_cache": 0 if workload == "train" else 40_000 * b, "other": 150_000 + 20_000 * b}
    peak = sum(cats.values())
    bound = min(tokens / (1.2e-3 + 0.0002 * b), 60_000.0)
    return {
        **fake_record("ok", preset=preset, workload=workload,
                      knobs={"batch_size": b, "seq_len": None, "workload": workload, "seed": 0,
                             "threads": None, "gen_tokens": 32}),
        "budget_bytes": budget, "key": f"{preset}-{workload}-{b}",
        "model": {"preset": preset, "n_params": 850_000, "weights": "random-init",
                  "device": "cpu", "dtype": "float32"},
        "latency_ms": {"median": lat, "p25": lat * 0.95, "p75": lat * 1.08, "min": lat * 0.9,
                       "max": lat * 1.3, "n": 8 + b, "unit": "token" if workload == "decode" else "step"},
        "throughput": {"tokens_per_s": tokens / (lat / 1e3), "tokens_per_step": tokens,
                       "steps_per_s": 1e3 / lat},
        "memory": {"peak_bytes": peak, "by_category": cats, "end_bytes": 10_000_000},
        "flops": {"per_step": 5.1e6 * tokens, "counted": 4.6e6 * tokens,
                  "attention_added": 0.5e6 * tokens, "attention_source": "formula",
                  "estimate_6n": 5.1e6 * tokens, "achieved_per_s": 5.1e6 * tokens / (lat / 1e3),
                  "peak_per_s": 5e10, "mfu": 5.1e6 * tokens / (lat / 1e3) / 5e10},
        "quality": {"val_loss": 1.4, "bits_per_byte": 1.4 / math.log(2)},
        "energy": {"joules": None, "source": "unavailable"},
        "theory": {"memory": {"peak_bytes": int(peak * 0.97), "by_category": cats},
                   "roofline": {"step_ms_lower_bound": tokens / bound * 1e3,
                                "tokens_per_s_upper_bound": bound, "arithmetic_intensity": 9.0,
                                "machine_balance": 2.3, "bound": "compute" if b > 2 else "memory",
                                "bytes_per_step": 7_000_000}},
        "env": {"cpu": "synthetic"},
    }


def failed_record(b, status="refused", workload="train", preset="cpu-small", budget=None,
                  message="predicted peak 60.0 MiB exceeds the budget of 48.0 MiB; not run"):
    """A failed record: only what ``measure`` keeps when it refuses or fails."""
    return {**fake_record(status, preset=preset, workload=workload, message=message,
                          knobs={"batch_size": b, "seq_len": None, "workload": workload,
                                 "seed": 0, "threads": None, "gen_tokens": 32}),
            "budget_bytes": budget,
            "theory": {"memory": {"peak_bytes": 60 * MIB,
                                  "by_category": {"parameters": 3_400_000}}}}


BUDGET = 48 * MIB
SIZES = (1, 2, 4, 8, 16)


@pytest.fixture
def records():
    """A batch-size sweep 1..16 that went fine, then batch 32 refused for the memory budget."""
    return [ok_record(b, budget=BUDGET) for b in SIZES] + [failed_record(32, budget=BUDGET)]


@pytest.fixture
def df(records):
    return records_frame(records)


# ----------------------------------------------------------------------------- spec helpers

def layers_named(spec: dict, prefix: str) -> list[dict]:
    """Every layer (at any depth) whose mark name starts with ``prefix`` (e.g. "measured_")."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and node["name"].startswith(prefix) and "mark" in node:
                found.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def layer_rows(spec: dict, layer: dict) -> list[dict]:
    return spec["datasets"][layer["data"]["name"]]


def one_layer(spec: dict, prefix: str) -> list[dict]:
    layers = layers_named(spec, prefix)
    assert len(layers) == 1, f"expected one {prefix!r} layer, found {len(layers)}"
    return layer_rows(spec, layers[0])


def svg_points(svg: str, prefix: str) -> list[str]:
    """The ``<path>`` of every point mark inside mark groups named ``prefix...``."""
    paths = []
    for m in re.finditer(r'<g class="mark-symbol role-mark (\w+)"[^>]*>', svg):
        if m.group(1).startswith(prefix):
            end = svg.index("</g>", m.end())
            paths += [p for p in re.findall(r"<path [^>]*>", svg[m.end():end])
                      if 'aria-roledescription="point"' in p]
    return paths


def svg_marks(svg: str, prefix: str) -> int:
    """How many point marks the SVG holds inside mark groups named ``prefix...``."""
    return len(svg_points(svg, prefix))


# ----------------------------------------------------------------------------- the data

def test_throughput_has_one_measured_point_per_ok_record_and_the_theory_line(df):
    spec = throughput_chart(df).to_dict()
    measured = one_layer(spec, "measured_")
    ok = df[df["status"] == "ok"]
    assert [r["x"] for r in measured] == list(ok["knobs.batch_size"])
    assert [r["tps"] for r in measured] == pytest.approx(list(ok["throughput.tokens_per_s"]))
    theory = one_layer(spec, "theory_")
    assert [r["theory_tps"] for r in theory] == pytest.approx(
        list(ok["theory.roofline.tokens_per_s_upper_bound"]))
    legend = layers_named(spec, "measured_")[0]["encoding"]["color"]["scale"]["domain"]
    assert legend == ["measured", "theory (roofline bound)", "failed / refused"]


def test_throughput_error_bars_span_p75_to_p25_latency(df):
    spec = throughput_chart(df).to_dict()
    rows = one_layer(spec, "spread_")
    assert len(rows) == len(SIZES)
    for r in rows:
        assert r["tps_lo"] <= r["tps"] <= r["tps_hi"]
        assert r["tps_lo"] == pytest.approx(r["tokens_per_step"] / (r["lat_p75"] / 1e3))
        assert r["tps_hi"] == pytest.approx(r["tokens_per_step"] / (r["lat_p25"] / 1e3))


def test_latency_has_ordered_spread_and_the_roofline_lower_bound(df):
    spec = latency_chart(df).to_dict()
    for r in one_layer(spec, "spread_"):
        assert r["lat_p25"] <= r["lat"] <= r["lat_p75"]
    theory = one_layer(spec, "theory_")
    ok = df[df["status"] == "ok"]
    assert [r["theory_ms"] for r in theory] == pytest.approx(
        list(ok["theory.roofline.step_ms_lower_bound"]))
    assert "ms per step" in json.dumps(spec)
    tooltip_titles = {t["title"] for t in layers_named(spec, "measured_")[0]["encoding"]["tooltip"]}
    assert {"n timings", "median (ms)", "p25 (ms)", "p75 (ms)"} <= tooltip_titles


@pytest.mark.parametrize("builder", [throughput_chart, latency_chart, memory_chart, quality_chart])
def test_failed_records_are_crosses_with_their_message_not_measured_points(builder, records):
    records = records + [failed_record(64, "oom", message="out of memory: tried 9 GiB")]
    spec = builder(records_frame(records)).to_dict()
    failed = one_layer(spec, "failed_")
    assert [(r["x"], r["status"]) for r in failed] == [(32, "refused"), (64, "oom")]
    assert "exceeds the budget" in failed[0]["message"]
    assert failed[1]["message"] == "out of memory: tried 9 GiB"
    assert layers_named(spec, "failed_")[0]["mark"]["shape"] == "cross"
    for layer in layers_named(spec, "measured_") + layers_named(spec, "memory_"):
        assert {r["x"] for r in layer_rows(spec, layer)} <= set(SIZES)


def test_charts_cope_with_only_failed_records():
    frame = records_frame([failed_record(b, "error", message=f"boom {b}") for b in (1, 2)])
    assert "latency_ms.median" not in frame.columns
    for builder in (throughput_chart, latency_chart, memory_chart, quality_chart, dashboard):
        spec = builder(frame).to_dict()
        assert not layers_named(spec, "measured_")
        assert len(layers_named(spec, "failed_")) >= 1
    assert svg_marks(to_svg(throughput_chart(frame)), "failed_") == 2


def test_svg_holds_one_point_per_record_in_the_right_group(df):
    svg = to_svg(throughput_chart(df))
    assert svg.startswith("<svg")
    assert svg_marks(svg, "measured_") == len(SIZES)
    assert svg_marks(svg, "theorypoints_") == len(SIZES)
    assert svg_marks(svg, "failed_") == 1
    assert "theory (roofline bound)" in svg and "measured" in svg


# ----------------------------------------------------------------------------- memory, quality

def test_memory_bars_stack_to_the_measured_peak_in_mib(df):
    spec = memory_chart(df).to_dict()
    bars = pd.DataFrame(one_layer(spec, "memory_"))
    stacked = bars.groupby("x")["mib"].sum()
    ok = df[df["status"] == "ok"].set_index("knobs.batch_size")
    for b in SIZES:
        assert stacked[b] == pytest.approx(ok.loc[b, "memory.peak_bytes"] / MIB)
    predicted = one_layer(spec, "predicted_")  # refused records keep their prediction
    assert [r["x"] for r in predicted] == [*SIZES, 32]
    assert [r["theory_mib"] for r in predicted] == pytest.approx(
        list(df["theory.memory.peak_bytes"] / MIB))
    assert [r["budget_mib"] for r in one_layer(spec, "budget_")] == [BUDGET / MIB]


def test_memory_chart_has_no_budget_rule_without_a_budget():
    spec = memory_chart(records_frame([ok_record(b) for b in (1, 2)])).to_dict()
    assert not layers_named(spec, "budget_")


def test_quality_chart_plots_bits_per_byte(df):
    rows = one_layer(quality_chart(df).to_dict(), "measured_")
    assert [r["bpb"] for r in rows] == pytest.approx([1.4 / math.log(2)] * len(SIZES))


# ----------------------------------------------------------------------------- axes, panels

def test_batch_sizes_get_a_log2_axis_and_few_values_a_linear_one(df):
    enc = layers_named(throughput_chart(df).to_dict(), "measured_")[0]["encoding"]["x"]
    assert enc["scale"]["type"] == "log" and enc["scale"]["base"] == 2
    assert enc["axis"]["values"] == [1, 2, 4, 8, 16, 32]
    assert "batch size" in enc["title"]
    two = records_frame([ok_record(b) for b in (3, 4)])
    enc = layers_named(throughput_chart(two).to_dict(), "measured_")[0]["encoding"]["x"]
    assert enc["scale"].get("type") != "log"


def test_several_workloads_get_one_panel_each_with_the_right_units():
    frame = records_frame([ok_record(b, w) for w in ("train", "decode") for b in (1, 2, 4)])
    spec = latency_chart(frame).to_dict()
    panels = spec["concat"]
    assert [p["title"] for p in panels] == ["train", "decode"]
    assert len(layers_named(spec, "measured_")) == 2
    assert "ms per step" in json.dumps(panels[0]) and "ms per token" in json.dumps(panels[1])
    assert svg_marks(to_svg(spec), "measured_") == 6


def test_records_without_a_value_for_x_are_counted_not_silently_dropped():
    recs = [ok_record(1), ok_record(2)]
    recs[0] = {**recs[0], "knobs": {**recs[0]["knobs"], "seq_len": 64}}
    spec = throughput_chart(records_frame(recs), x="knobs.seq_len").to_dict()
    assert "1 record(s) with no value for knobs.seq_len are not shown" in json.dumps(spec)


def test_a_missing_x_column_raises_naming_the_knob_columns(df):
    with pytest.raises(ValueError, match=r"knobs\.nope.*knobs\.batch_size"):
        throughput_chart(df, x="knobs.nope")
    with pytest.raises(TypeError, match="records DataFrame"):
        throughput_chart([{"a": 1}])


def test_an_empty_frame_gives_a_titled_placeholder_that_renders():
    for builder in (throughput_chart, dashboard):
        chart = builder(pd.DataFrame())
        assert "no measurements yet" in json.dumps(chart.to_dict())
        assert to_svg(chart).startswith("<svg")


def test_dashboard_holds_every_relevant_chart_and_renders_offline(df):
    chart = dashboard(df)
    spec = chart.to_dict()
    text = json.dumps(spec)
    for title in ("Throughput", "Latency", "Memory", "Quality"):
        assert f'"{title}"' in text
    assert len(layers_named(spec, "measured_")) == 3  # throughput, latency, quality
    png = to_png(chart, scale=1.0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert charts.png_size(png)[0] > 600
    page = to_html(throughput_chart(df))
    assert "<html" in page.lower() and "vega" in page.lower()
    assert not re.search(r"<script[^>]+src=[\"']https?:", page)  # scripts inlined, no CDN


def test_training_curve_chart_draws_train_and_validation():
    curve = ([{"step": s, "train_loss": 3.0 - s / 100} for s in range(0, 50, 5)]
             + [{"step": s, "val_loss": 3.1 - s / 100} for s in (0, 25)])
    spec = training_curve_chart(curve).to_dict()
    rows = [r for d in spec["datasets"].values() for r in d]
    assert sum(r["series"] == "train" for r in rows) == 10
    assert sum(r["series"] == "validation" for r in rows) == 2
    assert to_svg(spec).count("<path") > 0
    with pytest.raises(ValueError, match="step"):
        training_curve_chart([{"train_loss": 1.0}])
    with pytest.raises(ValueError, match="neither"):
        training_curve_chart(pd.DataFrame({"step": [1]}))


# ----------------------------------------------------------------------------- no torch

STUB = """
import sys, types
pkg = types.ModuleType("efflab")  # the package without its __init__ (which measures: torch)
pkg.__path__ = [{path!r}]
sys.modules["efflab"] = pkg
import efflab.ui.charts, efflab.ui.charts.charts, efflab.ui.charts.live
assert "torch" not in sys.modules, "efflab.ui.charts imported torch"
print("ok")
"""


def test_viz_does_not_import_torch():
    code = STUB.format(path=str(REPO / "efflab"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- live charts

def test_static_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("EFFLAB_STATIC_CHARTS", "1")
    assert static_mode(None) is True
    assert static_mode(False) is False
    monkeypatch.setenv("EFFLAB_STATIC_CHARTS", "0")
    assert static_mode(None) is False
    monkeypatch.delenv("EFFLAB_STATIC_CHARTS")
    assert static_mode(None) is False
    with pytest.raises(TypeError, match="static"):
        static_mode("yes")


def test_live_chart_grows_as_records_arrive(records):
    live = LiveChart(throughput_chart, x="knobs.batch_size", static=True)
    assert "no measurements yet" in json.dumps(live.chart().to_dict())
    live.add(records[0])
    assert len(live.frame()) == 1
    assert len(one_layer(live.chart().to_dict(), "measured_")) == 1
    live.add_many(records[1:])
    assert len(live.records) == len(records)
    spec = live.chart().to_dict()
    assert len(one_layer(spec, "measured_")) == len(SIZES)
    assert len(one_layer(spec, "failed_")) == 1
    live.clear()
    assert live.frame().empty
    with pytest.raises(TypeError, match="record dict"):
        live.add("not a record")


def test_live_chart_widget_mode_replaces_the_jupyterchart_spec(records):
    live = LiveChart(throughput_chart, static=False)
    jchart = live.widget
    assert isinstance(jchart, alt.JupyterChart)
    assert live.widget is jchart  # one widget, updated in place
    live.add_many(records[:2])
    assert len(one_layer(jchart.chart.to_dict(), "measured_")) == 2
    live.add(records[2])
    assert len(one_layer(jchart.chart.to_dict(), "measured_")) == 3
    with pytest.raises(RuntimeError, match="static mode"):
        _ = LiveChart(static=True).widget


def test_static_display_is_one_bundle_with_svg_png_and_text(records, monkeypatch):
    import IPython.display

    from efflab.ui.charts import live as live_module

    shown = []
    monkeypatch.setattr(live_module, "_in_ipython", lambda: True)  # as in a notebook kernel
    monkeypatch.setattr(IPython.display, "display",
                        lambda *objs, **kw: shown.append((objs, kw)))
    live = LiveChart(dashboard, static=True, records=records)
    live._ipython_display_()
    assert len(shown) == 1
    (data,), kw = shown[0]
    assert kw["raw"] is True
    assert {"image/svg+xml", "image/png", "text/plain"} <= set(data)
    assert data["image/svg+xml"].startswith("<svg")
    assert base64.b64decode(data["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "6 record(s), 1 failed or refused" in data["text/plain"]
    assert kw["metadata"]["image/png"]["width"] > 0


def test_live_chart_saves_svg_png_html_and_json(records, tmp_path):
    live = LiveChart(memory_chart, static=True, records=records)
    for suffix in (".svg", ".png", ".html", ".json"):
        live.save(tmp_path / f"chart{suffix}")
        assert (tmp_path / f"chart{suffix}").stat().st_size > 500
    assert json.loads((tmp_path / "chart.json").read_text())["$schema"].startswith("https://vega")
    with pytest.raises(ValueError, match=r"\.svg, \.png, \.html, \.json"):
        live.save(tmp_path / "chart.gif")


def test_live_training_curve_without_x():
    live = LiveChart(training_curve_chart, x=None, static=True)
    for s in range(3):
        live.add({"step": s, "train_loss": 2.0 - s * 0.1})
    rows = [r for d in live.chart().to_dict()["datasets"].values() for r in d]
    assert [r["step"] for r in rows] == [0, 1, 2]
    with pytest.raises(TypeError, match="x=None"):
        LiveChart(training_curve_chart, x="knobs.batch_size")


def test_static_live_chart_shows_once_when_the_sweep_finishes(records, monkeypatch):
    from efflab.ui.charts import live as live_module

    shown = []
    monkeypatch.setattr(live_module, "_in_ipython", lambda: True)
    monkeypatch.setattr(live_module, "publish", lambda data, md=None: shown.append(data))
    live = LiveChart(throughput_chart, static=True)
    live.show()                 # before the sweep: no empty image in the executed notebook
    assert shown == []
    live.add_many(records)
    live.finish()               # the finished chart, once
    live.finish()
    assert len(shown) == 1 and "image/png" in shown[0]


def test_plain_charts_are_drawn_offline_in_both_modes(df, monkeypatch):
    from efflab.ui.charts import live as live_module

    before = alt.renderers.active, dict(alt.renderers.options)
    try:
        assert live_module.use_offline_renderer(static=True) == "efflab-static"
        data, _ = throughput_chart(df)._repr_mimebundle_()
        assert {"image/svg+xml", "image/png"} <= set(data)  # what papermill keeps
        assert live_module.use_offline_renderer(static=False) == "jupyter"
        assert alt.renderers.options == {"offline": True}
    finally:
        alt.renderers.enable(before[0], **before[1])
    shown = []
    monkeypatch.setattr(live_module, "_in_ipython", lambda: True)
    monkeypatch.setattr(live_module, "publish", lambda data, md=None: shown.append(data))
    live_module.show(memory_chart(df), static=True)
    assert "image/svg+xml" in shown[0]


def test_pareto_chart_draws_every_point_the_front_and_the_best():
    from efflab.studies.analysis import best_under_budget, pareto_front
    from efflab.ui.charts.charts import pareto_chart, to_svg

    df = pd.DataFrame({"status": ["ok"] * 4 + ["refused"],
                       "config": ["a", "b", "c", "d", "e"],
                       "peak MiB": [1.0, 2.0, 3.0, 2.5, None],
                       "quality.bits_per_byte": [2.0, 1.8, 1.7, 1.9, None]})
    front = pareto_front(df, "peak MiB", "quality.bits_per_byte")
    assert list(front["config"]) == ["a", "b", "c"]  # d is beaten by b on both axes
    best = best_under_budget(df, "peak MiB", 2.2, "quality.bits_per_byte")
    assert list(best["config"]) == ["b"]
    svg = to_svg(pareto_chart(df, "peak MiB", "quality.bits_per_byte", front=front, best=best,
                              budget=2.2))
    # dotted column names must not be read as nested fields: every ok point is drawn
    assert svg_marks(svg, "every_") == 4


# ----------------------------------------------------------------------------- reused and noisy marks

REUSED_AT = {2, 8}   # batch sizes taken from the store
NOISY_AT = {4, 8}    # batch sizes whose timing the measurement flagged


def marked_records():
    """The batch sweep, with batch 2 and 8 reused from the store, batch 4 and 8 noisy
    (IQR/median 14%), and the refused batch 32 reused too."""
    recs = []
    for b in SIZES:
        r = ok_record(b, budget=BUDGET)
        if b in NOISY_AT:
            r["latency_ms"] = {**r["latency_ms"], "noisy": True, "iqr_over_median": 0.14,
                               "cv": 0.12}
        if b in REUSED_AT:
            r["reused"] = True
        recs.append(r)
    return recs + [{**failed_record(32, budget=BUDGET), "reused": True}]


def is_hollow(path: str) -> bool:
    """No fill of its own: the SVG root's fill="none" shows through (an outline only)."""
    return not re.search(r' fill="(?!none"|transparent")', path)


def is_triangle(path: str) -> bool:
    d = re.search(r' d="([^"]+)"', path).group(1)
    return "A" not in d and d.count("L") == 2  # circles are arcs; a triangle is three lines


def encoding_of(spec: dict, prefix: str) -> dict:
    return layers_named(spec, prefix)[0]["encoding"]


@pytest.mark.parametrize("builder", [throughput_chart, latency_chart])
def test_reused_points_are_hollow_and_noisy_ones_triangles_with_legends(builder):
    frame = records_frame(marked_records())
    spec = builder(frame).to_dict()
    enc = encoding_of(spec, "measured_")
    series = ["measured", "theory (roofline bound)", "failed / refused"]
    assert enc["fill"]["scale"] == {"domain": [*series, charts.REUSED],
                                    "range": ["#1f77b4", "#ff7f0e", "#d62728", "transparent"]}
    assert enc["fill"]["legend"] is not None      # the legend: the series and a hollow entry
    assert enc["color"]["legend"] is None         # ... in place of the colour legend
    assert enc["shape"]["scale"] == {"domain": [charts.STABLE, charts.NOISY],
                                     "range": ["circle", "triangle-up"]}
    assert enc["stroke"]["legend"] is None  # the outline keeps a hollow point visible
    rows = one_layer(spec, "measured_")
    assert {r["x"] for r in rows if r["fill_key"] == charts.REUSED} == REUSED_AT
    assert {r["x"] for r in rows if r["source"] == charts.REUSED} == REUSED_AT
    assert {r["x"] for r in rows if r["timing"] == charts.NOISY} == NOISY_AT
    notes = {r["x"]: r["spread_note"] for r in rows}
    assert notes[4] == "noisy: IQR/median 14%"
    assert notes[1] == "stable: IQR/median 13%"  # from the record's own p25/p75: (1.08-0.95)
    tips = {t["field"] for t in enc["tooltip"]}
    assert {"source", "spread_note"} <= tips
    if builder is latency_chart:
        assert "cv" in tips and {r["x"]: r["cv"] for r in rows}[4] == pytest.approx(0.12)
    text = json.dumps(spec)
    assert "hollow: 3 point(s) reused from the store" in text  # 2, 8 and the refused 32
    assert "triangles: 2 point(s) with a noisy timing" in text
    svg = to_svg(spec)
    points = svg_points(svg, "measured_")
    assert len(points) == len(SIZES)
    assert sum(map(is_hollow, points)) == len(REUSED_AT)
    assert sum(map(is_triangle, points)) == len(NOISY_AT)
    # the reused refused record: a hollow cross
    crosses = svg_points(svg, "failed_")
    assert len(crosses) == 1 and is_hollow(crosses[0])
    assert charts.REUSED in svg and charts.NOISY in svg  # the legends are drawn


def test_fresh_stable_records_get_no_mark_legends_or_notes(df):
    for builder in (throughput_chart, latency_chart, memory_chart, quality_chart):
        spec = builder(df).to_dict()
        for layer in layers_named(spec, "measured_") + layers_named(spec, "memory_"):
            assert not {"fill", "shape", "stroke"} & set(layer["encoding"])
            assert layer["encoding"]["color"]["legend"] is not None
        text = json.dumps(spec)
        assert "hollow:" not in text and "triangles:" not in text
    svg = to_svg(throughput_chart(df))
    assert not any(map(is_hollow, svg_points(svg, "measured_")))
    assert not any(map(is_triangle, svg_points(svg, "measured_")))


def test_memory_and_quality_mark_reused_records_but_not_timing_noise():
    frame = records_frame(marked_records())
    mem = memory_chart(frame).to_dict()
    enc = encoding_of(mem, "memory_")
    assert enc["fill"]["scale"]["range"][-1] == "transparent" and "shape" not in enc
    bars = pd.DataFrame(one_layer(mem, "memory_"))
    assert set(bars.loc[bars["fill_key"] == charts.REUSED, "x"]) == REUSED_AT
    fresh = bars[bars["source"] == charts.FRESH]
    assert set(fresh["x"]) == set(SIZES) - REUSED_AT and (fresh["fill_key"] == fresh["series"]).all()
    assert "triangles:" not in json.dumps(mem)  # memory is not timed: noise is not its business
    svg = to_svg(mem)
    drawn = [p for p in re.findall(r"<path [^>]*>", svg) if 'aria-roledescription="bar"' in p]
    assert len(drawn) == len(bars)
    assert sum(map(is_hollow, drawn)) == int((bars["source"] == charts.REUSED).sum())
    quality = quality_chart(frame).to_dict()
    enc = encoding_of(quality, "measured_")
    assert "fill" in enc and "shape" not in enc
    assert sum(map(is_hollow, svg_points(to_svg(quality), "measured_"))) == len(REUSED_AT)


def test_dashboard_with_marks_renders_every_chart():
    chart = dashboard(records_frame(marked_records()))
    svg = to_svg(chart)
    points = svg_points(svg, "measured_")  # throughput, latency, quality
    assert len(points) == 3 * len(SIZES)
    assert sum(map(is_hollow, points)) == 3 * len(REUSED_AT)
    assert sum(map(is_triangle, points)) == 2 * len(NOISY_AT)  # quality is not timed


def test_mark_columns_trust_the_records_flags():
    from efflab.ui.charts.frame import mark_columns

    frame = pd.DataFrame({"reused": [True, None, False, float("nan")],
                          "latency_ms.noisy": [None, True, False, True],
                          "latency_ms.median": [10.0, 10.0, 10.0, None],
                          "latency_ms.p25": [9.0, 9.0, 9.5, None],
                          "latency_ms.p75": [12.0, 11.0, 10.5, None],
                          "latency_ms.iqr_over_median": [None, 0.5, None, None]})
    m = mark_columns(frame)
    assert m["reused"].tolist() == [True, False, False, False]
    assert m["noisy"].tolist() == [False, True, False, True]
    # the record's own IQR/median when it has one, else from its quartiles
    assert m["iqr_rel"].tolist()[:3] == pytest.approx([0.3, 0.5, 0.1])
    assert m["spread_note"].tolist() == ["stable: IQR/median 30%", "noisy: IQR/median 50%",
                                         "stable: IQR/median 10%", ""]
    # a frame without the columns: nothing is marked
    bare = mark_columns(pd.DataFrame({"x": [1, 2]}))
    assert not bare["reused"].any() and not bare["noisy"].any()


def test_pareto_marks_reused_always_and_noise_only_on_a_timed_axis():
    from efflab.ui.charts.charts import pareto_chart

    df = pd.DataFrame({"status": ["ok"] * 4, "config": ["a", "b", "c", "d"],
                       "ms per token": [1.0, 2.0, 3.0, 2.5], "peak MiB": [4.0, 3.0, 2.0, 5.0],
                       "quality.bits_per_byte": [2.0, 1.8, 1.7, 1.9],
                       "reused": [True, None, None, True],
                       "latency_ms.noisy": [None, True, None, None]})
    timed = pareto_chart(df, "ms per token", "quality.bits_per_byte")
    enc = encoding_of(timed.to_dict(), "every_")
    assert "fill" in enc and "shape" in enc
    points = svg_points(to_svg(timed), "every_")
    assert sum(map(is_hollow, points)) == 2 and sum(map(is_triangle, points)) == 1
    untimed = pareto_chart(df, "peak MiB", "quality.bits_per_byte").to_dict()
    enc = encoding_of(untimed, "every_")
    assert "fill" in enc and "shape" not in enc
    assert "triangles:" not in json.dumps(untimed)
