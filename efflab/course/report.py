"""Run notebooks headless (papermill) and turn them into an offline HTML report.

Notebooks run with ``EFFLAB_STATIC_CHARTS=1`` so every live chart leaves a static SVG/PNG in
the executed copy; the HTML then shows the charts with no network. Executed copies go to an
ignored folder (``reports/``), never over the stripped notebooks in git.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def notebooks(folder: str | os.PathLike = NOTEBOOK_DIR) -> list[Path]:
    """The numbered lesson notebooks, in order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: str | os.PathLike, out_dir: str | os.PathLike,
                 parameters: dict | None = None, timeout_s: int = 1800,
                 results_dir: str | os.PathLike | None = None) -> Path:
    """Execute one notebook under papermill; return the executed copy's path.

    ``results_dir`` points the notebook's store (``EFFLAB_RESULTS``) somewhere else, so a test
    or a report does not mix its records with the learner's. The exercises' answer log
    (``EFFLAB_ANSWERS``) goes beside the executed copy as ``<name>.answers.jsonl`` unless the
    caller has set ``EFFLAB_ANSWERS`` itself.
    """
    import papermill

    path = Path(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    saved = {k: os.environ.get(k) for k in ("EFFLAB_STATIC_CHARTS", "EFFLAB_RESULTS",
                                            "EFFLAB_ANSWERS")}
    os.environ["EFFLAB_STATIC_CHARTS"] = "1"
    if not saved["EFFLAB_ANSWERS"]:
        os.environ["EFFLAB_ANSWERS"] = str((out_dir / f"{path.stem}.answers.jsonl").resolve())
    if results_dir is not None:
        os.environ["EFFLAB_RESULTS"] = str(Path(results_dir).resolve())
    try:
        papermill.execute_notebook(str(path), str(out), parameters=parameters or {},
                                   cwd=str(path.parent), kernel_name="python3",
                                   progress_bar=False, execution_timeout=timeout_s)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def to_html(executed: str | os.PathLike) -> Path:
    """The executed notebook as a standalone HTML page beside it (images inline)."""
    import nbformat
    from nbconvert import HTMLExporter

    executed = Path(executed)
    nb = nbformat.read(str(executed), as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    out = executed.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def build_report(out: str | os.PathLike = "reports", smoke: bool = False,
                 folder: str | os.PathLike = NOTEBOOK_DIR) -> Path:
    """Execute every lesson notebook and write ``<out>/index.html`` linking their HTML pages.

    A notebook that fails is reported on the index with its error; the others still run.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    rows = []
    for nb in tqdm(notebooks(folder), desc="report"):
        t0 = time.perf_counter()
        try:
            executed = run_notebook(nb, out, {"SMOKE": smoke})
            page = to_html(executed)
            rows.append((nb.stem, page.name, "ok", time.perf_counter() - t0))
        except Exception as e:  # keep going: one broken lesson must not hide the others
            rows.append((nb.stem, None, f"failed: {type(e).__name__}: {e}"[:400],
                         time.perf_counter() - t0))
    def item(stem, page, status, secs):
        name = f'<a href="{html.escape(page)}">{html.escape(stem)}</a>' if page else html.escape(stem)
        return f"<li>{name} — {html.escape(status)} ({secs:.0f} s)</li>"

    items = "\n".join(item(*row) for row in rows)
    index = out / "index.html"
    index.write_text(f"<!doctype html><meta charset=utf-8><title>efflab report</title>"
                     f"<h1>efflab report</h1><p>{time.strftime('%Y-%m-%d %H:%M')}, "
                     f"smoke={smoke}</p><ul>{items}</ul>", encoding="utf-8")
    failed = [r for r in rows if r[2] != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} notebook(s) failed; see {index}")
    return index
