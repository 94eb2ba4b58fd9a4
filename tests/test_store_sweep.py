import importlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

from efflab.config import Knobs
from efflab.store import Store, config_key, results
from efflab.sweeping import grid, sweep


def fake_record(b, status="ok"):
    return {"schema": "efflab.record/1", "status": status, "preset": "cpu-tiny",
            "workload": "train", "knobs": Knobs(batch_size=b).to_dict(),
            "latency_ms": {"median": 1.0 * b, "p25": 0.9, "p75": 1.1, "n": 5},
            "memory": {"by_category": {"parameters": 10, "other": b}}}


def test_records_roundtrip_through_the_store(tmp_path):
    st = Store(tmp_path)
    recs = [fake_record(b) for b in (1, 2, 4)]
    for r in recs:
        st.append(r)
    back = st.records()
    assert [r["knobs"] for r in back] == [r["knobs"] for r in recs]
    assert back[1]["latency_ms"] == recs[1]["latency_ms"]
    df = results(tmp_path)
    assert list(df["knobs.batch_size"]) == [1, 2, 4]
    assert list(df["memory.by_category.other"]) == [1, 2, 4]
    with sqlite3.connect(st.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_config_key_is_stable_and_distinct():
    a = config_key("cpu-tiny", Knobs(batch_size=2).to_dict())
    assert a == config_key("cpu-tiny", Knobs(batch_size=2).to_dict())
    assert a != config_key("cpu-tiny", Knobs(batch_size=4).to_dict())
    assert a != config_key("cpu-small", Knobs(batch_size=2).to_dict())


def test_grid_is_the_cartesian_product():
    g = grid(Knobs(), {"batch_size": [1, 2], "workload": ["train", "eval"]})
    assert [(k.batch_size, k.workload) for k in g] == [
        (1, "train"), (1, "eval"), (2, "train"), (2, "eval")]


def test_sweep_goes_on_past_failures_and_skips_what_it_holds(tmp_path, quick_cal, monkeypatch):
    sw = importlib.import_module("efflab.sweeping")  # the module (efflab.sweep is the function)

    calls = []
    real = sw.measure

    def counting(k, **kw):
        calls.append(k.batch_size)
        return real(k, **kw)

    monkeypatch.setattr(sw, "measure", counting)
    base = Knobs(seq_len=32)
    budget = 3 << 20  # batch 64 is predicted well over 3 MiB on cpu-tiny
    df = sweep(base, {"batch_size": [1, 64, 2]}, preset="cpu-tiny", store=tmp_path,
               budget_bytes=budget, target_s=0.02, progress=False, calibration=quick_cal)
    assert list(df["status"]) == ["ok", "refused", "ok"]
    assert calls == [1, 64, 2]
    df2 = sweep(base, {"batch_size": [1, 64, 2, 4]}, preset="cpu-tiny", store=tmp_path,
                budget_bytes=budget, target_s=0.02, progress=False, calibration=quick_cal)
    assert calls == [1, 64, 2, 4]  # only the new configuration was measured
    assert len(df2) == 4 and Store(tmp_path).count() == 4


def test_killed_sweep_resumes_without_duplicates(tmp_path):
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "efflab.cli", "sweep", "--preset", "cpu-tiny", "--seq-len", "32",
           "--vary", "batch_size=1,2,3,4,5,6,7,8", "--target-s", "0.3", "--store", str(store)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some, not all, records are in
        if (store / "efflab.sqlite").exists() and 2 <= Store(store).count() < 8:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = Store(store).count()
    assert 2 <= done_before < 8
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    recs = Store(store).records()
    sizes = sorted(r["knobs"]["batch_size"] for r in recs)
    assert sizes == [1, 2, 3, 4, 5, 6, 7, 8]  # every config once: none lost, none twice


def test_points_from_the_store_say_so(tmp_path, quick_cal):
    base = Knobs(seq_len=16)
    first = sweep(base, {"batch_size": [1]}, preset="cpu-tiny", store=tmp_path, target_s=0.02,
                  progress=False, calibration=quick_cal)
    again = sweep(base, {"batch_size": [1]}, preset="cpu-tiny", store=tmp_path, target_s=0.02,
                  progress=False, calibration=quick_cal)
    assert list(first["reused"]) == [False] and list(again["reused"]) == [True]
    assert "reused" not in Store(tmp_path).records()[0]  # the stored record is unchanged
