"""The panel a notebook shows: controls for every knob, Run and Stop, live charts, a status line.

    lab = efflab.Lab(preset="cpu-small", vary="batch_size", values=[1, 2, 4, 8, 16])
    lab                                # the panel (in JupyterLab: widgets and a live dashboard)
    df = lab.run()                     # the same as pressing Run, as one plain synchronous call
    df = lab.run(vary="seq_len", values=[32, 64, 128], batch_size=4)

This module is the *view*: ipywidgets and HTML. What the controls mean lives in
:mod:`efflab.ui.panel_state` (settings -> a checked plan, through the one text->knob parser
``efflab.core.config.parse_knob``); running a plan — the background thread, cancellation, error
capture and the status words — in :mod:`efflab.ui.panel_runner`. Both are plain Python, tested
without widgets.

The controls are generated from ``efflab.core.config.knob_fields()``, so a knob added to ``Knobs``
gets its control without touching this file. The panel *is* the state: ``run(**overrides)``
sets the controls it names (so the panel shows what ran) and then does what Run does.

Two rules shape the code:

* Widget callbacks never fire under papermill, so everything a widget does is also a plain
  method call (:meth:`Lab.run`, :meth:`Lab.cancel`); the widgets only call those methods.
* ipywidgets swallows exceptions raised in callbacks (they reach only JupyterLab's log
  console), so every callback and the background run hand what they raise to the panel's
  error area (:attr:`Lab.error_area`).

The Run button measures in a background thread, so the notebook stays responsive while points
arrive; Stop ends the run after the current point. In static mode (``EFFLAB_STATIC_CHARTS=1``:
papermill, the HTML report) ``run()`` shows the finished dashboard as SVG+PNG instead of a widget.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import pandas as pd
import torch
from IPython.display import display

from efflab.core.config import PRESETS, ConfigError, Knobs, resolve_preset
from efflab.core.records import records_frame
from efflab.ui.charts import live as _live
from efflab.ui.charts.frame import axis_label
from efflab.ui.charts.live import LiveChart, static_mode
from efflab.ui.charts.records import dashboard
from efflab.ui.panel_runner import Runner, failures_text
from efflab.ui.panel_state import (
    AUTO,
    DEFAULT_VALUES,
    UNCHANGED,
    PanelSettings,
    Plan,
    apply_run_args,
    check_vary,
    choice_notes,
    fields_by_name,
    format_budget,
    format_value,
    gpu_refusal,
    make_plan,
    settings_rows,
)


def _gpu_available() -> bool:
    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- knob controls

def _make_control(field: dict, value, notes: dict | None = None) -> widgets.Widget:
    """The widget for one ``knob_fields()`` entry, showing ``value``. ``notes`` labels choices
    this machine refuses (``{"bf16": "refused here: ..."}``) so the learner sees why up front."""
    name, default, choices = field["name"], field["default"], field["choices"]
    common = {"description": name, "style": {"description_width": "initial"},
              "layout": widgets.Layout(width="220px")}
    if choices:
        options = ([(f"{c} ({notes[c]})" if notes.get(c) else c, c) for c in choices]
                   if notes else list(choices))
        return widgets.Dropdown(options=options, value=value, **common)
    if field["optional"]:
        return widgets.Text(value=format_value(value), placeholder=AUTO,
                            tooltip=f"{name}: a number, or '{AUTO}' for the default", **common)
    if isinstance(default, bool):
        return widgets.Checkbox(value=bool(value), indent=False, **common)
    if isinstance(default, int):
        return widgets.IntText(value=int(value), **common)
    if isinstance(default, float):
        return widgets.FloatText(value=float(value), **common)
    return widgets.Text(value=str(value), **common)


# ----------------------------------------------------------------------------- HTML

def _status_html(text: str) -> str:
    return f"<span style='font-family:monospace'>{text}</span>"


def _error_html(e: BaseException) -> str:
    """An exception for the panel: its type and message, and (unless it is a ConfigError,
    which names the field) the traceback folded away."""
    head = html.escape(f"{type(e).__name__}: {e}")
    tb = "" if isinstance(e, ConfigError) else (
        "<details><summary>traceback</summary><pre style='font-size:11px'>"
        + html.escape("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        + "</pre></details>")
    return (f"<div style='color:#a40000;border-left:4px solid #d62728;"
            f"padding:4px 8px'><b>error</b> — {head}{tb}</div>")


def _refusal_html(message: str) -> str:
    return (f"<div style='color:#8a4b00;border-left:4px solid #ff7f0e;"
            f"padding:4px 8px'><b>not run here</b> — {html.escape(message)}</div>")


# ----------------------------------------------------------------------------- the panel

class Lab:
    """The notebook panel: knob controls, a preset choice, Run and Stop, a status line, live
    charts.

    ``vary``/``values``: the knob the sweep varies and its values (the chart's x axis).
    ``store``: where records are kept (a :class:`efflab.Store`, a folder or ``None`` for the
    default store); a configuration already stored is not measured again unless
    ``resume=False``. ``budget_bytes`` refuses configurations predicted to need more memory.
    ``target_s``: seconds of timing per point. ``static``: see :mod:`efflab.ui.charts.live`.
    ``weights``, ``corpus``, ``device`` and ``calibration`` are passed to ``efflab.sweep``;
    ``builder`` draws the live chart (default: the dashboard). Further keywords set the
    starting value of knobs (``Lab(seq_len=64)``).
    """

    def __init__(self, preset: str = "cpu-small", workload: str = "train",
                 vary: str = "batch_size", values: Sequence = DEFAULT_VALUES, store=None,
                 budget_bytes: int | None = None, target_s: float = 1.0,
                 static: bool | None = None, *, weights="auto", corpus: str | None = None,
                 device: str | None = None, resume: bool = True,
                 calibration: dict | None = None, builder: Callable = dashboard,
                 **knob_defaults):
        preset = resolve_preset(preset, device)  # unknown: ConfigError listing the presets
        self._fields = fields_by_name()
        initial = Knobs().replace(workload=workload, **knob_defaults)  # checked, names the field
        check_vary(vary)
        choices = self._fields[vary]["choices"]
        if choices and tuple(values) == DEFAULT_VALUES:  # Lab(vary="workload"): every choice
            values = choices
        self.store = store
        self.weights = weights
        self.corpus = corpus
        self.device = device
        self.resume = resume
        self.calibration = calibration
        self.static = static_mode(static)
        self.live = LiveChart(builder, x=f"knobs.{vary}", static=self.static)
        self.last_error: BaseException | None = None
        self._displayed = False
        self._widget: widgets.Widget | None = None
        self.runner = Runner(
            self._sweep_options(), on_status=self._set_status, on_record=self.live.add, on_error=self._show_error,
            on_busy=self._on_busy)
        self._build_controls(preset, initial, vary, values, budget_bytes, target_s)

    # ------------------------------------------------------------------ controls
    def _build_controls(self, preset, initial: Knobs, vary, values, budget_bytes, target_s):
        wide = {"style": {"description_width": "initial"}}
        gpu = _gpu_available()
        self.preset_control = widgets.Dropdown(
            options=[(name + ("" if gpu or not cfg.needs_gpu else " (needs a GPU)"), name)
                     for name, cfg in PRESETS.items()],
            value=preset, description="preset", layout=widgets.Layout(width="260px"), **wide)
        # one control per Knobs field, generated from knob_fields()
        self.controls: dict[str, widgets.Widget] = {
            name: _make_control(f, getattr(initial, name),
                                choice_notes(preset, name, self.calibration))
            for name, f in self._fields.items()}
        self.vary_control = widgets.Dropdown(options=list(self._fields), value=vary,
                                             description="vary", layout=widgets.Layout(width="200px"),
                                             **wide)
        self.values_control = widgets.Text(value=", ".join(format_value(v) for v in values),
                                           description="values", placeholder="1, 2, 4, 8",
                                           layout=widgets.Layout(width="300px"), **wide)
        self.values_hint = widgets.HTML()
        self.budget_control = widgets.Text(
            value=format_budget(budget_bytes), description="memory budget (MiB)",
            placeholder=format_budget(None), layout=widgets.Layout(width="240px"), **wide)
        self.target_control = widgets.BoundedFloatText(
            value=target_s, min=0.01, max=600.0, step=0.1, description="seconds per point",
            layout=widgets.Layout(width="220px"), **wide)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="measure every value (in the background)")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                          tooltip="stop after the point being measured")
        self.status = widgets.HTML(value="<i>ready: press Run (or call lab.run())</i>")
        self.error_area = widgets.HTML(value="")
        self.chart_area = widgets.VBox([])
        self.run_button.on_click(self._guarded(self._on_run_click))
        self.stop_button.on_click(self._guarded(lambda _button: self.cancel()))
        self.preset_control.observe(self._guarded(self._on_preset_change), names="value")
        self.vary_control.observe(self._guarded(self._on_vary_change), names="value")
        self._sync_vary(vary, reset_values=False)
        self._show_refusal_if_any(preset)

    @property
    def widget(self) -> widgets.Widget:
        """The whole panel as one ipywidgets box (built on first use)."""
        if self._widget is None:
            if not self.static:
                self.chart_area.children = (self.live.widget,)
            knobs = widgets.GridBox(list(self.controls.values()),
                                    layout=widgets.Layout(grid_template_columns="repeat(3, 230px)"))
            self._widget = widgets.VBox([
                widgets.HTML("<b>efflab lab</b> — pick what to vary, press Run; points appear "
                             "as they are measured (theory drawn beside them)"),
                widgets.HBox([self.preset_control, self.vary_control, self.values_control]),
                self.values_hint,
                knobs,
                widgets.HBox([self.budget_control, self.target_control, self.run_button,
                              self.stop_button]),
                self.status,
                self.error_area,
                self.chart_area,
            ])
        return self._widget

    def _ipython_display_(self) -> None:
        self._displayed = True
        if self.static:  # no live widgets headless: say what the panel holds, as text/HTML
            _live.publish({"text/html": self._summary_html(), "text/plain": self._summary_text()})
        else:
            display(self.widget)

    # ------------------------------------------------------------------ callbacks
    def _guarded(self, fn: Callable) -> Callable:
        """Wrap a widget callback: whatever it raises is shown in the panel, not swallowed."""

        def callback(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                self._show_error(e)

        callback.__name__ = getattr(fn, "__name__", "callback")
        return callback

    def _on_preset_change(self, change) -> None:
        self._clear_error()
        self._show_refusal_if_any(change["new"])

    def _on_vary_change(self, change) -> None:
        self._sync_vary(change["new"])

    def _on_run_click(self, _button=None) -> None:
        """Run pressed: read and check the controls here (errors shown at once), then measure
        in a background thread."""
        self._clear_error()
        plan = self.plan()
        refusal = gpu_refusal(plan.preset, self.device)
        if refusal:
            self._show_refusal(refusal)
            return
        self.runner.claim()  # a second click fails here, before touching the running chart
        self._prepare(plan)
        self.runner.start(plan, after=lambda _df: self._finished(plan), claimed=True)

    def _on_busy(self, running: bool) -> None:
        self.run_button.disabled = running or bool(gpu_refusal(self.preset_control.value,
                                                               self.device))
        self.stop_button.disabled = not running

    def _sync_vary(self, vary: str, reset_values: bool = True) -> None:
        """The varied knob's own control is disabled (the values box sets it); choosing a
        Literal knob to vary fills the values box with its choices."""
        for name, control in self.controls.items():
            control.disabled = name == vary
        choices = self._fields[vary]["choices"]
        if choices:
            if reset_values:
                self.values_control.value = ", ".join(choices)
            self.values_hint.value = f"<small>choices of {vary}: {', '.join(choices)}</small>"
        else:
            self.values_hint.value = (f"<small>comma-separated values of {vary}"
                                      + (f" (or {AUTO})" if self._fields[vary]["optional"] else "")
                                      + "</small>")

    # ------------------------------------------------------------------ settings <-> controls
    def settings(self) -> PanelSettings:
        """The controls' current values, as plain data (see :mod:`efflab.ui.panel_state`)."""
        return PanelSettings(
            preset=self.preset_control.value, vary=self.vary_control.value,
            values=self.values_control.value, budget=self.budget_control.value,
            target_s=float(self.target_control.value),
            knobs={name: control.value for name, control in self.controls.items()},
            resume=self.resume)

    def _show_settings(self, s: PanelSettings) -> None:
        """Put settings into the controls (only those that differ, so observers fire once)."""
        for name, value in s.knobs.items():
            if self.controls[name].value != value:
                self.controls[name].value = value
        for control, value in ((self.preset_control, s.preset), (self.vary_control, s.vary),
                               (self.values_control, s.values), (self.budget_control, s.budget),
                               (self.target_control, s.target_s)):
            if control.value != value:
                control.value = value
        self.resume = s.resume

    def plan(self) -> Plan:
        """Read every control into a checked :class:`Plan` (ConfigError names a bad field)."""
        return make_plan(self.settings())

    # ------------------------------------------------------------------ the plain calls
    def run(self, vary: str | None = None, values: Sequence | None = None, *,
            preset: str | None = None, budget_bytes: int | None | str = UNCHANGED,
            target_s: float | None = None, resume: bool | None = None,
            **knob_overrides) -> pd.DataFrame:
        """Set the controls named, then measure synchronously — exactly what Run does.

        Returns the sweep's DataFrame (one row per value). A preset that needs a GPU on a
        machine without one is not run: the refusal is shown and an empty DataFrame returned.
        In static mode the finished dashboard is displayed as SVG+PNG. Errors are shown in the
        panel and raised.
        """
        try:
            self._clear_error()
            self._show_settings(apply_run_args(self.settings(), vary, values, preset,
                                               budget_bytes, target_s, resume, **knob_overrides))
            plan = self.plan()
            refusal = gpu_refusal(plan.preset, self.device)
            if refusal:
                self._show_refusal(refusal)
                if self.static or not self._displayed:
                    _live.publish({"text/plain": f"not run: {refusal}"})
                return pd.DataFrame()
            if not self.static and not self._displayed:
                display(self)  # widget mode: show the panel so the points appear live
            self.runner.claim()
            self._prepare(plan)
            df = self.runner.run(plan, claimed=True)
            self._finished(plan)
            return df
        except Exception as e:
            self._show_error(e)
            raise

    def cancel(self) -> bool:
        """Stop the background run after the point being measured (finished points stay
        stored and drawn); False if nothing is running."""
        return self.runner.cancel()

    @property
    def running(self) -> bool:
        """Whether a run is in progress (the Run button's thread or a ``run()`` call)."""
        return self.runner.running

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the Run button's background run finishes; False if ``timeout`` passed."""
        return self.runner.wait(timeout)

    def _sweep_options(self) -> dict:
        """What every sweep gets besides the plan (read at each run: they may be changed)."""
        return {"store": self.store, "weights": self.weights, "corpus": self.corpus,
                "device": self.device, "calibration": self.calibration}

    def _prepare(self, plan: Plan) -> None:
        """Before a run: the current sweep options; the live chart starts empty, with the
        varied knob on x."""
        self.runner.sweep_options = self._sweep_options()
        self.live.x = f"knobs.{plan.vary}"
        self.live.clear()

    def _finished(self, plan: Plan) -> None:
        """After a run, in static mode: the summary with every failure, then the chart."""
        if self.static:
            _live.publish({"text/plain": failures_text(self.runner.last_summary or "", plan,
                                                        self.records)})
            self.live.show()

    # ------------------------------------------------------------------ results
    @property
    def records(self) -> list[dict]:
        """The records of the latest run (what the chart shows), in arrival order."""
        return self.runner.records

    def frame(self) -> pd.DataFrame:
        """The latest run's records as the flattened DataFrame (as ``efflab.sweep`` returns)."""
        return records_frame(self.records)

    # ------------------------------------------------------------------ status and errors
    def _set_status(self, text: str) -> None:
        self.status.value = _status_html(text)

    def _show_error(self, e: BaseException) -> None:
        """Show an exception in the panel (with its traceback unless it is a ConfigError)."""
        self.last_error = e
        self.error_area.value = _error_html(e)

    def _show_refusal(self, message: str) -> None:
        self.error_area.value = _refusal_html(message)
        self._set_status("refused: nothing was measured")

    def _show_refusal_if_any(self, preset: str) -> None:
        refusal = gpu_refusal(preset, self.device)
        if refusal:
            self._show_refusal(refusal)
        self.run_button.disabled = bool(refusal) or self.running

    def _clear_error(self) -> None:
        self.error_area.value = ""
        self.last_error = None

    # ------------------------------------------------------------------ showing the settings
    def _summary_text(self) -> str:
        rows = "\n".join(f"  {k}: {v}" for k, v in settings_rows(self.settings()).items())
        return f"efflab Lab (static mode: call lab.run() to measure)\n{rows}"

    def _summary_html(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}"
                       f"</code></td></tr>" for k, v in settings_rows(self.settings()).items())
        x = axis_label(f"knobs.{self.vary_control.value}")
        return (f"<div><b>efflab lab</b> — static mode: the controls are not interactive here; "
                f"<code>lab.run()</code> measures and draws the dashboard against {html.escape(x)}."
                f"<table>{rows}</table></div>")

    def __repr__(self) -> str:
        return f"<efflab.Lab {self.preset_control.value}, vary {self.vary_control.value}>"


__all__ = ["Lab", "Plan", "gpu_refusal"]
