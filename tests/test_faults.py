"""Faults a class will meet: sweeps killed at random moments, writers racing on one store, a
configuration that exhausts memory, a panel whose measurement raises, a damaged weights file.

Each test checks the promise the README makes: nothing finished is lost, nothing is recorded
twice, a failure becomes a record (or one clear error) and the lab goes on.
"""

from __future__ import annotations

import collections
import json
import pickle
import random
import signal
import statistics
import struct
import time

import fault_support as fs
import pytest
import torch

import efflab
from efflab.core.config import Knobs
from efflab.core.store import Store
from efflab.core.weights import WeightsError, load_model, load_weights, save_weights

KILLS = 20
KILL_SEED = 20261129


def _counts(store) -> collections.Counter:
    """How many records the store holds per configuration (batch size, context)."""
    return collections.Counter((r["knobs"]["batch_size"], r["knobs"]["seq_len"])
                               for r in Store(store).records())


# ----------------------------------------------------------------------------- SIGKILL

@pytest.mark.long  # minutes of repeated sweeps: `make test-long` (a 1-kill resume runs in make test)
def test_a_sweep_killed_at_twenty_random_moments_ends_with_every_config_once(tmp_path,
                                                                               quick_cal):
    """SIGKILL a real sweep process 20 times at seeded random moments — after 0, 1 or 2 newly
    committed records, plus a random fraction of the time one configuration takes here, so kills
    land while measuring and while writing on a fast or a slow machine alike; each restart
    resumes, and the end holds every configuration exactly once."""
    store = str(tmp_path / "store")
    vary = fs.grid_of(range(1, 21), fs.SEQ_LENS)  # 60 configurations
    want = {(b, t) for b in vary["batch_size"] for t in vary["seq_len"]}
    ctx = fs.sweeper()
    rng = random.Random(KILL_SEED)
    survived, progress, gaps = 0, [], []
    for _ in range(KILLS):
        started, recorded = ctx.Event(), ctx.Value("i", 0)
        proc = ctx.Process(target=fs.run_sweep, args=(store, vary, quick_cal, started, recorded))
        proc.start()
        assert started.wait(600), "the sweep process never started"
        after = rng.choice((0, 1, 1, 2))
        typical = statistics.median(gaps) if gaps else 0.1  # seconds per configuration here
        extra = rng.uniform(0.0, 1.0) * typical
        seen, last = recorded.value, None
        deadline = time.monotonic() + 300
        while recorded.value < after and proc.is_alive() and time.monotonic() < deadline:
            if recorded.value != seen:  # between two records: one configuration's time
                seen, now = recorded.value, time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
            time.sleep(0.002)
        time.sleep(extra)
        if proc.is_alive():
            proc.kill()  # SIGKILL: no cleanup, no atexit, mid-write if it so happens
            survived += 1
        proc.join(30)
        assert proc.exitcode in (0, -signal.SIGKILL), proc.exitcode
        counts = _counts(store)  # the store still opens and reads after every kill
        assert all(n == 1 for n in counts.values()), f"duplicated: {counts}"
        progress.append(len(counts))
    assert survived == KILLS, f"only {survived} of {KILLS} kills hit a running sweep"
    final = ctx.Process(target=fs.run_sweep, args=(store, vary, quick_cal))
    final.start()
    final.join(600)
    assert final.exitcode == 0
    counts = _counts(store)
    assert set(counts) == want, f"lost: {want - set(counts)}"
    assert all(n == 1 for n in counts.values()), f"duplicated: {counts}"
    assert progress == sorted(progress)  # each restart kept what the last one finished
    statuses = collections.Counter(r["status"] for r in Store(store).records())
    assert statuses == {"ok": len(want)}, statuses


# ----------------------------------------------------------------------------- concurrency

