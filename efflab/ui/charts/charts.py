"""Every chart builder in one namespace, as the notebooks use them (``charts.dashboard(df)``).

The code lives in one module per concern; this module only gathers their public names:

* :mod:`efflab.ui.charts.frame` — records -> the tidy frame (short names, labels, reused/noisy marks);
* :mod:`efflab.ui.charts.marks` — the parts every record chart shares (axes, legends, failure
  crosses, hollow reused points, noisy triangles, panels);
* :mod:`efflab.ui.charts.records` — the record charts: throughput, latency, memory, quality, the
  dashboard and the Pareto frontier;
* :mod:`efflab.ui.charts.curves` — training loss curves;
* :mod:`efflab.ui.charts.lessons` — one-off lesson charts (expert load, attention memory, SQNR);
* :mod:`efflab.ui.charts.export` — SVG/PNG/HTML through vl-convert, static display bundles, files.

Nothing here imports torch (chart code never measures).
"""

from efflab.core.records import records_frame
from efflab.ui.charts.curves import compare_curves_chart, training_curve_chart
from efflab.ui.charts.export import (
    chart_title,
    png_size,
    save_chart,
    static_bundle,
    to_html,
    to_png,
    to_svg,
)
from efflab.ui.charts.frame import (
    BUDGET,
    FAILED,
    FRESH,
    MEASURED,
    MIB,
    NOISY,
    PREDICTED_PEAK,
    REUSED,
    STABLE,
    THEORY_ROOFLINE,
    axis_label,
    memory_frame,
)
from efflab.ui.charts.lessons import attention_memory_chart, expert_load_chart, sqnr_chart
from efflab.ui.charts.marks import HEIGHT, WIDTH
from efflab.ui.charts.records import (
    dashboard,
    latency_chart,
    memory_chart,
    pareto_chart,
    quality_chart,
    throughput_chart,
)

__all__ = ["records_frame", "axis_label", "memory_frame", "throughput_chart", "latency_chart",
           "compare_curves_chart", "expert_load_chart", "pareto_chart", "attention_memory_chart",
           "sqnr_chart", "memory_chart", "quality_chart", "training_curve_chart", "dashboard",
           "to_svg", "to_png", "to_html", "png_size", "chart_title", "static_bundle",
           "save_chart", "MIB", "WIDTH", "HEIGHT", "MEASURED", "THEORY_ROOFLINE", "FAILED",
           "PREDICTED_PEAK", "BUDGET", "FRESH", "REUSED", "STABLE", "NOISY"]
