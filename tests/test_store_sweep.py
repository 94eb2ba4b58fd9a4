import importlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from record_factory import fake_record as make_record

from efflab.core.config import Knobs
from efflab.core.store import Store, config_key, results
from efflab.measurement.sweeping import grid, sweep


def fake_record(b, status="ok"):
    return make_record(status, knobs=Knobs(batch_size=b),
                       latency_ms={"median": 1.0 * b, "p25": 0.9, "p75": 1.1, "n": 5},
                       memory={"by_category": {"parameters": 10, "other": b}})


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
    sw = importlib.import_module("efflab.measurement.sweeping")  # the module (efflab.sweep is the function)

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


# ----------------------------------------------------------------------------- stale results

def _fake_measure(calls, status=lambda k: "ok"):
    """Stands in for measure(): fast, counts its calls, returns a plausible record."""

    def fake(k, **kw):
        calls.append((k.batch_size, kw.get("target_s")))
        st = status(k)
        return {**fake_record(k.batch_size, st), "message": None if st == "ok" else "boom",
                "budget_bytes": kw.get("budget_bytes")}

    return fake


def _run(tmp_path, **kw):
    return sweep(Knobs(seq_len=16), {"batch_size": [1, 2]}, preset="cpu-tiny", store=tmp_path,
                 progress=False, **kw)


def test_a_smoke_point_is_not_reused_by_a_full_run(tmp_path, monkeypatch):
    sw = importlib.import_module("efflab.measurement.sweeping")
    calls = []
    monkeypatch.setattr(sw, "measure", _fake_measure(calls))
    _run(tmp_path, target_s=0.05)  # a rough SMOKE timing
    full = _run(tmp_path, target_s=1.0)
    assert calls == [(1, 0.05), (2, 0.05), (1, 1.0), (2, 1.0)]  # measured again, not reused
    assert not full["reused"].any()
    again = _run(tmp_path, target_s=1.0)
    assert len(calls) == 4 and again["reused"].all()  # the same run is reused


def test_a_record_from_another_machine_or_efflab_version_is_not_reused(tmp_path, monkeypatch):
    sw = importlib.import_module("efflab.measurement.sweeping")
    ctx = importlib.import_module("efflab.measurement.context")
    calls = []
    monkeypatch.setattr(sw, "measure", _fake_measure(calls))
    _run(tmp_path)
    monkeypatch.setattr(ctx, "code_fingerprint", lambda: "another-efflab")
    _run(tmp_path)
    assert len(calls) == 4
    monkeypatch.setattr(ctx, "fingerprint", lambda threads=None: "another-machine")
    _run(tmp_path)
    assert len(calls) == 6
    monkeypatch.setattr(ctx.torch, "__version__", "9.9.9")
    _run(tmp_path)
    assert len(calls) == 8


def test_an_error_is_measured_again_and_a_refusal_reused_only_under_its_budget(tmp_path, monkeypatch):
    sw = importlib.import_module("efflab.measurement.sweeping")
    calls = []
    monkeypatch.setattr(sw, "measure", _fake_measure(calls, lambda k: "error"))
    _run(tmp_path)
    monkeypatch.setattr(sw, "measure", _fake_measure(calls, lambda k: "refused"))
    first = _run(tmp_path, budget_bytes=1 << 20)
    assert len(calls) == 4 and set(first["status"]) == {"refused"}  # errors retried
    _run(tmp_path, budget_bytes=1 << 20)
    assert len(calls) == 4  # the same budget: the refusal stands
    _run(tmp_path, budget_bytes=2 << 20)
    assert len(calls) == 6  # another budget: asked again


def test_weights_content_is_part_of_the_key(tmp_path, monkeypatch):
    from efflab.core.config import get_preset
    from efflab.core.model import build_model
    from efflab.core.weights import save_weights
    from efflab.measurement.context import weights_fingerprint

    path = save_weights(build_model(get_preset("cpu-tiny"), seed=0), tmp_path / "w.safetensors")
    first = weights_fingerprint(path)
    time.sleep(0.01)
    save_weights(build_model(get_preset("cpu-tiny"), seed=1), path)  # same name, new bytes
    assert weights_fingerprint(path) != first
    assert weights_fingerprint(None) == "random-init"


# ----------------------------------------------------------------------------- held-out windows

def test_a_sweep_scores_quality_on_the_windows_it_is_asked_for(tmp_path, quick_cal):
    for isolate in (False, True):  # in the notebook's process and in a worker process
        df = sweep(Knobs(workload="eval", batch_size=2, seq_len=16), {"quantization": ["none"]},
                   preset="cpu-tiny", store=tmp_path / str(isolate), target_s=0.02,
                   progress=False, calibration=quick_cal, quality_windows=6, isolate=isolate)
        assert list(df["status"]) == ["ok"], df["message"].tolist()
        assert list(df["quality.windows"]) == [6]
        assert len(df["quality.window_losses"].iloc[0]) == 6