@pytest.mark.long  # minutes of repeated sweeps: `make test-long` (a 1-kill resume runs in make test)
def test_two_sweep_processes_and_a_lab_panel_write_one_store_losing_and_doubling_nothing(
        tmp_path, quick_cal):
    """Two sweep processes and a Lab panel (pressing Run in a third process) write the same
    store at the same moments, their grids overlapping: every configuration ends up stored
    exactly once and every writer gets a record for each of its points."""
    store = str(tmp_path / "shared")
    a = fs.grid_of((1, 2, 3, 4, 5, 6), (8, 16))
    b = fs.grid_of((4, 5, 6, 7, 8, 9), (8, 16))  # overlaps a on batch sizes 4-6
    lab_values = (2, 5, 8, 10)                     # overlaps both at context 16
    ctx = fs.sweeper()
    procs = [ctx.Process(target=fs.run_sweep, args=(store, g, quick_cal, None, None, n))
             for g, n in ((a, "A"), (b, "B"))]
    procs.append(ctx.Process(target=fs.run_lab, args=(store, lab_values, 16, quick_cal)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    want = ({(x, t) for x in a["batch_size"] + b["batch_size"] for t in (8, 16)}
            | {(x, 16) for x in lab_values})
    counts = _counts(store)
    assert set(counts) == want, f"lost: {want - set(counts)}"
    assert all(n == 1 for n in counts.values()), (
        f"duplicated: { {k: n for k, n in counts.items() if n > 1} }")
    assert all(r["status"] == "ok" for r in Store(store).records())


# ----------------------------------------------------------------------------- memory

def test_a_config_that_exhausts_memory_is_recorded_oom_in_its_worker_and_the_sweep_goes_on(
        tmp_path, quick_cal):
    """Batch 512 needs several times the worker's 192 MiB (predicted peak 353 MiB before any
    overhead); batch 1 needs under half of it. The big one's worker really fails to allocate
    and is recorded ``oom``; this process lives on and measures the next configuration."""
    limit = 192 * 2**20
    df = efflab.sweep(Knobs(seq_len=64), {"batch_size": [512, 1]}, preset="cpu-tiny",
                      store=tmp_path, weights="random", corpus=fs.SMALL_CORPUS, target_s=0.01,
                      progress=False, calibration=quick_cal, isolate=True,
                      memory_limit_bytes=limit)
    assert list(df["status"]) == ["oom", "ok"], list(df["message"])
    oom = Store(tmp_path).records()[0]
    assert oom["isolation"]["memory_limit_bytes"] == limit and oom["isolation"]["limited"]
    assert "allocate" in oom["message"] or "memory" in oom["message"].lower()
    assert df["latency_ms.median"].iloc[1] > 0
    # the same grid again: both outcomes come from the store (an oom under this cap stands)
    again = efflab.sweep(Knobs(seq_len=64), {"batch_size": [512, 1]}, preset="cpu-tiny",
                         store=tmp_path, weights="random", corpus=fs.SMALL_CORPUS,
                         target_s=0.01, progress=False, calibration=quick_cal, isolate=True,
                         memory_limit_bytes=limit)
    assert list(again["reused"]) == [True, True] and Store(tmp_path).count() == 2


def test_a_worker_that_dies_without_a_record_is_reported_not_raised(monkeypatch):
    """The worker killed outright (as the kernel's OOM killer would) or timing out leaves a
    record saying so; input errors it meets come back as the same exception."""
    from efflab.core.data import CorpusError
    from efflab.measurement import isolation

    k = Knobs(batch_size=2)
    killed = isolation._outcome(None, -9, False, 60, 2**30, "", k, "cpu-tiny", None)
    assert killed["status"] == "oom" and "SIGKILL" in killed["message"]
    crashed = isolation._outcome(None, 1, False, 60, 2**30, "ImportError: no module x", k,
                                 "cpu-tiny", None)
    assert crashed["status"] == "error" and "ImportError" in crashed["message"]
    late = isolation._outcome(None, -9, True, 5, 2**30, "", k, "cpu-tiny", None)
    assert late["status"] == "error" and "timeout" in late["message"]
    with pytest.raises(CorpusError, match="too small"):
        isolation._outcome({"exception": "CorpusError", "message": "corpus 'x' is too small"},
                           0, False, 60, 2**30, "", k, "cpu-tiny", None)
    with pytest.raises(efflab.ConfigError, match="batch_size"):
        isolation._outcome({"exception": "ConfigError", "message": "",
                            "args": ["batch_size", 0, "an integer >= 1"]},
                           0, False, 60, 2**30, "", k, "cpu-tiny", None)
    alloc = {"record": {"status": "error", "message": "RuntimeError: DefaultCPUAllocator: "
                        "can't allocate memory: you tried to allocate 8388608 bytes"}}
    assert isolation._outcome(alloc, 0, False, 60, 2**30, "", k, "cpu-tiny",
                              None)["status"] == "oom"


@pytest.mark.gpu
def test_cuda_out_of_memory_is_recorded_and_the_next_config_runs_with_memory_released():
    """On a GPU capped to a small fraction, a batch far over it raises
    ``torch.cuda.OutOfMemoryError`` inside ``measure``: the record says oom, the frames that held
    its tensors are released (allocated memory back to where it was), and the next, small
    configuration measures normally."""
    total = torch.cuda.get_device_properties(0).total_memory
    cap = 2 * 2**30
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        big = efflab.measure(Knobs(batch_size=4096), preset="gpu-small", weights="random",
                             target_s=0.05, quality=False)
        assert big["status"] == "oom", (big["status"], big.get("message"))
        assert torch.cuda.memory_allocated() <= before + 16 * 2**20
        small = efflab.measure(Knobs(batch_size=2, seq_len=64), preset="gpu-small",
                               weights="random", target_s=0.05, quality=False)
        assert small["status"] == "ok", small.get("message")
        assert torch.cuda.memory_allocated() <= before + 16 * 2**20
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the panel

def test_a_panel_whose_measurement_raises_shows_it_and_runs_again(monkeypatch, tmp_path,
                                                                   quick_cal):
    """The measurement raising inside the Run button's thread (not a recorded failure: an
    exception) shows in the panel's error area; the panel stays usable and the next Run
    measures normally."""
    import efflab.measurement.sweeping as sweeping

    real = sweeping.measure
    calls = []

    def flaky(knobs, **kw):
        calls.append(knobs.batch_size)
        if len(calls) == 2:
            raise RuntimeError("the measurement fell over at batch 2")
        return real(knobs, **kw)

    monkeypatch.setattr(sweeping, "measure", flaky)
    lab = efflab.Lab(preset="cpu-tiny", values=(1, 2, 3), seq_len=16, store=tmp_path,
                     static=True, weights="random", corpus=fs.SMALL_CORPUS, target_s=0.01,
                     calibration=quick_cal)
    lab.run_button.click()
    assert lab.wait(300)
    assert "RuntimeError: the measurement fell over at batch 2" in lab.error_area.value
    assert "failed" in lab.status.value and not lab.running
    assert not lab.run_button.disabled  # usable again
    lab.run_button.click()
    assert lab.wait(300)
    assert lab.error_area.value == "" and lab.last_error is None
    assert "done: 3/3" in lab.status.value
    assert [r["status"] for r in lab.records] == ["ok", "ok", "ok"]
    assert [r.get("reused", False) for r in lab.records] == [True, False, False]


# ----------------------------------------------------------------------------- weights files

@pytest.fixture
def weights_file(tmp_path):
    model = load_model("cpu-tiny", weights="random", seed=0)
    return save_weights(model, tmp_path / "cpu-tiny.safetensors")


def _header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n])


