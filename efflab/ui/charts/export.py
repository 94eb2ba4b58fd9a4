"""Charts out of the notebook: SVG, PNG and offline HTML, a static display bundle, files.

Everything goes through vl-convert, which carries its own copy of Vega: no network, no
browser. A chart is an altair chart or its Vega-Lite dict.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import altair as alt
import vl_convert as vlc


def _vl_version() -> str | None:
    """The Vega-Lite version altair writes (``v6.4.1`` -> ``6.4``), if vl-convert has it."""
    major_minor = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return major_minor if major_minor in vlc.get_vegalite_versions() else None


def _spec(chart) -> dict:
    if isinstance(chart, dict):
        return chart
    if not hasattr(chart, "to_dict"):
        raise TypeError(f"expected an altair chart or a Vega-Lite dict, got {type(chart).__name__}")
    return chart.to_dict()


def _convert(fn_name: str, chart, **kwargs):
    spec = _spec(chart)
    try:
        return getattr(vlc, fn_name)(spec, vl_version=_vl_version(), **kwargs)
    except Exception as e:  # vl-convert reports Vega-Lite errors as bare ValueErrors
        raise RuntimeError(f"vl-convert could not render the chart {chart_title(spec)!r}: {e}") from e


def to_svg(chart) -> str:
    """The chart as an SVG document (rendered by vl-convert, offline)."""
    return _convert("vegalite_to_svg", chart)


def to_png(chart, scale: float = 2.0) -> bytes:
    """The chart as PNG bytes; ``scale=2`` draws at twice the CSS size (sharp on HiDPI)."""
    return _convert("vegalite_to_png", chart, scale=scale)


def to_html(chart) -> str:
    """A standalone HTML page of the interactive chart with Vega's scripts inlined: opens
    with no network."""
    return _convert("vegalite_to_html", chart, bundle=True)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def chart_title(chart) -> str:
    """The chart's title text, or "chart" when it has none."""
    spec = _spec(chart)
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(map(str, title))
    return str(title) if title else "chart"


def static_bundle(chart, text: str | None = None, scale: float = 2.0) -> tuple[dict, dict]:
    """A display bundle that needs no JavaScript: ``(data, metadata)`` for
    ``IPython.display.display(data, metadata=metadata, raw=True)``.

    ``data`` holds ``image/svg+xml``, ``image/png`` (base64, drawn at ``scale`` and shown at
    its CSS size through ``metadata``) and a ``text/plain`` fallback, so an executed notebook
    and its nbconvert HTML show the chart with no network.
    """
    spec = _spec(chart)
    svg = to_svg(spec)
    png = to_png(spec, scale=scale)
    w, h = png_size(png)
    data = {"image/svg+xml": svg,
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": text or f"<efflab chart: {chart_title(spec)}>"}
    metadata = {"image/png": {"width": round(w / scale), "height": round(h / scale)}}
    return data, metadata


def save_chart(chart, path) -> None:
    """Write the chart to ``path``: ``.svg``, ``.png``, ``.html`` (offline) or ``.json`` (spec)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(to_svg(chart), encoding="utf-8")
    elif suffix == ".png":
        path.write_bytes(to_png(chart))
    elif suffix == ".html":
        path.write_text(to_html(chart), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(_spec(chart), indent=1), encoding="utf-8")
    else:
        raise ValueError(f"cannot save a chart as {path.name!r}: the suffix must be one of "
                         ".svg, .png, .html, .json")

__all__ = ["to_svg", "to_png", "to_html", "png_size", "chart_title", "static_bundle", "save_chart"]
