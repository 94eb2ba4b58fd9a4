"""The lab panel: controls from Knobs, the plain ``run()`` call, the Run button in the
background, refusals and errors shown in the panel (ipywidgets would swallow them)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from record_factory import fake_record as make_record

import efflab.ui.panel_runner as runner_module
from efflab.core.config import ConfigError, knob_fields
from efflab.core.store import Store
from efflab.ui.charts import live as live_module
from efflab.ui.charts.charts import records_frame
from efflab.ui.lab import Lab, gpu_refusal
from efflab.ui.panel_runner import Runner, progress_text, summary_text
from efflab.ui.panel_state import PanelSettings, apply_run_args, make_plan, parse_budget

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_corpus():
    """A one-file corpus: reading the default (the whole standard library) takes seconds.
    A fixed path, so its prepared cache under data/cache/ is made once and reused."""
    return os.__file__


@pytest.fixture
def shown(monkeypatch):
    """Every display bundle the lab and its chart publish, as in a notebook kernel."""
    import IPython.display

    out = []
    monkeypatch.setattr(live_module, "_in_ipython", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: out.append(objs[0]))
    return out


def fake_record(knobs, preset, status="ok", reused=False, noisy=False):
    """A record as ``measure`` returns it (numbers made up), for sweeps that don't measure;
    ``reused``: as a sweep returns a stored one, ``noisy``: timing flagged unstable."""
    rec = make_record(status, preset=preset, workload=knobs.workload, knobs=knobs,
                      budget_bytes=None, theory={"memory": {"peak_bytes": 1_000_000}})
    if status == "ok":
        b = knobs.batch_size
        rec.update(latency_ms={"median": 2.0 * b, "p25": 1.9 * b, "p75": 2.2 * b, "n": 7,
                               "unit": "step"},
                   throughput={"tokens_per_s": 1000.0 * b, "tokens_per_step": 64 * b},
                   theory={"memory": {"peak_bytes": 1_000_000},
                           "roofline": {"tokens_per_s_upper_bound": 5000.0 * b,
                                        "step_ms_lower_bound": 0.5 * b, "bound": "compute"}})
        iqr = 0.14 if noisy else 0.03
        rec["latency_ms"].update(noisy=noisy, iqr_over_median=iqr, cv=iqr)
    else:
        rec["message"] = "out of memory: synthetic"
    if reused:
        rec["reused"] = True
    return rec


class FakeSweep:
    """Stands in for ``efflab.sweep``: records its arguments, feeds ``on_record``, and can
    wait on an event first (to show that Run does not block). ``reused_at``/``noisy_at``: values
    whose record comes "from the store" / with a noisy timing. ``step``: an event waited on
    before each point after the first (to cancel in between)."""

    def __init__(self, gate: threading.Event | None = None, fail_at: int | None = None,
                 reused_at=(), noisy_at=(), step: threading.Event | None = None):
        self.calls = []
        self.gate = gate
        self.fail_at = fail_at
        self.reused_at, self.noisy_at = set(reused_at), set(noisy_at)
        self.step = step
        self.waiting = threading.Event()  # set while waiting on ``step``
        self.measured = 0

    def __call__(self, base, vary, **kw):
        self.calls.append((base, vary, kw))
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the sweep"
        (name, values), = vary.items()
        recs = []
        for i, v in enumerate(values):
            if i and self.step is not None:
                self.waiting.set()
                assert self.step.wait(10), "the test never released the next point"
                self.waiting.clear()
                self.step.clear()
            k = base.replace(**{name: v})
            rec = fake_record(k, kw["preset"], "oom" if v == self.fail_at else "ok",
                              reused=v in self.reused_at, noisy=v in self.noisy_at)
            self.measured += 1
            recs.append(rec)
            kw["on_record"](rec)
        return records_frame(recs)


# ----------------------------------------------------------------------------- controls

def test_there_is_a_control_for_every_knob_field():
    lab = Lab(preset="cpu-tiny", static=True, seq_len=32)
    names = [f["name"] for f in knob_fields()]
    assert list(lab.controls) == names
    assert lab.controls["workload"].options == ("train", "eval", "prefill", "decode")
    assert lab.controls["seq_len"].value == "32"        # a None-able int: text, "auto" = None
    assert lab.controls["threads"].value == "auto"
    assert lab.controls["batch_size"].disabled          # varied: set by the values box
    assert list(lab.vary_control.options) == names
    plan = lab.plan()
    assert plan.base.seq_len == 32 and plan.base.threads is None
    assert plan.values == (1, 2, 4, 8, 16)
    assert plan.vary == "batch_size"


def test_varying_a_literal_knob_offers_its_choices():
    lab = Lab(preset="cpu-tiny", static=True, vary="workload")
    assert lab.plan().values == ("train", "eval", "prefill", "decode")
    lab.vary_control.value = "seq_len"
    assert not lab.controls["workload"].disabled and lab.controls["seq_len"].disabled


def test_bad_settings_raise_naming_the_field():
    with pytest.raises(ConfigError, match="preset"):
        Lab(preset="nope", static=True)
    with pytest.raises(ConfigError, match="vary"):
        Lab(vary="colour", static=True)
    with pytest.raises(ConfigError, match="batch_size"):
        Lab(batch_size=0, static=True)
    lab = Lab(preset="cpu-tiny", static=True)
    lab.values_control.value = "1, two"
    with pytest.raises(ConfigError, match="batch_size='two'"):
        lab.plan()
    lab.values_control.value = "1, 2"
    lab.controls["threads"].value = "many"
    with pytest.raises(ConfigError, match="threads"):
        lab.plan()


# ----------------------------------------------------------------------------- the plain call

def test_run_measures_cpu_tiny_and_stores_one_row_per_value(tmp_path, small_corpus, quick_cal,
                                                             shown):
    lab = Lab(preset="cpu-tiny", values=(1, 2), target_s=0.05, store=tmp_path / "store",
              corpus=small_corpus, calibration=quick_cal, static=True)
    df = lab.run()
    assert list(df["knobs.batch_size"]) == [1, 2]
    assert list(df["status"]) == ["ok", "ok"]
    assert (df["throughput.tokens_per_s"] > 0).all()
    assert Store(tmp_path / "store").count() == 2
    assert [r["knobs"]["batch_size"] for r in lab.records] == [1, 2]
    assert list(lab.frame()["knobs.batch_size"]) == [1, 2]
    assert "done: 2/2 measured" in lab.status.value
    # static mode: a text summary, then the dashboard as one SVG+PNG bundle
    assert shown[0]["text/plain"].startswith("done: 2/2 measured")
    assert {"image/svg+xml", "image/png", "text/plain"} <= set(shown[-1])


def test_run_sets_the_controls_it_names_and_passes_them_to_the_sweep(monkeypatch, shown):
    fake = FakeSweep()
    monkeypatch.setattr(runner_module, "sweep", fake)
    lab = Lab(preset="cpu-tiny", static=True, store="ignored")
    df = lab.run(vary="seq_len", values=[16, 32], batch_size=2, target_s=0.1,
                 budget_bytes=64 * 2**20)
    base, vary, kw = fake.calls[0]
    assert vary == {"seq_len": [16, 32]}
    assert base.batch_size == 2
    assert kw["preset"] == "cpu-tiny" and kw["target_s"] == 0.1
    assert kw["budget_bytes"] == 64 * 2**20 and kw["store"] == "ignored"
    assert lab.controls["batch_size"].value == 2 and lab.vary_control.value == "seq_len"
    assert lab.values_control.value == "16, 32" and lab.budget_control.value == "64"
    assert list(df["knobs.seq_len"]) == [16, 32]
    assert lab.live.x == "knobs.seq_len"
    with pytest.raises(ConfigError, match="colour"):
        lab.run(colour="red")
    assert "colour" in lab.error_area.value  # shown in the panel too


def test_failed_points_are_reported_in_static_mode(monkeypatch, shown):
    monkeypatch.setattr(runner_module, "sweep", FakeSweep(fail_at=4))
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4), static=True)
    df = lab.run()
    assert list(df["status"]) == ["ok", "ok", "oom"]
    assert "(2 ok, 1 oom)" in lab.status.value
    assert "4: oom — out of memory: synthetic" in shown[0]["text/plain"]


# ----------------------------------------------------------------------------- GPU presets

def test_a_gpu_preset_on_a_cpu_machine_is_refused_in_the_panel(monkeypatch, shown):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake = FakeSweep()
    monkeypatch.setattr(runner_module, "sweep", fake)
    lab = Lab(preset="cpu-tiny", static=True)
    labels = dict((v, k) for k, v in lab.preset_control.options)
    assert labels["gpu-small"] == "gpu-small (needs a GPU)"
    assert labels["cpu-small"] == "cpu-small"
    lab.preset_control.value = "gpu-small"  # what choosing it in the dropdown does
    assert "needs a GPU" in lab.error_area.value
    assert lab.run_button.disabled
    lab._on_run_click(lab.run_button)       # even if Run were pressed: nothing runs
    assert lab.run(preset="gpu-gpt2").empty
    assert fake.calls == [] and lab.records == []
    assert "gpu-gpt2" in lab.error_area.value
    assert gpu_refusal("gpu-gpt2") == gpu_refusal("gpu-gpt2", None)
    lab.preset_control.value = "cpu-tiny"
    assert lab.error_area.value == "" and not lab.run_button.disabled


# ----------------------------------------------------------------------------- the Run button

def test_run_button_measures_in_the_background_and_feeds_the_chart(monkeypatch, shown):
    gate = threading.Event()
    fake = FakeSweep(gate=gate)
    monkeypatch.setattr(runner_module, "sweep", fake)
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4), static=True)
    lab.run_button.click()
    assert lab.running and lab.run_button.disabled  # the click returned; the sweep waits
    lab.run_button.click()                            # a second click is refused, visibly
    assert "already in progress" in lab.error_area.value
    gate.set()
    assert lab.wait(60)  # the static chart is drawn in that thread: slow on a busy host
    assert not lab.running and not lab.run_button.disabled
    assert len(fake.calls) == 1
    assert [r["knobs"]["batch_size"] for r in lab.live.records] == [1, 2, 4]
    assert "done: 3/3 measured" in lab.status.value


def test_an_exception_in_the_run_callback_shows_in_the_panel(monkeypatch, shown):
    def broken_sweep(*args, **kwargs):
        raise RuntimeError("boom inside the sweep")

    monkeypatch.setattr(runner_module, "sweep", broken_sweep)
    lab = Lab(preset="cpu-tiny", static=True)
    lab.run_button.click()
    assert lab.wait(60)  # the static chart is drawn in that thread: slow on a busy host
    assert "RuntimeError: boom inside the sweep" in lab.error_area.value
    assert "traceback" in lab.error_area.value
    assert isinstance(lab.last_error, RuntimeError)
    assert "failed" in lab.status.value
    assert not lab.running and not lab.run_button.disabled
    # a bad control value is caught in the click itself, before any thread starts
    lab.values_control.value = "one"
    lab.run_button.click()
    assert "ConfigError" in lab.error_area.value and "one" in lab.error_area.value


# ----------------------------------------------------------------------------- display

def test_widget_mode_panel_holds_the_controls_and_the_live_chart():
    import altair as alt
    import ipywidgets as widgets

    lab = Lab(preset="cpu-tiny", static=False)
    panel = lab.widget
    assert isinstance(panel, widgets.VBox)
    assert lab.error_area in panel.children and lab.status in panel.children
    assert isinstance(lab.chart_area.children[0], alt.JupyterChart)


def test_static_mode_display_summarises_the_panel(shown):
    lab = Lab(preset="cpu-tiny", values=(1, 2), static=True)
    lab._ipython_display_()
    assert "static mode" in shown[0]["text/plain"] and "cpu-tiny" in shown[0]["text/html"]


def test_importing_efflab_does_not_load_the_lab():
    code = ("import sys, efflab; assert 'efflab.ui.lab' not in sys.modules; "
            "assert 'ipywidgets' not in sys.modules; print(efflab.Lab.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "efflab.ui.lab"


def test_precisions_this_machine_refuses_are_labelled_with_the_measured_reason(tmp_path):
    cal = {"fingerprint": "t", "bandwidth_bytes_per_s": 10e9,
           "matmul": {"float32": {"flops_per_s": 100e9, "sizes": [256]},
                      "bfloat16": {"flops_per_s": 0.5e9, "sizes": [256]},
                      "float16": {"flops_per_s": 500e9, "sizes": [256]}}}
    lab = Lab(preset="cpu-small", store=tmp_path, static=True, calibration=cal)
    labels = dict((v, label) for label, v in lab.controls["precision"].options)
    assert labels["fp32"] == "fp32" and labels["fp16"] == "fp16"
    assert "refused here: 0.5 GFLOP/s" in labels["bf16"]
    assert "refused here" in labels["bf16-pure"]


# ----------------------------------------------------------------------------- the pure layers

def settings(**changes):
    """Panel settings as the controls would hold them (text boxes as text)."""
    knobs = {f["name"]: ("auto" if f["optional"] else f["default"]) for f in knob_fields()}
    base = PanelSettings(preset="cpu-tiny", vary="batch_size", values="1, 2, 4", budget="none",
                         target_s=0.5, knobs=knobs)
    return base.replace(**changes)


def test_settings_become_a_checked_plan_without_any_widget():
    s = settings(values="1; 2 ,4", budget="64",
                 knobs={**settings().knobs, "seq_len": "32", "moe_capacity": "1.5"})
    plan = make_plan(s)
    assert plan.values == (1, 2, 4)
    assert plan.base.seq_len == 32 and plan.base.threads is None
    assert plan.base.moe_capacity == 1.5           # a float knob typed as text: the one parser
    assert plan.budget_bytes == 64 * 2**20 and plan.target_s == 0.5
    assert make_plan(settings(vary="workload", values="'train', decode")).values == ("train",
                                                                                     "decode")
    with pytest.raises(ConfigError, match="batch_size='x'"):
        make_plan(settings(values="1, x"))
    with pytest.raises(ConfigError, match="batch_size=0"):   # parsed, then range-checked
        make_plan(settings(values="0, 1"))
    with pytest.raises(ConfigError, match="values of batch_size"):
        make_plan(settings(values=" , "))
    with pytest.raises(ConfigError, match="vary"):
        make_plan(settings(vary="colour"))
    with pytest.raises(ConfigError, match="threads"):
        make_plan(settings(knobs={**settings().knobs, "threads": "many"}))
    for bad in ("0", "-3", "lots"):
        with pytest.raises(ConfigError, match="memory budget"):
            parse_budget(bad)
    assert parse_budget("none") is None and parse_budget("0.5") == 2**19


def test_run_arguments_become_settings_checked_first():
    s = apply_run_args(settings(), vary="seq_len", values=[16, None], batch_size=2,
                       budget_bytes=3 * 2**20, target_s=2, threads=None)
    assert (s.vary, s.values, s.budget, s.target_s) == ("seq_len", "16, auto", "3", 2.0)
    assert s.knobs["batch_size"] == 2 and s.knobs["threads"] == "auto"
    # choosing a Literal knob to vary, without values: every choice (as the dropdown does)
    assert apply_run_args(settings(), vary="precision").values == "fp32, bf16, fp16, bf16-pure"
    assert apply_run_args(settings(), budget_bytes=None).budget == "none"
    assert apply_run_args(settings(budget="8")).budget == "8"  # left out: unchanged
    for kwargs, field in [({"budget_bytes": 0}, "budget_bytes"), ({"budget_bytes": True}, "budget_bytes"),
                          ({"target_s": 0.0}, "target_s"), ({"values": "1,2"}, "values"),
                          ({"values": []}, "values"), ({"colour": "red"}, "colour"),
                          ({"preset": "nope"}, "preset"), ({"batch_size": -1}, "batch_size")]:
        with pytest.raises(ConfigError, match=field):
            apply_run_args(settings(), **kwargs)


def test_the_pure_layers_import_without_ipywidgets():
    code = ("import sys, efflab.ui.panel_state, efflab.ui.panel_runner; "
            "assert 'ipywidgets' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def plan_of(values=(1, 2, 4)):
    return make_plan(settings(values=", ".join(map(str, values))))


def test_status_words_count_failures_reused_and_noisy_points():
    plan = plan_of((1, 2, 4, 8))
    knobs = plan.base
    recs = [fake_record(knobs.replace(batch_size=1), "cpu-tiny"),
            fake_record(knobs.replace(batch_size=2), "cpu-tiny", reused=True),
            fake_record(knobs.replace(batch_size=4), "cpu-tiny", reused=True, noisy=True),
            fake_record(knobs.replace(batch_size=8), "cpu-tiny", status="oom")]
    assert progress_text(plan, recs[:1]).startswith("1/4 · cpu-tiny")
    mid = progress_text(plan, recs[:3])
    assert mid.startswith("3/4 · 2 from the store · 1 noisy · ")
    assert mid.endswith("[from the store, noisy]")  # the latest point, marked
    done = summary_text(plan, recs, 1.0)
    assert done.startswith("done: 4/4 ready in 1.0 s (3 ok, 1 oom; 2 reused from the store")
    assert "; 1 noisy, IQR/median up to 14%" in done
    fresh = summary_text(plan, recs[:1], 1.0)
    assert fresh.startswith("done: 1/4 measured") and "reused" not in fresh and "noisy" not in fresh


def test_the_lab_status_line_says_how_many_points_were_reused_and_noisy(monkeypatch, shown):
    monkeypatch.setattr(runner_module, "sweep", FakeSweep(reused_at={1, 2}, noisy_at={4}))
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4), static=True)
    lab.run()
    assert "done: 3/3 ready" in lab.status.value
    assert "2 reused from the store" in lab.status.value
    assert "1 noisy, IQR/median up to 14%" in lab.status.value
    assert "2 reused from the store" in shown[0]["text/plain"]


def test_runner_reports_a_failing_chart_and_goes_on(monkeypatch):
    monkeypatch.setattr(runner_module, "sweep", FakeSweep())
    errors, statuses = [], []

    def broken_chart(rec):
        raise ValueError(f"cannot draw {rec['knobs']['batch_size']}")

    runner = Runner(on_record=broken_chart, on_error=errors.append, on_status=statuses.append)
    df = runner.run(plan_of())
    assert len(df) == 3 and len(runner.records) == 3        # the sweep went on
    assert [str(e) for e in errors] == ["cannot draw 1", "cannot draw 2", "cannot draw 4"]
    assert statuses[-1].startswith("done: 3/3 measured") and not runner.running


def test_cancel_stops_after_the_current_point(monkeypatch, shown):
    step = threading.Event()
    fake = FakeSweep(step=step)
    monkeypatch.setattr(runner_module, "sweep", fake)
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4, 8), static=True)
    assert lab.stop_button.disabled and not lab.cancel()    # nothing to stop yet
    lab.run_button.click()
    assert not lab.stop_button.disabled
    assert fake.waiting.wait(10)                            # point 1 is in; point 2 is measuring
    lab.stop_button.click()                                 # Stop pressed now
    step.set()                                              # point 2 finishes, then it stops
    assert lab.wait(60)  # the static chart is drawn in that thread: slow on a busy host
    assert fake.measured == 2 and [r["knobs"]["batch_size"] for r in lab.records] == [1, 2]
    assert "cancelled after 2/4 points" in lab.status.value
    assert lab.error_area.value == "" and lab.last_error is None
    assert not lab.running and lab.stop_button.disabled and not lab.run_button.disabled
    assert len(lab.live.records) == 2                        # the chart kept what was measured
