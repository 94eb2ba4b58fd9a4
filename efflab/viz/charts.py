"""Every chart builder in one namespace, as the notebooks use them (``charts.dashboard(df)``).

The code lives in one module per concern; this module only gathers their public names:

* :mod:`efflab.viz.frame` — records -> the tidy frame (short names, labels, reused/noisy marks);
* :mod:`efflab.viz.marks` — the parts every record chart shares (axes, legends, failure
  crosses, hollow reused points, noisy triangles, panels);
* :mod:`efflab.viz.records` — the record charts: throughput, latency, memory, quality, the
  dashboard and the Pareto frontier;
* :mod:`efflab.viz.curves` — training loss curves;
* :mod:`efflab.viz.lessons` — one-off lesson charts (expert load, attention memory, SQNR);
* :mod:`efflab.viz.export` — SVG/PNG/HTML through vl-convert, static display bundles, files.

Nothing here imports torch (chart code never measures).
"""

from efflab.records import records_frame
from efflab.viz.curves import compare_curves_chart, training_curve_chart
from efflab.viz.export import (
    chart_title,
    png_size,
    save_chart,
    static_bundle,
    to_html,
    to_png,
    to_svg,
)
from efflab.viz.frame import (
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
from efflab.viz.lessons import attention_memory_chart, expert_load_chart, sqnr_chart
from efflab.viz.marks import HEIGHT, WIDTH
from efflab.viz.records import (
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
