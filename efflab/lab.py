"""The panel a notebook shows: controls for every knob, a Run button, live charts, a status line.

    lab = efflab.Lab(preset="cpu-small", vary="batch_size", values=[1, 2, 4, 8, 16])
    lab                                # the panel (in JupyterLab: widgets and a live dashboard)
    df = lab.run()                     # the same as pressing Run, as one plain synchronous call
    df = lab.run(vary="seq_len", values=[32, 64, 128], batch_size=4)

The controls are generated from ``efflab.config.knob_fields()``, so a knob added to ``Knobs``
gets its control without touching this file. The panel *is* the state: ``run(**overrides)``
sets the controls it names (so the panel shows what ran) and then does what Run does.

Two rules shape the code:

* Widget callbacks never fire under papermill, so everything a widget does is also a plain
  method call (:meth:`Lab.run`); the widgets only call those methods.
* ipywidgets swallows exceptions raised in callbacks (they reach only JupyterLab's log
  console), so every callback and the background worker catch what they raise and show it in
  the panel's error area (:attr:`Lab.error_area`).

The Run button measures in a background thread, so the notebook stays responsive while points
arrive. In static mode (``EFFLAB_STATIC_CHARTS=1``: papermill, the HTML report) ``run()`` shows
the finished dashboard as SVG+PNG instead of a widget.
"""

from __future__ import annotations

import html
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import pandas as pd
import torch
from IPython.display import display

from efflab.config import PRESETS, ConfigError, Knobs, get_preset, knob_fields
from efflab.measurement.hardware import RefusedError, pick_device
from efflab.sweeping import sweep
from efflab.viz import live as _live
from efflab.viz.charts import axis_label, dashboard, records_frame
from efflab.viz.live import LiveChart, static_mode

MIB = 2**20
DEFAULT_VALUES = (1, 2, 4, 8, 16)
AUTO = "auto"  # what a None-able knob's text box shows for None
NO_BUDGET = "none"


@dataclass(frozen=True)
class Plan:
    """One sweep, fully read from the controls and checked: what Run (or ``run()``) measures."""

    preset: str
    base: Knobs
    vary: str
    values: tuple
    budget_bytes: int | None
    target_s: float
    resume: bool

    def describe(self) -> str:
        vals = ", ".join(AUTO if v is None else str(v) for v in self.values)
        budget = f", budget {self.budget_bytes / MIB:,.1f} MiB" if self.budget_bytes else ""
        return f"{self.preset} · {self.base.workload} · {self.vary} ∈ [{vals}]{budget}"


def _gpu_available() -> bool:
    return torch.cuda.is_available()


def gpu_refusal(preset: str, device: str | None = None) -> str | None:
    """Why ``preset`` cannot run on this machine (a preset that needs a GPU, none here), else
    None. The message is the one ``measure`` would record, from ``pick_device``."""
    cfg = get_preset(preset)
    try:
        pick_device(cfg, device)
    except RefusedError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- knob controls

def _parse_optional(name: str, text) -> int | float | str | None:
    """A None-able knob's text box: "auto" (or empty) is None, else an int (or float, or str)."""
    if text is None:
        return None
    s = str(text).strip()
    if s == "" or s.lower() in (AUTO, "none"):
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    raise ConfigError(name, s, f"a number or {AUTO!r}")


def _parse_scalar(field: dict, text: str):
    """One value typed for ``field`` (as in the values box): converted to the knob's type."""
    name, default, choices = field["name"], field["default"], field["choices"]
    s = text.strip()
    if choices:
        return s.strip("'\"")
    if field["optional"]:
        return _parse_optional(name, s)
    if isinstance(default, bool):
        if s.lower() in ("true", "1", "yes", "on"):
            return True
        if s.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(name, s, "true or false")
    if isinstance(default, int):
        try:
            return int(s)
        except ValueError:
            raise ConfigError(name, s, "an integer") from None
    if isinstance(default, float):
        try:
            return float(s)
        except ValueError:
            raise ConfigError(name, s, "a number") from None
    return s


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
        return widgets.Text(value=AUTO if value is None else str(value), placeholder=AUTO,
                            tooltip=f"{name}: a number, or '{AUTO}' for the default", **common)
    if isinstance(default, bool):
        return widgets.Checkbox(value=bool(value), indent=False, **common)
    if isinstance(default, int):
        return widgets.IntText(value=int(value), **common)
    if isinstance(default, float):
        return widgets.FloatText(value=float(value), **common)
    return widgets.Text(value=str(value), **common)


def _format_value(v) -> str:
    return AUTO if v is None else str(v)


# ----------------------------------------------------------------------------- the panel