def test_points_scored_on_other_windows_are_not_reused(tmp_path, monkeypatch):
    sw = importlib.import_module("efflab.measurement.sweeping")
    asked = []

    def fake(k, **kw):
        asked.append(kw.get("quality_windows"))
        return {**fake_record(k.batch_size), "budget_bytes": kw.get("budget_bytes")}

    monkeypatch.setattr(sw, "measure", fake)
    _run(tmp_path, quality_windows=64)
    full = _run(tmp_path, quality_windows=512)
    assert asked == [64, 64, 512, 512] and not full["reused"].any()  # 64 never stands in for 512
    assert _run(tmp_path)["reused"].all()  # None is the default, 512: the same points
    assert _run(tmp_path, quality_windows=64)["reused"].all()  # 512 never stands in for 64 either
    assert asked == [64, 64, 512, 512]


def test_a_bad_window_count_is_refused_naming_the_field_before_any_work(tmp_path, monkeypatch):
    import pytest

    from efflab.core.config import ConfigError

    sw = importlib.import_module("efflab.measurement.sweeping")
    calls = []
    monkeypatch.setattr(sw, "measure", _fake_measure(calls))
    for bad in (1, 0, -8, 64.0, "64", True):
        with pytest.raises(ConfigError, match="quality_windows") as e:
            _run(tmp_path, quality_windows=bad)
        assert e.value.field == "quality_windows" and "None or an integer >= 2" in str(e.value)
    assert calls == [] and not (tmp_path / "efflab.sqlite").exists()


# ----------------------------------------------------------------------------- where the store lives

def test_store_location_env_then_checkout_then_user_data(tmp_path, monkeypatch):
    st = importlib.import_module("efflab.core.store")
    monkeypatch.setenv("EFFLAB_RESULTS", str(tmp_path / "mine"))
    assert st.default_results_dir() == tmp_path / "mine"
    monkeypatch.delenv("EFFLAB_RESULTS")
    assert st.default_results_dir() == st.CHECKOUT / "results"  # this checkout is writable
    installed = tmp_path / "lib" / "site-packages"
    (installed / "efflab").mkdir(parents=True)
    monkeypatch.setattr(st, "CHECKOUT", installed)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    where = st.default_results_dir()
    assert where == tmp_path / "xdg" / "efflab" / "results"
    assert "site-packages" not in where.parts


def test_pip_installed_efflab_writes_its_store_outside_site_packages(tmp_path):
    """A real, non-editable install of this checkout (built as a wheel into a site-packages
    folder) puts its default store in the user's data folder."""
    root = Path(__file__).resolve().parent.parent
    site = tmp_path / "lib" / "python" / "site-packages"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--target", str(site), str(root)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    assert (site / "efflab" / "core" / "store.py").exists() and not (site / "efflab.egg-link").exists()
    env = {k: v for k, v in os.environ.items() if k != "EFFLAB_RESULTS"}
    env.update(PYTHONPATH=str(site), XDG_DATA_HOME=str(tmp_path / "xdg"))
    code = ("import efflab.core.store as s; print(s.__file__); st = s.Store(); "
            "st.append({'status': 'ok', 'preset': 'p', 'knobs': {}}); print(st.path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, store_path = out.stdout.split()
    assert module_file.startswith(str(site))  # the installed copy ran, not the checkout
    assert store_path == str(tmp_path / "xdg" / "efflab" / "results" / "efflab.sqlite")
    assert not list(site.rglob("*.sqlite"))


def test_a_corrupt_store_is_one_clear_error_and_is_left_alone(tmp_path):
    from efflab.core.store import StoreError

    bad = tmp_path / "efflab.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    before = bad.read_bytes()
    try:
        Store(bad)
    except StoreError as e:
        assert str(bad) in str(e) and "not a readable efflab store" in str(e)
    else:
        raise AssertionError("a corrupt store was opened")
    assert bad.read_bytes() == before  # never overwritten or recreated


def test_a_store_from_a_newer_efflab_is_refused(tmp_path):
    from efflab.core.store import STORE_SCHEMA, StoreError

    st = Store(tmp_path)
    with sqlite3.connect(st.path) as db:
        db.execute("UPDATE meta SET value = ? WHERE name = 'store_schema'", (str(STORE_SCHEMA + 1),))
    try:
        Store(tmp_path)
    except StoreError as e:
        assert "newer efflab" in str(e) and str(st.path) in str(e)
    else:
        raise AssertionError("a newer store was opened")


def test_a_read_only_store_is_one_clear_error(tmp_path):
    import pytest

    from efflab.core.store import StoreError

    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions: a read-only store cannot be made here")
    st = Store(tmp_path)
    os.chmod(st.path, 0o444)
    with pytest.raises(StoreError, match="read-only"):
        Store(tmp_path)