def _rewrite_header(path, header: dict) -> None:
    n, _ = _header(path)
    body = path.read_bytes()[8 + n:]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_the_intact_weights_file_loads(weights_file):
    model = load_weights(weights_file)
    ref = load_model("cpu-tiny", weights="random", seed=0)
    assert torch.equal(model.h[0].mlp.c_fc.weight, ref.h[0].mlp.c_fc.weight)


@pytest.mark.parametrize("cut", [0.0, 0.001, 0.5, 0.999])
def test_a_truncated_weights_file_gives_one_clear_error(weights_file, cut):
    raw = weights_file.read_bytes()
    weights_file.write_bytes(raw[:int(len(raw) * cut)])
    with pytest.raises(WeightsError, match="cpu-tiny.safetensors"):
        load_weights(weights_file)


def test_a_tampered_weights_file_gives_one_clear_error(weights_file):
    n, header = _header(weights_file)
    raw = bytearray(weights_file.read_bytes())
    # 1) the numbers themselves: one weight overwritten with NaN bytes
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__")
    start = 8 + n + info["data_offsets"][0]
    raw[start:start + 4] = struct.pack("<f", float("nan"))
    weights_file.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="non-finite"):
        load_weights(weights_file)
    # 2) the header: a tensor's offsets point past the end of the file
    _, header = _header(weights_file)
    header[name]["data_offsets"][1] += 10**6
    _rewrite_header(weights_file, header)
    with pytest.raises(WeightsError):
        load_weights(weights_file)


