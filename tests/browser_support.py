"""Drive a lesson the way a learner does: JupyterLab on a loopback port, Debian's Chromium, Run All.

Used by ``tests/test_browser.py`` (two lessons, in ``make test``) and by ``make test-browser``
(every lesson). Nothing is downloaded at run time: Playwright drives the system Chromium through
``executable_path``, JupyterLab runs with no token on 127.0.0.1 with throw-away config, data,
runtime, settings and workspace folders, and every request the page makes to anything but that
server is refused (the lab must draw offline).

What is read from the page is plain DOM, never a library's internals:

* a chart is a ``.vega-embed`` element; its *marks* are the SVG items inside Vega's data mark
  groups (``g.role-mark``, not axes or legends), so "drawn" means at least one mark;
* a widget output is a ``.jp-OutputArea-output`` with no ``data-mime-type`` of its own (text,
  HTML and images have one); "rendered" means it holds a widget's elements (``.jupyter-widgets``
  or a chart) and the page shows no "Error displaying widget";
* the Lab panel is the widget output whose text starts "efflab lab".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = REPO / "reports" / "browser"  # screenshots (ignored by git)
SKIP_ENV = "EFFLAB_SKIP_BROWSER"  # a developer without Chromium: EFFLAB_SKIP_BROWSER=1
CHROMIUM_ENV = "EFFLAB_CHROMIUM"  # a browser binary elsewhere
CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "chromium",
              "chromium-browser", "google-chrome")

# Vega's SVG items inside data mark groups (axes, legends and titles are other roles)
MARKS = "svg g.role-mark:not(.mark-group) > *"
# what a broken chart or widget shows instead of itself
BAD_TEXTS = ("Error loading script", "Error displaying widget", "VegaLite ", "Loading widget...")


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``$EFFLAB_CHROMIUM``, else Debian's, else one on PATH."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return given if Path(given).exists() else None
    for c in CANDIDATES:
        path = c if os.path.isabs(c) else shutil.which(c)
        if path and Path(path).exists():
            return path
    return None


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here (None: they can). In CI (``CI=true``) a missing
    browser is not a reason: the tests then fail loudly instead of skipping."""
    if os.environ.get(SKIP_ENV, "").strip() == "1":
        return f"{SKIP_ENV}=1 is set"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return None
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (make setup installs it)"
    if find_chromium() is None:
        return ("no Chromium found (apt-get install chromium, or set EFFLAB_CHROMIUM; "
                f"{SKIP_ENV}=1 skips these tests)")
    return None


def smoke_copy(src: Path, folder: Path) -> Path:
    """Copy lesson ``src`` into ``folder`` with its parameters cell set to ``SMOKE = True``."""
    nb = json.loads(src.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{src.name} has no cell tagged 'parameters'")
    text = "".join(cells[0]["source"])
    if "SMOKE = False" not in text:
        raise ValueError(f"{src.name}'s parameters cell does not say SMOKE = False")
    cells[0]["source"] = text.replace("SMOKE = False", "SMOKE = True", 1)
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    out = folder / src.name
    out.write_text(json.dumps(nb, indent=1))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_CONFIG = """\
c.ServerApp.token = ""
c.ServerApp.password = ""
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.handlers.announcements.NeverCheckForUpdate"
c.LabApp.extension_manager = "readonly"
"""

# JupyterLab user settings: no news prompt (offline), no autosave racing the test's own files
USER_SETTINGS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                      "checkForUpdates": False},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    # every cell stays in the DOM (a windowed notebook detaches off-screen outputs)
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


