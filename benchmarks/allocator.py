"""What glibc's trimming costs a pipeline stage's forward, and what keep_freed_memory wins back.

One process per allocator setting (glibc's default; efflab.measurement.allocator's
keep_freed_memory), each running the first stage of the 2-stage cpu-medium pipeline on one
thread, as a rank of lesson 15 does: 8 micro-batches of 8 sequences of 128 tokens, their
forwards held until the backwards (GPipe), or each forward followed by its backward (1F1B).
Same work in both; only how much memory is held at once differs.

    python benchmarks/allocator.py          # about a minute; writes results/allocator.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("default", "keep")


def child(mode: str, rounds: int, preset: str, batch: int, seq: int, m: int) -> dict:
    import numpy as np
    import torch

    from efflab.core.config import get_preset
    from efflab.core.model import build_model
    from efflab.measurement.allocator import keep_freed_memory
    from efflab.measurement.timing import summarize
    from efflab.systems.parallel.pipeline import Stage

    said = keep_freed_memory() if mode == "keep" else {"applied": False, "reason": "default"}
    torch.set_num_threads(1)
    cfg = get_preset(preset)
    stage = Stage(build_model(cfg, seed=0), 0, 2)
    idx = torch.randint(0, cfg.vocab_size, (batch, seq))  # (B, T)
    forward_s = {"gpipe": [], "1f1b": []}
    for r in range(rounds + 1):  # the first round warms up and is left out
        for schedule, times in forward_s.items():
            held = []
            for _ in range(m):
                t0 = time.perf_counter()
                y = stage(idx)  # (B, T, C)
                if r:
                    times.append(time.perf_counter() - t0)
                if schedule == "gpipe":
                    held.append(y)
                else:
                    y.backward(torch.ones_like(y))
            for y in held:
                y.backward(torch.ones_like(y))
            del held
            stage.zero_grad(set_to_none=True)
    # one forward, and the m forwards of one step (what the bubble sees), per schedule
    one = {s: summarize(t) for s, t in forward_s.items()}
    step = {s: summarize(np.asarray(t).reshape(rounds, m).sum(axis=1))
            for s, t in forward_s.items()}
    return {"allocator": said, "forward": one, "step_forwards": step,
            "gpipe_over_1f1b": step["gpipe"]["median"] / step["1f1b"]["median"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=MODES)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--preset", default="cpu-medium")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--micro-batches", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS / "allocator.json"))
    a = ap.parse_args()
    shape = {"preset": a.preset, "batch": a.batch, "seq": a.seq, "m": a.micro_batches}
    if a.child:
        print(json.dumps(child(a.child, a.rounds, **shape)))
        return
    from efflab.measurement.hardware import environment, fingerprint, load_average

    load = load_average()
    runs = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--child", mode, "--rounds", str(a.rounds),
               "--preset", a.preset, "--batch", str(a.batch), "--seq", str(a.seq),
               "--micro-batches", str(a.micro_batches)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
    result = {"benchmark": "allocator", "shape": {**shape, "stage": "0 of 2", "threads": 1},
              "loadavg_before": load, "loadavg_after": load_average(),
              "provisional": bool(not (load and load[0] < 0.5)),
              "fingerprint": fingerprint(1), "env": environment("cpu"), "runs": runs}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for mode, r in runs.items():
        g, o = r["step_forwards"]["gpipe"], r["step_forwards"]["1f1b"]
        print(f"{mode:8s} a step's {a.micro_batches} forwards, ms: GPipe {g['median']:.0f} "
              f"({g['p25']:.0f}-{g['p75']:.0f})  1F1B {o['median']:.0f} ({o['p25']:.0f}-"
              f"{o['p75']:.0f})  n={g['n']}  GPipe/1F1B {r['gpipe_over_1f1b']:.2f}")


if __name__ == "__main__":
    main()
