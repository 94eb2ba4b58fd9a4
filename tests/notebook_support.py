"""What every lesson's notebook test does: run the lesson headless with SMOKE = True in folders of
its own, then read its cells' outputs. One place, so the lesson tests differ only in the claims
they check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from efflab.course.report import NOTEBOOK_DIR, run_notebook


@dataclass
class Executed:
    """An executed lesson: the notebook, its cells by id, and the folders the run wrote."""

    nb: nbformat.NotebookNode
    out: Path  # the run's own folder: executed/, results/ and answers.jsonl inside
    answers: Path  # the exercises' answer log
    results: Path  # the run's own results store

    @property
    def cells(self) -> dict:
        return {c.get("id"): c for c in self.nb.cells}


def execute_lesson(name: str, tmp_path_factory, timeout_s: int = 600) -> Executed:
    """Run ``notebooks/<name>`` with SMOKE = True; its records, answers and executed copy go
    to a fresh temporary folder."""
    path = NOTEBOOK_DIR / name
    out = tmp_path_factory.mktemp(path.stem)
    answers, results = out / "answers.jsonl", out / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFLAB_ANSWERS", str(answers))
        executed = run_notebook(path, out / "executed", {"SMOKE": True}, timeout_s=timeout_s,
                                results_dir=results)
    return Executed(nbformat.read(str(executed), as_version=4), out, answers, results)


def errors(nb) -> list[str]:
    """``ename: evalue`` of every error output."""
    return [o.get("ename", "") + ": " + o.get("evalue", "") for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def images(nb_or_cell) -> int:
    """PNG or SVG outputs of a whole notebook, or of one cell."""
    cells = nb_or_cell.cells if hasattr(nb_or_cell, "cells") else [nb_or_cell]
    return sum(1 for c in cells if c.get("cell_type", "code") == "code" for o in c.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def text(cell, markdown: bool = False) -> str:
    """A cell's printed text and plain-text results (and Markdown results with ``markdown``)."""
    kinds = ("text/plain", "text/markdown") if markdown else ("text/plain",)
    return "".join(o.get("text", "") + "".join(str(o.get("data", {}).get(k, "")) for k in kinds)
                   for o in cell.get("outputs", []))


def cell_text(nb, cell_id: str) -> str:
    return text(next(c for c in nb.cells if c.get("id") == cell_id))
