"""The lab panel: controls from Knobs, the plain ``run()`` call, the Run button in the
background, refusals and errors shown in the panel (ipywidgets would swallow them)."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import efflab.lab as lab_module
from efflab.config import ConfigError, knob_fields
from efflab.lab import Lab, gpu_refusal
from efflab.store import Store
from efflab.viz import live as live_module
from efflab.viz.charts import records_frame

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


def fake_record(knobs, preset, status="ok"):
    """A record as ``measure`` returns it (numbers made up), for sweeps that don't measure."""
    rec = {"schema": "efflab.record/1", "status": status, "message": None, "preset": preset,
           "workload": knobs.workload, "knobs": knobs.to_dict(), "budget_bytes": None,
           "theory": {"memory": {"peak_bytes": 1_000_000}}}
    if status == "ok":
        b = knobs.batch_size
        rec.update(latency_ms={"median": 2.0 * b, "p25": 1.9 * b, "p75": 2.2 * b, "n": 7,
                               "unit": "step"},
                   throughput={"tokens_per_s": 1000.0 * b, "tokens_per_step": 64 * b},
                   theory={"memory": {"peak_bytes": 1_000_000},
                           "roofline": {"tokens_per_s_upper_bound": 5000.0 * b,
                                        "step_ms_lower_bound": 0.5 * b, "bound": "compute"}})
    else:
        rec["message"] = "out of memory: synthetic"
    return rec


class FakeSweep:
    """Stands in for ``efflab.sweep``: records its arguments, feeds ``on_record``, and can
    wait on an event first (to show that Run does not block)."""

    def __init__(self, gate: threading.Event | None = None, fail_at: int | None = None):
        self.calls = []
        self.gate = gate
        self.fail_at = fail_at

    def __call__(self, base, vary, **kw):
        self.calls.append((base, vary, kw))
        if self.gate is not None:
            assert self.gate.wait(10), "the test never released the sweep"
        (name, values), = vary.items()
        recs = []
        for v in values:
            k = base.replace(**{name: v})
            rec = fake_record(k, kw["preset"], "oom" if v == self.fail_at else "ok")
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
    monkeypatch.setattr(lab_module, "sweep", fake)
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
    monkeypatch.setattr(lab_module, "sweep", FakeSweep(fail_at=4))
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4), static=True)
    df = lab.run()
    assert list(df["status"]) == ["ok", "ok", "oom"]
    assert "(2 ok, 1 oom)" in lab.status.value
    assert "4: oom — out of memory: synthetic" in shown[0]["text/plain"]


# ----------------------------------------------------------------------------- GPU presets

def test_a_gpu_preset_on_a_cpu_machine_is_refused_in_the_panel(monkeypatch, shown):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake = FakeSweep()
    monkeypatch.setattr(lab_module, "sweep", fake)
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
    monkeypatch.setattr(lab_module, "sweep", fake)
    lab = Lab(preset="cpu-tiny", values=(1, 2, 4), static=True)
    lab.run_button.click()
    assert lab.running and lab.run_button.disabled  # the click returned; the sweep waits
    lab.run_button.click()                            # a second click is refused, visibly
    assert "already in progress" in lab.error_area.value
    gate.set()
    assert lab.wait(10)
    assert not lab.running and not lab.run_button.disabled
    assert len(fake.calls) == 1
    assert [r["knobs"]["batch_size"] for r in lab.live.records] == [1, 2, 4]
    assert "done: 3/3 measured" in lab.status.value


def test_an_exception_in_the_run_callback_shows_in_the_panel(monkeypatch, shown):
    def broken_sweep(*args, **kwargs):
        raise RuntimeError("boom inside the sweep")

    monkeypatch.setattr(lab_module, "sweep", broken_sweep)
    lab = Lab(preset="cpu-tiny", static=True)
    lab.run_button.click()
    assert lab.wait(10)
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
    code = ("import sys, efflab; assert 'efflab.lab' not in sys.modules; "
            "assert 'ipywidgets' not in sys.modules; print(efflab.Lab.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "efflab.lab"


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
