"""Every lesson notebook runs headless under papermill with SMOKE = True, and writes real records."""

import json

import nbformat
import pytest

from efflab.report import notebooks, run_notebook
from efflab.store import Store


def _images(nb) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def _errors(nb) -> list[str]:
    return [o.get("ename", "") + ": " + o.get("evalue", "") for c in nb.cells
            if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_every_notebook_has_smoke_parameters_and_no_outputs():
    found = notebooks()
    assert [p.name for p in found][:2] == ["00_tour.ipynb", "01_batching.ipynb"]
    for path in found:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert tagged and "SMOKE = False" in "".join(tagged[0]["source"]), path.name
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run each notebook once, each with its own results store."""
    out = {}
    for path in notebooks()[:2]:
        store = tmp_path_factory.mktemp(path.stem + "-results")
        nb_path = run_notebook(path, tmp_path_factory.mktemp("executed"), {"SMOKE": True},
                               timeout_s=600, results_dir=store)
        out[path.stem] = (nbformat.read(str(nb_path), as_version=4), Store(store).records())
    return out


def test_tour_runs_and_records_a_measurement(executed):
    nb, records = executed["00_tour"]
    assert not _errors(nb)
    ok = [r for r in records if r["status"] == "ok"]
    assert {r["workload"] for r in ok} == {"train"}
    assert {r["knobs"]["batch_size"] for r in ok} >= {1, 2, 4}  # the single point + the lab sweep
    assert _images(nb) >= 2  # the training curve and the lab's static chart


def test_batching_runs_and_records_the_sweeps_and_the_refusal(executed):
    nb, records = executed["01_batching"]
    assert not _errors(nb)
    by = {(r["workload"], r["knobs"]["batch_size"], r["status"]) for r in records}
    assert {("train", 1, "ok"), ("train", 4, "ok"), ("decode", 1, "ok"), ("decode", 8, "ok")} <= by
    refused = [r for r in records if r["status"] == "refused"]
    assert refused and "budget" in refused[0]["message"]
    train = sorted((r for r in records if r["workload"] == "train" and r["status"] == "ok"
                    and r.get("budget_bytes") is None), key=lambda r: r["knobs"]["batch_size"])
    # memory grows with the batch: the lesson's claim, checked on its own records
    assert train[-1]["memory"]["peak_bytes"] > train[0]["memory"]["peak_bytes"]
    assert _images(nb) >= 3