@dataclass
class JupyterLab:
    """A JupyterLab server serving ``root`` on a free loopback port, until :meth:`stop`."""

    root: Path
    results: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    home: Path | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0) -> JupyterLab:
        self.port = self.port or _free_port()
        self.home = Path(tempfile.mkdtemp(prefix="efflab-jupyter-"))
        for d in ("config", "data", "runtime", "settings", "workspaces", "ipython"):
            (self.home / d).mkdir()
        (self.home / "config" / "jupyter_server_config.py").write_text(SERVER_CONFIG)
        for plugin, settings in USER_SETTINGS.items():
            path = self.home / "settings" / f"{plugin.replace(':', '/')}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        env = {k: v for k, v in os.environ.items() if k != "EFFLAB_STATIC_CHARTS"}
        env.update(JUPYTER_CONFIG_DIR=str(self.home / "config"),
                   JUPYTER_DATA_DIR=str(self.home / "data"),
                   JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(self.home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
                   IPYTHONDIR=str(self.home / "ipython"),
                   EFFLAB_RESULTS=str(self.results),
                   JUPYTER_PLATFORM_DIRS="1", PYTHONUNBUFFERED="1")
        self.log = self.home / "server.log"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1",
               "--port", str(self.port), "--port-retries", "0", f"--ServerApp.root_dir={self.root}"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n"
                                   + self.log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/api/status", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its kernels
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def chromium(viewport=(1400, 1000)):
    """A Playwright page factory on the system Chromium; requests off the loopback are refused."""
    from playwright.sync_api import sync_playwright

    path = find_chromium()
    if path is None:
        raise RuntimeError("no Chromium to drive: apt-get install chromium (or set "
                           f"{CHROMIUM_ENV}); {SKIP_ENV}=1 skips the browser tests")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage",
                                          "--disable-gpu"])
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        offline = []

        def refuse_offsite(route):
            url = route.request.url
            if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
                route.continue_()
            else:
                offline.append(url)
                route.abort()

        context.route("**/*", refuse_offsite)
        context.offsite_requests = offline
        try:
            yield context
        finally:
            context.close()
            browser.close()


# ----------------------------------------------------------------------------- the page

# JavaScript run in the page: what the DOM says about outputs, charts and widgets
_OUTPUTS_JS = """
() => {
  const out = {cells: 0, pending: 0, executed: 0, charts: [], widgets: [], text: ''};
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return out;
  for (const cell of nb.querySelectorAll('.jp-CodeCell')) {
    out.cells += 1;
    const prompt = (cell.querySelector('.jp-InputPrompt') || {}).textContent || '';
    if (prompt.includes('*')) out.pending += 1;
    if (/\\[\\d+\\]/.test(prompt)) out.executed += 1;
  }
  for (const e of nb.querySelectorAll('.vega-embed')) {
    out.charts.push({marks: e.querySelectorAll(MARKS).length,
                     canvas: e.querySelectorAll('canvas').length,
                     svg: e.querySelectorAll('svg').length});
  }
  // a widget view is an output with no MIME type of its own (ipywidgets, anywidget)
  for (const e of nb.querySelectorAll('.jp-OutputArea-output:not([data-mime-type])')) {
    // an empty one is a widget its code closed (a finished progress bar with leave=False)
    out.widgets.push({rendered: !!e.querySelector('.jupyter-widgets, .vega-embed'),
                      closed: e.children.length === 0 && !(e.textContent || '').trim(),
                      chart: !!e.querySelector('.vega-embed'),
                      text: (e.textContent || '').slice(0, 160)});
  }
  out.text = nb.textContent || '';
  return out;
}
""".replace("MARKS", repr(MARKS))

_ERROR_OUTPUTS_JS = """
() => Array.from(document.querySelectorAll(
  '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
  .map(e => e.textContent || '').filter(t => /Traceback|Error/.test(t)).map(t => t.slice(0, 800))
"""


@dataclass
class PageState:
    """What the open notebook shows, read from the DOM."""

    cells: int
    pending: int
    executed: int
    charts: list[dict]
    widgets: list[dict]
    text: str = field(repr=False)
    errors: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    @property
    def marks(self) -> int:
        return sum(c["marks"] for c in self.charts)


def read_state(page) -> PageState:
    raw = page.evaluate(_OUTPUTS_JS)
    raw["errors"] = page.evaluate(_ERROR_OUTPUTS_JS)
    raw["bad"] = [t for t in BAD_TEXTS if t in raw["text"]]
    return PageState(**raw)


