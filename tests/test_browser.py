"""The lessons in a real browser: JupyterLab + Debian's Chromium, Run All, assertions on the DOM.

A lesson that passes headless (papermill, static charts) can still show a learner a blank chart
or a widget that never renders. Here each lesson runs the way a learner runs it: its SMOKE copy
is opened in JupyterLab (no token, loopback, offline, throw-away settings), Run > Run All Cells
is clicked, and the page is read:

* no cell shows an error, and every code cell ran;
* every chart is drawn: SVG marks inside each ``.vega-embed`` (no "Error loading script", no
  "VegaLite" placeholder: the charts are offline ``alt.JupyterChart`` widgets);
* every widget view rendered (no "Error displaying widget", no "Loading widget...");
* the page asked nothing of any host but the lab's own (offline means offline);
* where the lesson has a Lab panel: its Run button measures a new point and the chart's marks
  grow; a bad value typed into the panel shows the ConfigError inside the panel; JupyterLab's
  log console holds no widget-callback traceback.

``make test`` runs two lessons (the tour and a technique lesson); ``make test-browser``
(``EFFLAB_BROWSER_NOTEBOOKS=all``) runs every lesson. Screenshots go to ``reports/browser/``.
Without Chromium the tests are skipped locally (``EFFLAB_SKIP_BROWSER=1`` skips them
explicitly); under CI (``CI=true``) a missing browser fails instead.
"""

from __future__ import annotations

import os
import re
import time

import browser_support as bs
import pytest

SUITE = ("00_tour.ipynb", "03_checkpointing.ipynb")
# charts each suite lesson must draw at least (the tour: training curve + the Lab's dashboard)
MIN_CHARTS = {"00_tour.ipynb": 2, "03_checkpointing.ipynb": 1}
PANEL_LESSONS = {"00_tour.ipynb"}  # lessons that must show the Lab panel
CHART_TIMEOUT_S = 90  # how long a chart may take to redraw in the page
RUN_ALL_TIMEOUT_S = float(os.environ.get("EFFLAB_BROWSER_TIMEOUT_S", 600))


def _selected() -> list[str]:
    """The suite's two lessons; ``EFFLAB_BROWSER_NOTEBOOKS=all`` every lesson, or a
    comma-separated list of lesson file names."""
    chosen = os.environ.get("EFFLAB_BROWSER_NOTEBOOKS", "").strip()
    if chosen == "all":
        return sorted(p.name for p in bs.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if chosen:
        return [n.strip() for n in chosen.split(",") if n.strip()]
    return list(SUITE)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(bs.why_no_browser() is not None,
                       reason=f"browser tests not run: {bs.why_no_browser()}"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One JupyterLab for the module, serving the SMOKE copies of the selected lessons."""
    root = tmp_path_factory.mktemp("lessons")
    for name in _selected():
        bs.smoke_copy(bs.NOTEBOOKS / name, root)
    with bs.JupyterLab(root, tmp_path_factory.mktemp("results")) as lab:
        yield lab


@pytest.fixture(scope="module")
def browser():
    with bs.chromium() as context:
        yield context


def _check_lab_panel(page, stem: str) -> None:
    """Run in the panel grows the chart; a bad value shows its ConfigError in the panel."""
    panel = bs.lab_panel(page)
    panel.scroll_into_view_if_needed()
    before = bs.wait_panel_marks(panel, more_than=0, timeout_s=CHART_TIMEOUT_S)
    assert before > 0, "the Lab panel's chart drew no marks after lab.run()"
    values = panel.locator(".widget-text:has(> label:text-is('values')) input").first
    shown = [v.strip() for v in values.input_value().split(",") if v.strip()]
    new = str(max(int(v) for v in shown) + 1)  # one batch size the lesson did not measure
    values.fill(", ".join([*shown, new]))
    run = panel.locator("button.widget-button", has_text="Run").first
    run.click()
    done = f"done: {len(shown) + 1}/{len(shown) + 1}"
    page.wait_for_function(
        "([e, done]) => (e.textContent || '').includes(done) || "
        "(e.textContent || '').includes('error —')",
        arg=[panel.element_handle(), done], timeout=RUN_ALL_TIMEOUT_S * 1000)
    text = panel.inner_text()
    assert "error —" not in text, f"the panel's Run failed: {text[-800:]}"
    # the chart redraws after the status line (seconds of JavaScript on a busy machine)
    after = bs.wait_panel_marks(panel, more_than=before, timeout_s=CHART_TIMEOUT_S)
    bs.screenshot(page, f"{stem}-panel-run")
    assert after > before, f"marks did not grow after Run ({before} -> {after})"

    values.fill(f"{shown[0]}, lots")
    run.click()
    panel.get_by_text("ConfigError").first.wait_for(timeout=30_000)
    error = panel.inner_text()
    assert "lots" in error and "batch_size" in error, error[-600:]
    bs.screenshot(page, f"{stem}-panel-error")

    log = bs.log_console_text(page)
    bs.screenshot(page, f"{stem}-log-console")
    assert not re.search(r"Traceback|Error", log), f"JupyterLab's log console: {log[-1500:]}"


@pytest.mark.parametrize("name", _selected())
def test_lesson_draws_in_a_real_browser(server, browser, name):
    stem = name.removesuffix(".ipynb")
    t0 = time.monotonic()
    page = bs.open_notebook(browser, server, name, timeout_s=180)
    try:
        bs.run_all(page, RUN_ALL_TIMEOUT_S)
        state = bs.wait_charts_drawn(page, CHART_TIMEOUT_S)
        bs.screenshot(page, f"{stem}-run-all")
        assert not state.errors, f"{name}: error outputs:\n" + "\n---\n".join(state.errors)
        assert state.pending == 0 and state.executed == state.cells, (
            f"{name}: {state.executed} of {state.cells} code cells ran")
        assert not state.bad, f"{name}: the page shows {state.bad}"
        assert len(state.charts) >= MIN_CHARTS.get(name, 1), (
            f"{name}: {len(state.charts)} charts drawn, expected at least "
            f"{MIN_CHARTS.get(name, 1)}")
        blank = [c for c in state.charts if c["marks"] == 0 and c["canvas"] == 0]
        assert not blank, f"{name}: {len(blank)} of {len(state.charts)} charts have no marks"
        unrendered = [w["text"] for w in state.widgets if not (w["rendered"] or w["closed"])]
        assert not unrendered, f"{name}: widgets not rendered: {unrendered}"
        assert not browser.offsite_requests, (
            f"{name}: the page asked other hosts for {browser.offsite_requests[:5]}")
        has_panel = bs.lab_panel(page).count() > 0
        assert has_panel or name not in PANEL_LESSONS, f"{name}: the Lab panel is not on the page"
        if has_panel:
            _check_lab_panel(page, stem)
    except BaseException:
        bs.screenshot(page, f"{stem}-failure")
        raise
    finally:
        page.close()
    print(f"{name}: {time.monotonic() - t0:.0f} s in the browser")
