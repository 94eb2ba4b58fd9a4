"""The measurement context: threads from the CPUs really available, noise flagged, quality with
its interval, and paired comparisons that resolve small differences."""

import numpy as np
import pytest

from efflab.measurement import hardware, timing
from efflab.measurement.workloads import summarize_windows
from efflab.studies.analysis import quality_difference


def test_available_cpus_respects_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    quota = tmp_path / "cpu.max"
    quota.write_text("200000 100000\n")  # 2 CPUs' worth of time per period
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: quota if p == "/sys/fs/cgroup/cpu.max" else real_path(p))
    assert hardware.available_cpus() == 2
    quota.write_text("max 100000\n")  # no quota: the affinity mask decides
    assert hardware.available_cpus() == 8
    assert hardware.default_threads(3) == 3  # a knob set by the learner wins


def test_load_average_is_rounded_and_none_where_the_os_keeps_none(monkeypatch):
    monkeypatch.setattr(hardware.os, "getloadavg", lambda: (1.23456, 0.5, 12.0049))
    assert hardware.load_average() == [1.23, 0.5, 12.0]
    assert hardware.environment()["loadavg_1min"] == 1.23
    monkeypatch.delattr(hardware.os, "getloadavg")
    assert hardware.load_average() is None
    assert hardware.environment()["loadavg_1min"] is None


def test_noise_is_measured_and_flagged():
    steady = timing.summarize([0.100, 0.101, 0.099, 0.100, 0.102])
    assert not steady["noisy"] and steady["cv"] < 0.02
    jitter = timing.summarize([0.10, 0.15, 0.10, 0.20, 0.11, 0.19])
    assert jitter["noisy"] and jitter["iqr_over_median"] > timing.NOISY_IQR
    assert jitter["n"] == 6 and jitter["p25"] < jitter["median"] < jitter["p75"]


def test_repeats_adapt_until_the_timing_is_stable(monkeypatch):
    clock = [0.0]
    durations = iter([0.01, 0.03] * 4 + [0.02] * 200)  # jittery at first, then steady

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def step():
        clock[0] += next(durations)

    samples = timing.time_steps(step, warmup=0, min_repeats=5, target_s=0.05, max_factor=100)
    assert len(samples) > 8  # went on past the minimum while noisy
    assert not timing.summarize(samples)["noisy"]  # and stopped once stable
    clock[0] = 0.0
    noisy = iter([0.01, 0.05] * 1000)
    samples = timing.time_steps(lambda: clock.__setitem__(0, clock[0] + next(noisy)), warmup=0,
                                min_repeats=5, target_s=0.1, max_factor=3)
    assert sum(samples) == pytest.approx(0.3, abs=0.06)  # capped at 3x the target time


def test_quality_interval_shrinks_with_more_windows():
    rng = np.random.default_rng(0)
    few = summarize_windows(rng.normal(1.2, 0.4, 64), 128)
    many = summarize_windows(rng.normal(1.2, 0.4, 1024), 128)
    assert many["val_loss_ci95"] < few["val_loss_ci95"] / 3  # 1/sqrt(16) = 1/4
    assert many["eval_tokens"] == 1024 * 128
    assert many["bits_per_byte"] == pytest.approx(many["val_loss"] / np.log(2))


def _rec(losses, corpus="c1"):
    q = {**summarize_windows(np.asarray(losses), 128), "window_losses": list(losses)}
    return {"quality": q, "context": {"corpus": corpus}}


def test_paired_difference_resolves_what_unpaired_intervals_cannot():
    rng = np.random.default_rng(1)
    base = rng.normal(1.13, 0.38, 512)  # windows vary a lot between files ...
    slightly_worse = base * 1.005 + rng.normal(0, 0.002, 512)  # ... a model 0.5% worse on each
    d = quality_difference(_rec(base), _rec(slightly_worse))
    assert d["paired"] and not d["inside_noise"] and d["relative"] == pytest.approx(0.005, abs=0.001)
    assert "measurably worse" in d["verdict"]
    other_corpus = quality_difference(_rec(base), _rec(slightly_worse, corpus="c2"))
    assert not other_corpus["paired"] and other_corpus["inside_noise"]  # unpaired: too wide
    same = quality_difference(_rec(base), _rec(base + rng.normal(0, 0.002, 512)))
    assert same["inside_noise"] and "inside the noise" in same["verdict"]