def open_notebook(context, lab: JupyterLab, name: str, timeout_s: float = 120.0):
    """A page showing ``name`` with its kernel started and idle."""
    page = context.new_page()
    page.console_messages = []
    page.on("console", lambda m: page.console_messages.append(f"{m.type}: {m.text}"))
    workspace = Path(name).stem  # a fresh workspace per lesson: no tabs left from another
    page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{name}", wait_until="domcontentloaded",
              timeout=timeout_s * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=timeout_s * 1000)
    wait_kernel_idle(page, timeout_s)
    return page


_KERNEL_IDLE_JS = """() => {
  const bar = document.querySelector('#jp-main-statusbar');
  return !!bar && /\\| Idle/.test(bar.textContent || '');
}"""


def kernel_idle(page) -> bool:
    """Whether the status bar says the current notebook's kernel is idle ("Python 3 | Idle")."""
    return bool(page.evaluate(_KERNEL_IDLE_JS))


def wait_kernel_idle(page, timeout_s: float) -> None:
    """Until the status bar says the notebook's kernel is started and idle."""
    page.wait_for_function(_KERNEL_IDLE_JS, timeout=timeout_s * 1000)


def menu(page, top: str, command: str) -> None:
    """Click JupyterLab's main menu ``top``, then its entry for ``command`` (Lumino marks each
    entry with its command id), as a learner does with the mouse."""
    page.keyboard.press("Escape")  # no menu left open from before
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=top).first.click()
    item = page.locator(f'.lm-Menu .lm-Menu-item[data-command="{command}"]').first
    item.wait_for(state="visible", timeout=15_000)
    item.click()


def run_all(page, timeout_s: float) -> PageState:
    """Run > Run All Cells, then wait until no cell is pending and the kernel is idle."""
    started = """() => Array.from(document.querySelectorAll(
             '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt'))
             .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent || ''))"""
    for attempt in range(3):  # a click can be lost while a busy page is still laying out
        menu(page, "Run", "runmenu:run-all")  # "Run All Cells"
        try:
            page.wait_for_function(started, timeout=30_000)
            break
        except Exception:
            if attempt == 2:
                raise
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        state = read_state(page)
        idle = kernel_idle(page)
        if state.pending == 0 and idle:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:  # widgets finish drawing after idle
                return read_state(page)
        else:
            quiet_since = None
        page.wait_for_timeout(300)
    raise TimeoutError(f"Run All did not finish within {timeout_s:.0f} s: {read_state(page)}")


def wait_charts_drawn(page, timeout_s: float) -> PageState:
    """The page once every chart has marks (or when ``timeout_s`` has passed: the caller
    asserts). Charts draw asynchronously in the browser, after the kernel has gone idle."""
    deadline = time.monotonic() + timeout_s
    state = read_state(page)
    while (any(c["marks"] == 0 and c["canvas"] == 0 for c in state.charts)
           and time.monotonic() < deadline):
        page.wait_for_timeout(250)
        state = read_state(page)
    return state


def lab_panel(page):
    """The Lab panel's widget output (the widget whose text starts "efflab lab")."""
    return page.locator(".jp-OutputArea-output:not([data-mime-type])",  # a widget view
                        has_text="efflab lab").first


def panel_marks(panel) -> int:
    """How many data marks the Lab panel's chart shows."""
    return panel.evaluate(f"e => e.querySelectorAll({MARKS!r}).length")


def wait_panel_marks(panel, more_than: int, timeout_s: float) -> int:
    """The panel chart's marks once there are more than ``more_than`` (or when ``timeout_s``
    has passed: the caller asserts). Vega redraws asynchronously, after the kernel is idle."""
    deadline = time.monotonic() + timeout_s
    marks = panel_marks(panel)
    while marks <= more_than and time.monotonic() < deadline:
        panel.page.wait_for_timeout(250)
        marks = panel_marks(panel)
    return marks


def log_console_text(page) -> str:
    """Open View > Show Log Console and return what it holds for this notebook."""
    menu(page, "View", "logconsole:open")  # "Show Log Console"
    page.wait_for_selector(".jp-LogConsolePanel", timeout=15_000)
    page.wait_for_timeout(500)
    return page.locator(".jp-LogConsolePanel").first.inner_text()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
