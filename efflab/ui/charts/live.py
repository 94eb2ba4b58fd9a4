"""A chart that redraws as measurement records arrive — live in JupyterLab, static headless.

``LiveChart(builder, x=...)`` keeps the records received so far and rebuilds its chart with
``builder(frame, x=x)`` (``frame`` is the flattened records DataFrame, as ``efflab.sweep``
returns) every time one arrives. It shows itself in one of two ways:

* **widget mode** (a learner in JupyterLab): an ``alt.JupyterChart`` with Vega loaded from the
  vl-convert package (``JupyterChart.enable_offline()``), so it draws with no network; each new
  record replaces ``jchart.chart`` and the view redraws in place.
* **static mode** (papermill, the HTML report, a terminal): one display bundle holding the chart
  as ``image/svg+xml`` and ``image/png`` plus a ``text/plain`` fallback, drawn by vl-convert.
  The executed notebook and its nbconvert HTML then show the chart with no JavaScript at all.

``static=None`` picks static mode when the environment variable ``EFFLAB_STATIC_CHARTS=1`` is
set (the test-suite and ``efflab report`` set it for papermill runs), else widget mode.

A sweep in a notebook cell::

    live = LiveChart(charts.dashboard, x="knobs.batch_size")
    live.show()                       # widget mode: the (empty) chart appears now
    df = efflab.sweep(..., on_record=live.add)
    live.finish()                     # static mode: the finished chart appears now

Plain charts get the same treatment from :func:`show` and :func:`use_offline_renderer`.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Iterable

import altair as alt
import pandas as pd

from efflab.core.records import records_frame
from efflab.ui.charts.export import chart_title, save_chart, static_bundle
from efflab.ui.charts.records import dashboard

STATIC_ENV = "EFFLAB_STATIC_CHARTS"

def static_mode(static: bool | None = None) -> bool:
    """Resolve a ``static`` argument: ``None`` means "is ``EFFLAB_STATIC_CHARTS=1`` set?"."""
    if static is None:
        return os.environ.get(STATIC_ENV, "").strip() == "1"
    if not isinstance(static, bool):
        raise TypeError(f"static must be True, False or None (from ${STATIC_ENV}); got {static!r}")
    return static


def enable_offline_widgets() -> None:
    """Make ``alt.JupyterChart`` load Vega from the installed vl-convert package, not a CDN
    (JupyterLab with no network shows "Error loading script" otherwise).

    Called before every widget is made: altair's own "jupyter" renderer switches JupyterChart
    back online when it is enabled without ``offline=True``. Cheap once done.
    """
    alt.JupyterChart.enable_offline()


def _static_renderer(spec: dict, **_options) -> tuple[dict, dict]:
    """An altair renderer: the chart as SVG + PNG + text, drawn by vl-convert."""
    return static_bundle(spec)


def use_offline_renderer(static: bool | None = None) -> str:
    """Make charts shown the plain way (``display(chart)``, a chart as a cell's last value)
    draw with no network; returns the altair renderer enabled.

    Static mode: the "efflab-static" renderer (SVG + PNG through vl-convert), which papermill
    keeps and nbconvert's HTML shows. Widget mode: altair's "jupyter" renderer with
    ``offline=True`` (an ``alt.JupyterChart`` with Vega from vl-convert). altair's default
    renderer would load Vega from a CDN. ``import efflab.ui.charts`` calls this once.
    """
    if static_mode(static):
        alt.renderers.register("efflab-static", _static_renderer)
        alt.renderers.enable("efflab-static")
        return "efflab-static"
    alt.renderers.enable("jupyter", offline=True)
    return "jupyter"


def show(chart, static: bool | None = None) -> None:
    """Display one altair chart offline: static images in static mode, else a JupyterChart."""
    if static_mode(static):
        if _in_ipython():
            publish(*static_bundle(chart))
        else:
            print(f"<efflab chart: {chart_title(chart)}>")
        return
    from IPython.display import display

    enable_offline_widgets()
    display(alt.JupyterChart(chart, embed_options={"renderer": "svg"}))


def _in_ipython() -> bool:
    from IPython import get_ipython

    return get_ipython() is not None


def publish(data: dict, metadata: dict | None = None) -> None:
    """Show a raw display bundle: in IPython/Jupyter as a display output, elsewhere (a plain
    script, a terminal) by printing its ``text/plain`` part instead of the whole bundle."""
    if not _in_ipython():
        print(data.get("text/plain", ""))
        return
    from IPython.display import display

    display(data, metadata=metadata or {}, raw=True)


def _takes_x(builder: Callable) -> bool:
    """Whether ``builder`` accepts an ``x=`` keyword (chart builders do; training curves don't)."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume the chart-builder shape
        return True
    return "x" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class LiveChart:
    """Records in, a chart out, redrawn on every :meth:`add`.

    ``builder(frame, x=x, **options)`` draws the chart from the records DataFrame (any builder
    of :mod:`efflab.ui.charts.charts`; with ``x=None`` it is called as ``builder(frame, **options)``,
    e.g. ``LiveChart(training_curve_chart, x=None)`` fed with ``{"step", "train_loss"}`` dicts).
    ``static``: see the module docstring. Thread-safe: a background sweep may call :meth:`add`
    while the notebook displays the chart.
    """

    def __init__(self, builder: Callable[..., alt.TopLevelMixin] = dashboard,
                 x: str | None = "knobs.batch_size", static: bool | None = None,
                 records: Iterable[dict] = (), **options):
        if not callable(builder):
            raise TypeError(f"builder must be a chart builder such as efflab.ui.charts.dashboard, "
                            f"got {builder!r}")
        if x is not None and not _takes_x(builder):
            raise TypeError(f"builder {getattr(builder, '__name__', builder)!r} takes no x=; "
                            "pass x=None")
        self.builder = builder
        self.x = x
        self.static = static_mode(static)
        self.options = options
        self._records: list[dict] = []
        self._lock = threading.RLock()
        self._jchart = None  # the alt.JupyterChart, made on first use in widget mode
        self._static_shown: int | None = None  # how many records the last static image held
        self.add_many(records)

    # ------------------------------------------------------------------ records
    @property
    def records(self) -> list[dict]:
        """A copy of the records received so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def add(self, record: dict) -> None:
        """Add one record (a dict, as ``measure`` returns) and redraw."""
        if not isinstance(record, dict):
            raise TypeError(f"LiveChart.add takes a record dict, got {type(record).__name__}")
        with self._lock:
            self._records.append(record)
        self.refresh()

    def add_many(self, records: Iterable[dict]) -> None:
        """Add several records and redraw once."""
        records = list(records)
        for r in records:
            if not isinstance(r, dict):
                raise TypeError(f"LiveChart.add_many takes record dicts, got {type(r).__name__}")
        if not records:
            return
        with self._lock:
            self._records.extend(records)
        self.refresh()

    def clear(self) -> None:
        """Forget every record (a new sweep starts) and redraw the empty chart."""
        with self._lock:
            self._records.clear()
        self.refresh()

    def frame(self) -> pd.DataFrame:
        """The records as the flattened DataFrame the builders take."""
        return records_frame(self.records)

    # ------------------------------------------------------------------ the chart
    def chart(self) -> alt.TopLevelMixin:
        """Build the chart of the records received so far."""
        frame = self.frame()
        if self.x is None:
            return self.builder(frame, **self.options)
        return self.builder(frame, x=self.x, **self.options)

    @property
    def widget(self):
        """The ``alt.JupyterChart`` widget (widget mode only), drawn offline as SVG."""
        if self.static:
            raise RuntimeError("this LiveChart is in static mode (EFFLAB_STATIC_CHARTS=1 or "
                               "static=True): it has no widget; display it or call save()")
        with self._lock:
            if self._jchart is None:
                enable_offline_widgets()
                self._jchart = alt.JupyterChart(self.chart(), embed_options={"renderer": "svg"})
            return self._jchart

    def refresh(self) -> None:
        """Redraw the widget from the current records (nothing to do in static mode)."""
        with self._lock:
            if self._jchart is not None:
                self._jchart.chart = self.chart()

    # ------------------------------------------------------------------ showing it
    def _text(self) -> str:
        records = self.records
        failed = sum(1 for r in records if r.get("status", "ok") != "ok")
        return (f"<efflab LiveChart: {len(records)} record(s), {failed} failed or refused; "
                "the chart is in the image/svg+xml and image/png outputs>")

    def mimebundle(self) -> tuple[dict, dict]:
        """The static display bundle ``(data, metadata)``: SVG, PNG and a text fallback."""
        return static_bundle(self.chart(), text=self._text())

    def show(self) -> None:
        """Display the chart in the notebook: the live widget, or in static mode the static
        images of the records so far (nothing yet when there are none: see :meth:`finish`)."""
        if self.static:
            n = len(self.records)
            if n == 0:
                return  # an empty image would only clutter the executed notebook
            if _in_ipython():
                publish(*self.mimebundle())
            else:  # a plain script: no images to show, don't render them
                print(self._text())
            self._static_shown = n
        else:
            from IPython.display import display

            display(self.widget)

    def finish(self) -> None:
        """The records are all in. Static mode: display the final chart (unless it was just
        displayed with these records). Widget mode: nothing more to do (it redrew live)."""
        if self.static:
            if self._static_shown != len(self.records):
                self.show()
        else:
            self.refresh()

    def _ipython_display_(self) -> None:
        self.show()

    def save(self, path) -> None:
        """Write the current chart to ``path``: .svg, .png, .html (offline: Vega inlined) or
        .json (the Vega-Lite spec)."""
        save_chart(self.chart(), path)

    def __repr__(self) -> str:
        mode = "static" if self.static else "widget"
        name = getattr(self.builder, "__name__", repr(self.builder))
        return f"LiveChart({name}, x={self.x!r}, {mode}, {len(self.records)} record(s))"


__all__ = ["LiveChart", "static_mode", "enable_offline_widgets", "use_offline_renderer", "show",
           "publish", "STATIC_ENV"]