@pytest.mark.parametrize("meta", [
    '{"name": "cpu-tiny", "n_layer": 2',                       # not JSON
    '{"name": "cpu-tiny", "n_layer": 2, "colour": "red"}',      # not a config
    '{"name": "cpu-tiny", "n_layer": -2, "n_head": 2, "n_embd": 64, "block_size": 64}',
])
def test_a_weights_file_with_a_damaged_config_gives_one_clear_error(weights_file, meta):
    _, header = _header(weights_file)
    header["__metadata__"]["efflab_model_config"] = meta
    _rewrite_header(weights_file, header)
    with pytest.raises(WeightsError, match="config"):
        load_weights(weights_file)


def test_weights_of_the_wrong_shape_give_one_clear_error(weights_file, tmp_path):
    """A file whose tensors do not fit the config it states (a wider model saved under
    cpu-tiny's config) is refused naming the tensor, never half-loaded."""
    _, header = _header(weights_file)
    wide = load_model("cpu-small", weights="random", seed=0)
    other = save_weights(wide, tmp_path / "wide.safetensors")
    _, wide_header = _header(other)
    wide_header["__metadata__"] = header["__metadata__"]  # says cpu-tiny, holds cpu-small
    _rewrite_header(other, wide_header)
    with pytest.raises(WeightsError, match="shape"):
        load_weights(other)
    with pytest.raises(WeightsError, match="cpu-small"):
        load_model("cpu-small", weights=weights_file)  # a cpu-tiny file for cpu-small


def test_a_pickle_posing_as_weights_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    """A torch.save / pickle file under a weights name: refused as not safetensors; pickle is
    never asked to load anything (a malicious pickle would run code)."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "cpu-tiny.safetensors"
    path.write_bytes(pickle.dumps({"state": Evil()}))
    loads = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append(a) or {})
    monkeypatch.setattr(pickle, "load", lambda *a, **k: loads.append(a) or {})
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(WeightsError, match="safetensors"):
        load_weights(path)
    assert not loads and not marker.exists()
    torch_file = tmp_path / "torch.safetensors"
    torch.save({"wte": torch.zeros(3)}, torch_file)
    with pytest.raises(WeightsError):
        load_weights(torch_file)
    assert not loads


def test_a_measure_with_a_broken_weights_file_names_the_file(weights_file, quick_cal):
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    with pytest.raises(WeightsError, match="cpu-tiny.safetensors"):
        efflab.measure(Knobs(batch_size=1, seq_len=16), preset="cpu-tiny",
                       weights=weights_file, corpus=fs.SMALL_CORPUS, target_s=0.01,
                       calibration=quick_cal)


