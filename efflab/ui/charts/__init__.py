"""Charts and live views of measurement records (altair only; nothing here imports torch).

* :mod:`efflab.ui.charts.charts` — every chart builder in one namespace (``charts.dashboard(df)``);
  the code lives in :mod:`~efflab.ui.charts.frame` (records -> tidy frame), :mod:`~efflab.ui.charts.marks`
  (shared parts: axes, legends, failures, reused and noisy marks), :mod:`~efflab.ui.charts.records`
  (throughput, latency, memory, quality, dashboard, Pareto), :mod:`~efflab.ui.charts.curves`
  (training curves), :mod:`~efflab.ui.charts.lessons` (one-off lesson charts) and
  :mod:`~efflab.ui.charts.export` (offline SVG/PNG/HTML).
* :mod:`efflab.ui.charts.finetune` (lesson 16) and :mod:`efflab.ui.charts.precision` (lesson 02's
  loss scale) — charts over one study table each.
* :mod:`efflab.ui.charts.live` — :class:`LiveChart`, a chart that redraws as records arrive: an
  offline ``alt.JupyterChart`` widget in JupyterLab, a static SVG+PNG image headless.

Importing this package makes altair draw offline (:func:`use_offline_renderer`): a chart shown
the plain way (``display(chart)``) becomes static SVG+PNG when ``EFFLAB_STATIC_CHARTS=1``
(papermill, the HTML report) and an offline JupyterChart otherwise — altair's default renderer
would fetch Vega from a CDN and draw nothing without a network.
"""

from efflab.ui.charts.charts import (
    attention_memory_chart,
    compare_curves_chart,
    dashboard,
    expert_load_chart,
    latency_chart,
    memory_chart,
    pareto_chart,
    quality_chart,
    records_frame,
    save_chart,
    sqnr_chart,
    static_bundle,
    throughput_chart,
    to_html,
    to_png,
    to_svg,
    training_curve_chart,
)
from efflab.ui.charts.finetune import accumulation_memory_chart, largest_batch_chart
from efflab.ui.charts.live import LiveChart, show, static_mode, use_offline_renderer
from efflab.ui.charts.precision import loss_scale_chart

use_offline_renderer()

__all__ = ["attention_memory_chart", "compare_curves_chart", "dashboard", "expert_load_chart",
           "latency_chart", "memory_chart", "pareto_chart", "quality_chart", "records_frame",
           "save_chart", "sqnr_chart", "static_bundle", "throughput_chart", "to_html", "to_png",
           "to_svg", "training_curve_chart", "LiveChart", "show", "static_mode",
           "use_offline_renderer", "accumulation_memory_chart", "largest_batch_chart",
           "loss_scale_chart"]
