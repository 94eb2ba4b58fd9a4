"""Faults survived, as numbers: sweeps SIGKILLed at random moments, writers racing on one store,
a configuration that exhausts memory in its worker, and the fuzzers' case counts.

Writes ``benchmarks/results/faults.json``: kills that hit a running sweep, configurations lost
and duplicated after the last restart (target: zero of each), the concurrent writers and what
they left, the isolated OOM's outcome, fuzz cases tried per property (from hypothesis's own
statistics), wall seconds of each part, the load average before and after (the host is shared:
the seconds say more about the neighbours than about efflab), and the machine fingerprint.

    python benchmarks/faults.py [--kills 20] [--seed 20261129] [--no-fuzz]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import fault_support as fs  # noqa: E402

import efflab  # noqa: E402
from efflab.core.store import Store  # noqa: E402
from efflab.measurement.hardware import environment, fingerprint, load_average  # noqa: E402


def _counts(store) -> collections.Counter:
    return collections.Counter((r["knobs"]["batch_size"], r["knobs"]["seq_len"])
                               for r in Store(store).records())


def _tally(store, want: set) -> dict:
    counts = _counts(store)
    return {"configurations": len(want), "stored": sum(counts.values()),
            "lost": len(want - set(counts)),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "unexpected": len(set(counts) - want)}


def kills(cal: dict, n: int, seed: int, folder: Path) -> dict:
    """A kill campaign like tests/test_faults.py's, counted: SIGKILL after 0-2 newly committed
    records plus up to 0.4 s (the test scales that offset to the time a configuration takes),
    ``n`` times, then one run to the end."""
    store = str(folder / "kills")
    vary = fs.grid_of(range(1, 21), fs.SEQ_LENS)
    want = {(b, t) for b in vary["batch_size"] for t in vary["seq_len"]}
    ctx = fs.sweeper()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    hit, stored_after = 0, []
    for _ in range(n):
        started, recorded = ctx.Event(), ctx.Value("i", 0)
        proc = ctx.Process(target=fs.run_sweep, args=(store, vary, cal, started, recorded))
        proc.start()
        started.wait(300)
        after, extra = rng.choice((0, 1, 1, 2)), rng.uniform(0.0, 0.4)
        while recorded.value < after and proc.is_alive():
            time.sleep(0.005)
        time.sleep(extra)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            hit += 1
        proc.join(60)
        stored_after.append(sum(_counts(store).values()))
    final = ctx.Process(target=fs.run_sweep, args=(store, vary, cal))
    final.start()
    final.join(1800)
    return {"kills": n, "kills_hit_a_running_sweep": hit, "seed": seed,
            "records_after_each_kill": stored_after, "final_exitcode": final.exitcode,
            **_tally(store, want), "seconds": round(time.perf_counter() - t0, 1)}


def concurrent(cal: dict, folder: Path) -> dict:
    """Two sweep processes and a Lab panel's Run (a third process) writing one store, grids
    overlapping (the test's scenario, counted)."""
    store = str(folder / "shared")
    a = fs.grid_of((1, 2, 3, 4, 5, 6), (8, 16))
    b = fs.grid_of((4, 5, 6, 7, 8, 9), (8, 16))
    ctx = fs.sweeper()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=fs.run_sweep, args=(store, g, cal, None, None, name))
             for g, name in ((a, "A"), (b, "B"))]
    procs.append(ctx.Process(target=fs.run_lab, args=(store, (2, 5, 8, 10), 16, cal)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
    want = ({(x, t) for x in a["batch_size"] + b["batch_size"] for t in (8, 16)}
            | {(x, 16) for x in (2, 5, 8, 10)})
    return {"writers": ["sweep process A", "sweep process B", "Lab panel pressing Run (process C)"],
            "overlapping_configurations": 8, "exitcodes": [p.exitcode for p in procs],
            **_tally(store, want), "seconds": round(time.perf_counter() - t0, 1)}


def oom(cal: dict, folder: Path) -> dict:
    limit = 192 * 2**20
    t0 = time.perf_counter()
    df = efflab.sweep(efflab.Knobs(seq_len=64), {"batch_size": [512, 1]}, preset="cpu-tiny",
                      store=folder / "oom", weights="random", corpus=fs.SMALL_CORPUS,
                      target_s=0.01, progress=False, calibration=cal, isolate=True,
                      memory_limit_bytes=limit)
    return {"memory_limit_bytes": limit, "batch_sizes": [512, 1],
            "statuses": list(df["status"]), "messages": [str(m)[:200] for m in df["message"]],
            "seconds": round(time.perf_counter() - t0, 1)}


def fuzz() -> dict:
    """Run tests/test_fuzz.py once and read hypothesis's statistics: cases tried per property."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--hypothesis-show-statistics", str(ROOT / "tests" / "test_fuzz.py")],
                         capture_output=True, text=True, cwd=ROOT)
    cases: dict[str, int] = {}
    current = None
    for line in out.stdout.splitlines():
        m = re.match(r"^tests/test_fuzz\.py::(\w+):", line.strip())
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) passing(?: examples?)?, (\d+) failing", line)
        if m and current:  # generate and explicit phases both count: each ran a case
            cases[current] = cases.get(current, 0) + int(m.group(1)) + int(m.group(2))
    summary = [line for line in out.stdout.splitlines() if " passed" in line or " failed" in line]
    return {"cases_per_property": cases, "cases_total": sum(cases.values()),
            "pytest_summary": summary[-1:] if summary else out.stdout[-400:],
            "returncode": out.returncode, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--no-fuzz", action="store_true")
    args = ap.parse_args()
    load_before = load_average()
    cal = efflab.calibrate(quick=True)
    with TemporaryDirectory(prefix="efflab-faults-") as tmp:
        folder = Path(tmp)
        result = {"kills": kills(cal, args.kills, args.seed, folder),
                  "concurrent_writers": concurrent(cal, folder),
                  "isolated_oom": oom(cal, folder)}
    if not args.no_fuzz:
        result["fuzz"] = fuzz()
    k, c = result["kills"], result["concurrent_writers"]
    met = (k["lost"] == 0 and k["duplicated"] == 0 and k["unexpected"] == 0
           and c["lost"] == 0 and c["duplicated"] == 0 and c["unexpected"] == 0
           and c["exitcodes"] == [0, 0, 0] and k["final_exitcode"] == 0
           and result["isolated_oom"]["statuses"] == ["oom", "ok"]
           and (args.no_fuzz or result["fuzz"]["returncode"] == 0))
    payload = {"benchmark": "faults", "fingerprint": fingerprint(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(),
               "target": "zero records lost or duplicated under kills and concurrent writers; "
                         "an OOM recorded as oom; every fuzz case runs or is refused",
               "met": met, **result,
               "host": {"shared": True, "loadavg_before": load_before,
                        "loadavg_after": load_average(), "cores": os.cpu_count(),
                        "note": "a shared 2-core host: the seconds reflect its other load"}}
    out = HERE / "results" / "faults.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(json.dumps({"met": met, "kills": {x: k[x] for x in ("kills_hit_a_running_sweep", "lost",
                                                               "duplicated")},
                      "concurrent": {x: c[x] for x in ("lost", "duplicated")},
                      "oom": result["isolated_oom"]["statuses"]}), f"-> {out}")


if __name__ == "__main__":
    main()