class Lab:
    """The notebook panel: knob controls, a preset choice, Run, a status line, live charts.

    ``vary``/``values``: the knob the sweep varies and its values (the chart's x axis).
    ``store``: where records are kept (a :class:`efflab.Store`, a folder or ``None`` for the
    default ``results/``); a configuration already stored is not measured again unless
    ``resume=False``. ``budget_bytes`` refuses configurations predicted to need more memory.
    ``target_s``: seconds of timing per point. ``static``: see :mod:`efflab.viz.live`.
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
        get_preset(preset)  # an unknown preset raises ConfigError listing the presets
        self._fields = {f["name"]: f for f in knob_fields()}
        initial = Knobs().replace(workload=workload, **knob_defaults)  # checked, names the field
        self._check_vary(vary)
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
        self._records: list[dict] = []
        self._lock = threading.Lock()
        self._running = False
        self._thread: threading.Thread | None = None
        self._displayed = False
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
            name: _make_control(f, getattr(initial, name), self._choice_notes(preset, name))
            for name, f in self._fields.items()}
        self.vary_control = widgets.Dropdown(options=list(self._fields), value=vary,
                                             description="vary", layout=widgets.Layout(width="200px"),
                                             **wide)
        self.values_control = widgets.Text(value=", ".join(_format_value(v) for v in values),
                                           description="values", placeholder="1, 2, 4, 8",
                                           layout=widgets.Layout(width="300px"), **wide)
        self.values_hint = widgets.HTML()
        self.budget_control = widgets.Text(
            value=NO_BUDGET if budget_bytes is None else f"{budget_bytes / MIB:g}",
            description="memory budget (MiB)", placeholder=NO_BUDGET,
            layout=widgets.Layout(width="240px"), **wide)
        self.target_control = widgets.BoundedFloatText(
            value=target_s, min=0.01, max=600.0, step=0.1, description="seconds per point",
            layout=widgets.Layout(width="220px"), **wide)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play",
                                         tooltip="measure every value (in the background)")
        self.status = widgets.HTML(value="<i>ready: press Run (or call lab.run())</i>")
        self.error_area = widgets.HTML(value="")
        self.chart_area = widgets.VBox([])
        self.run_button.on_click(self._guarded(self._on_run_click))
        self.preset_control.observe(self._guarded(self._on_preset_change), names="value")
        self.vary_control.observe(self._guarded(self._on_vary_change), names="value")
        self._sync_vary(vary, reset_values=False)
        self._show_refusal_if_any(preset)
        self._widget: widgets.Widget | None = None

    def _choice_notes(self, preset: str, name: str) -> dict:
        """Short reasons shown beside choices this machine refuses (needs a calibration)."""
        if name != "precision" or self.calibration is None:
            return {}
        from efflab.techniques.precision import availability_table

        table = availability_table(get_preset(preset), Knobs(batch_size=8), self.calibration)
        return {r["precision"]: f"refused here: {r['measured peak GFLOP/s']:.1f} GFLOP/s"
                for _, r in table.iterrows() if not r["runs here"]}

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
                widgets.HBox([self.budget_control, self.target_control, self.run_button]),
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
        self._claim()
        self._thread = threading.Thread(target=self._worker, args=(plan,), daemon=True,
                                        name="efflab-lab-run")
        self._thread.start()

    def _worker(self, plan: Plan) -> None:
        try:
            self._execute(plan, claimed=True)
        except Exception as e:  # a thread's exception would vanish: show it in the panel
            self._show_error(e)

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

    # ------------------------------------------------------------------ reading the panel
    def _check_vary(self, vary: str) -> None:
        if vary not in self._fields:
            raise ConfigError("vary", vary, "one of " + ", ".join(self._fields))

    def _read_knob(self, name: str):
        control, field = self.controls[name], self._fields[name]
        if field["optional"]:
            return _parse_optional(name, control.value)
        return control.value

    def _read_values(self, vary: str) -> tuple:
        text = self.values_control.value
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        if not parts:
            raise ConfigError(f"values of {vary}", text, "a comma-separated list such as 1, 2, 4")
        return tuple(_parse_scalar(self._fields[vary], p) for p in parts)

    def _read_budget(self) -> int | None:
        text = self.budget_control.value.strip()
        if text.lower() in ("", NO_BUDGET, AUTO):
            return None
        try:
            mib = float(text)
        except ValueError:
            mib = -1.0
        if mib <= 0:
            raise ConfigError("memory budget (MiB)", text, f"a positive number of MiB or {NO_BUDGET!r}")
        return int(mib * MIB)

    def plan(self) -> Plan:
        """Read every control into a checked :class:`Plan` (ConfigError names a bad field)."""
        vary = self.vary_control.value
        self._check_vary(vary)
        base = Knobs(**{name: self._read_knob(name) for name in self._fields})
        values = self._read_values(vary)
        for v in values:  # each value checked now, naming the knob, before any work
            base.replace(**{vary: v})
        return Plan(preset=self.preset_control.value, base=base, vary=vary, values=values,
                    budget_bytes=self._read_budget(), target_s=float(self.target_control.value),
                    resume=self.resume)

    # ------------------------------------------------------------------ the plain call
    def run(self, vary: str | None = None, values: Sequence | None = None, *,
            preset: str | None = None, budget_bytes: int | None | str = "unchanged",
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
            self._apply(vary, values, preset, budget_bytes, target_s, resume, knob_overrides)
            plan = self.plan()
            refusal = gpu_refusal(plan.preset, self.device)
            if refusal:
                self._show_refusal(refusal)
                if self.static or not self._displayed:
                    _live.publish({"text/plain": f"not run: {refusal}"})
                return pd.DataFrame()
            if not self.static and not self._displayed:
                display(self)  # widget mode: show the panel so the points appear live
            self._claim()
            return self._execute(plan, claimed=True)
        except Exception as e:
            self._show_error(e)
            raise

    def _apply(self, vary, values, preset, budget_bytes, target_s, resume, overrides) -> None:
        """Put ``run()``'s arguments into the controls (checked first, naming the field)."""
        if overrides:
            checked = Knobs().replace(**overrides)  # unknown names and bad values raise here
            for name in overrides:
                value = getattr(checked, name)
                control = self.controls[name]
                control.value = _format_value(value) if self._fields[name]["optional"] else value
        if preset is not None:
            get_preset(preset)
            self.preset_control.value = preset
        if vary is not None:
            self._check_vary(vary)
            self.vary_control.value = vary
        if values is not None:
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ConfigError("values", values, "a non-empty list such as [1, 2, 4]")
            self.values_control.value = ", ".join(_format_value(v) for v in values)
        if budget_bytes != "unchanged":
            if budget_bytes is not None and (not isinstance(budget_bytes, int) or budget_bytes <= 0):
                raise ConfigError("budget_bytes", budget_bytes, "a positive integer or None")
            self.budget_control.value = (NO_BUDGET if budget_bytes is None
                                         else f"{budget_bytes / MIB:g}")
        if target_s is not None:
            if not isinstance(target_s, (int, float)) or not 0.01 <= target_s <= 600:
                raise ConfigError("target_s", target_s, "a number of seconds in [0.01, 600]")
            self.target_control.value = float(target_s)
        if resume is not None:
            self.resume = bool(resume)

    # ------------------------------------------------------------------ measuring
    def _claim(self) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError("a run is already in progress; wait for it (lab.wait()) "
                                   "before starting another")
            self._running = True
        self.run_button.disabled = True

    def _release(self) -> None:
        with self._lock:
            self._running = False
        self.run_button.disabled = bool(gpu_refusal(self.preset_control.value, self.device))

    @property
    def running(self) -> bool:
        """Whether a run is in progress (the Run button's thread or a ``run()`` call)."""
        return self._running

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the Run button's background run finishes; False if ``timeout`` passed."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _execute(self, plan: Plan, claimed: bool = False) -> pd.DataFrame:
        """Measure ``plan`` now, feeding the live chart as records arrive."""
        if not claimed:
            self._claim()
        t0 = time.perf_counter()
        total = len(plan.values)
        try:
            with self._lock:
                self._records = []
            self.live.x = f"knobs.{plan.vary}"
            self.live.clear()
            self._set_status(f"measuring {plan.describe()}: 0/{total} …")

            def on_record(rec: dict) -> None:
                with self._lock:
                    self._records.append(rec)
                    done = len(self._records)
                try:  # draw first, so the status never runs ahead of the chart
                    self.live.add(rec)
                except Exception as e:  # a chart that fails to draw must not stop the sweep
                    self._show_error(e)
                self._set_status(f"{done}/{total} {'from the store' if rec.get('reused') else 'measured'}"
                                 f" · {plan.describe()} · last: "
                                 f"{self._describe_record(rec, plan.vary)}")

            df = sweep(plan.base, {plan.vary: list(plan.values)}, preset=plan.preset,
                       store=self.store, budget_bytes=plan.budget_bytes,
                       weights=self.weights, corpus=self.corpus, device=self.device,
                       target_s=plan.target_s, resume=plan.resume, progress=False,
                       on_record=on_record, name=f"lab:{plan.preset}:{plan.vary}",
                       calibration=self.calibration)
        except BaseException:
            self._set_status(f"<b>failed</b> after {time.perf_counter() - t0:.1f} s "
                             f"({len(self._records)}/{total} measured) — see the error below")
            raise
        finally:
            self._release()
        summary = self._summary(plan, time.perf_counter() - t0)
        self._set_status(summary)
        if self.static:
            _live.publish({"text/plain": self._failures_text(summary)})
            self.live.show()
        return df

    # ------------------------------------------------------------------ results
    @property
    def records(self) -> list[dict]:
        """The records of the latest run (what the chart shows), in arrival order."""
        with self._lock:
            return list(self._records)

    def frame(self) -> pd.DataFrame:
        """The latest run's records as the flattened DataFrame (as ``efflab.sweep`` returns)."""
        return records_frame(self.records)

    # ------------------------------------------------------------------ status and errors
    def _describe_record(self, rec: dict, vary: str) -> str:
        value = _format_value(rec.get("knobs", {}).get(vary))
        head = f"{vary}={value}"
        if rec.get("status") != "ok":
            return f"{head} → {rec.get('status')}: {rec.get('message') or ''}"
        tput, lat = rec.get("throughput") or {}, rec.get("latency_ms") or {}
        tps = tput.get("tokens_per_s")
        if tps is None:
            return f"{head} → ok"
        return f"{head} → {tps:,.0f} tokens/s (median of {lat.get('n', '?')} timings)"

    def _summary(self, plan: Plan, seconds: float) -> str:
        records = self.records
        ok = sum(1 for r in records if r.get("status") == "ok")
        failed = {}
        for r in records:
            if r.get("status") != "ok":
                failed[r.get("status")] = failed.get(r.get("status"), 0) + 1
        extra = "".join(f", {n} {s}" for s, n in sorted(failed.items()))
        reused = sum(1 for r in records if r.get("reused"))
        again = (f"; {reused} reused from the store (identical settings are not measured "
                 "again — change a knob or use resume=False)" if reused else "")
        verb = "ready" if reused else "measured"
        return (f"done: {len(records)}/{len(plan.values)} {verb} in {seconds:.1f} s "
                f"({ok} ok{extra}{again}) · {plan.describe()}")

    def _failures_text(self, summary: str) -> str:
        lines = [summary]
        for r in self.records:
            if r.get("status") != "ok":
                lines.append(f"  {_format_value(r.get('knobs', {}).get(self.vary_control.value))}: "
                             f"{r.get('status')} — {r.get('message')}")
        return "\n".join(lines)

    def _set_status(self, text: str) -> None:
        self.status.value = f"<span style='font-family:monospace'>{text}</span>"

    def _show_error(self, e: BaseException) -> None:
        """Show an exception in the panel (with its traceback unless it is a ConfigError)."""
        self.last_error = e
        head = html.escape(f"{type(e).__name__}: {e}")
        tb = "" if isinstance(e, ConfigError) else (
            "<details><summary>traceback</summary><pre style='font-size:11px'>"
            + html.escape("".join(traceback.format_exception(type(e), e, e.__traceback__)))
            + "</pre></details>")
        self.error_area.value = (f"<div style='color:#a40000;border-left:4px solid #d62728;"
                                 f"padding:4px 8px'><b>error</b> — {head}{tb}</div>")

    def _show_refusal(self, message: str) -> None:
        self.error_area.value = (f"<div style='color:#8a4b00;border-left:4px solid #ff7f0e;"
                                 f"padding:4px 8px'><b>not run here</b> — "
                                 f"{html.escape(message)}</div>")
        self._set_status("refused: nothing was measured")

    def _show_refusal_if_any(self, preset: str) -> None:
        refusal = gpu_refusal(preset, self.device)
        if refusal:
            self._show_refusal(refusal)
        self.run_button.disabled = bool(refusal) or self._running

    def _clear_error(self) -> None:
        self.error_area.value = ""
        self.last_error = None

    # ------------------------------------------------------------------ showing the settings
    def _settings(self) -> dict:
        knobs = {name: _format_value(self._read_knob(name)) if self._fields[name]["optional"]
                 else self.controls[name].value for name in self._fields}
        return {"preset": self.preset_control.value, "vary": self.vary_control.value,
                "values": self.values_control.value, "memory budget (MiB)":
                self.budget_control.value, "seconds per point": self.target_control.value,
                **{f"knob {k}": v for k, v in knobs.items() if k != self.vary_control.value}}

    def _summary_text(self) -> str:
        rows = "\n".join(f"  {k}: {v}" for k, v in self._settings().items())
        return f"efflab Lab (static mode: call lab.run() to measure)\n{rows}"

    def _summary_html(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}"
                       f"</code></td></tr>" for k, v in self._settings().items())
        x = axis_label(f"knobs.{self.vary_control.value}")
        return (f"<div><b>efflab lab</b> — static mode: the controls are not interactive here; "
                f"<code>lab.run()</code> measures and draws the dashboard against {html.escape(x)}."
                f"<table>{rows}</table></div>")

    def __repr__(self) -> str:
        return f"<efflab.Lab {self.preset_control.value}, vary {self.vary_control.value}>"


__all__ = ["Lab", "Plan", "gpu_refusal"]
