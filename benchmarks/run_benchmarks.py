"""efflab's speed and memory targets, measured and written as JSON with the machine fingerprint.

Targets are data here, never timed unit tests. Each benchmark writes
``benchmarks/results/<name>.json``: what was measured (medians with spread and count), the
target, whether it was met, the calibration it was judged against, and the environment.

    python benchmarks/run_benchmarks.py                 # all
    python benchmarks/run_benchmarks.py --only mfu      # one
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import efflab
from efflab.measure.hardware import calibrate, environment, fingerprint

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "fingerprint": fingerprint(), "measured_at":
               time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(), **payload}
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"{name}: met={payload.get('met')} -> {out}")
    return out


def bench_mfu(cal: dict) -> None:
    """cpu-small fp32 training MFU vs the calibrated fp32 matmul peak (target >= 55%)."""
    rows = []
    for b in (8, 16, 32, 64):
        rec = efflab.measure(efflab.Knobs(batch_size=b), preset="cpu-small", workload="train",
                             target_s=5.0, calibration=cal, memory=False, quality=False)
        rows.append({"batch_size": b, "latency_ms": rec["latency_ms"],
                     "tokens_per_s": rec["throughput"]["tokens_per_s"],
                     "flops_per_step": rec["flops"]["per_step"],
                     "achieved_flops_per_s": rec["flops"]["achieved_per_s"],
                     "mfu": rec["flops"]["mfu"]})
    best = max(rows, key=lambda r: r["mfu"])
    write("cpu_small_train_mfu", {
        "target": "cpu-small fp32 training MFU >= 0.55 of the calibrated fp32 matmul peak",
        "peak_flops_per_s": cal["matmul"]["float32"]["flops_per_s"],
        "calibration": cal, "rows": rows, "best": best, "met": best["mfu"] >= 0.55})


def bench_lab_point(cal: dict, repeats: int = 5) -> None:
    """Wall time of one lab measurement point: cpu-small training, the Lab's defaults."""
    efflab.measure(efflab.Knobs(batch_size=8), preset="cpu-small", calibration=cal)  # warm caches
    walls = []
    for b in (8, 8, 16, 4, 8)[:repeats]:
        t0 = time.perf_counter()
        rec = efflab.measure(efflab.Knobs(batch_size=b), preset="cpu-small", workload="train",
                             target_s=1.0, calibration=cal)
        walls.append(time.perf_counter() - t0)
        assert rec["status"] == "ok", rec.get("message")
    walls.sort()
    write("lab_point_seconds", {
        "target": "one lab measurement point of cpu-small training takes <= 3 s",
        "seconds": {"median": statistics.median(walls), "p25": walls[len(walls) // 4],
                    "p75": walls[(3 * len(walls)) // 4], "n": len(walls), "all": walls},
        "note": "timing pass target_s=1.0 plus the tracked memory pass; quality and FLOPs are "
                "cached per configuration after the first point",
        "met": statistics.median(walls) <= 3.0})


def bench_test_suite() -> None:
    """Wall time of the whole test suite (`make test` minus the one-off venv set-up)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=HERE.parent, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout else []
    write("test_suite_seconds", {"target": "make test <= 10 minutes", "seconds": secs,
                                 "pytest_summary": tail, "returncode": proc.returncode,
                                 "met": secs <= 600 and proc.returncode == 0})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="mfu,lab_point,test_suite")
    args = ap.parse_args()
    cal = calibrate()
    which = args.only.split(",")
    if "mfu" in which:
        bench_mfu(cal)
    if "lab_point" in which:
        bench_lab_point(cal)
    if "test_suite" in which:
        bench_test_suite()


if __name__ == "__main__":
    main()
