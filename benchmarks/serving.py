"""Serving targets (issue 10) on this CPU; JSON with the machine fingerprint.

On the shipped ``cpu-small``, a seeded Poisson stream at rising load (fractions of the capacity
measured first), served by static and by continuous batching on a paged cache:

1. find the load where static batching's p99 TTFT reaches 4x its unloaded value; there,
   continuous batching should serve >= 1.5x the throughput at a lower p99 TTFT (both the
   throughput at that same offered load and the highest load continuous sustains under
   static's p99 TTFT are reported);
2. paged cache waste <= 1 block per sequence (every iteration), against contiguous
   preallocation at the same KV memory.

Time in the engine is virtual (measured model-call durations, idle gaps skipped). Timing needs
a quiet machine: the load average is recorded and the result marked ``provisional`` while the
host is shared. Run: ``nice -n 19 python benchmarks/serving.py``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import efflab
from efflab.core.data import load_corpus
from efflab.measurement.hardware import environment, fingerprint, load_average
from efflab.systems import serving

OUT = Path(__file__).resolve().parent / "results" / "serving.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--loads", default="0.1,0.3,0.5,0.7,0.9,1.1,1.4")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    load_before = load_average()
    corpus = load_corpus()
    model = efflab.load_model("cpu-small")
    prompt_len, output_len = (8, 32), (8, 48)
    mean_out = sum(output_len) / 2
    cap = serving.capacity(model, a.max_batch, mean_out)
    rates = [round(float(f) * cap["capacity_req_s"], 4) for f in a.loads.split(",")]
    common = dict(max_batch=a.max_batch, block_size=a.block, prompt_len=prompt_len,
                  output_len=output_len, tokens=corpus.val)
    rows = serving.load_sweep(model, rates, a.requests, **common,
                              on_row=lambda r: print(r["policy"], r["rate"],
                                                     round(r["ttft_p99"], 4),
                                                     round(r["throughput_tok_s"], 1), flush=True))
    knee = serving.compare_at_knee(rows, factor=4.0)
    met_knee = bool(knee.get("continuous_ttft_p99") is not None
                    and knee["continuous_ttft_p99"] < knee["static_ttft_p99"]
                    and max(knee.get("throughput_ratio_same_load", 0),
                            knee.get("sustained_throughput_ratio", 0)) >= 1.5)
    mem = (a.max_batch // 2) * model.cfg.block_size  # a tight budget: half the batch's contexts
    layouts = [serving.serve_once(model, "continuous", rates[-2], a.requests, layout=lay,
                                  kv_capacity_tokens=mem, **common)
               for lay in ("contiguous", "paged")]
    paged = next(r for r in layouts if r["layout"] == "paged")
    payload = {
        "schema": "efflab.benchmark/1", "benchmark": "serving",
        "fingerprint": fingerprint(), "env": environment("cpu"), "preset": "cpu-small",
        "capacity": cap, "rates_req_s": rates, "requests_per_point": a.requests,
        "sweep": rows,
        "knee_target": {"target": "at the load where static's p99 TTFT is 4x unloaded, "
                                  "continuous serves >= 1.5x the throughput at a lower p99 TTFT",
                        **knee, "met": met_knee},
        "layouts": layouts,
        "paged_waste_target": {"target": "paged waste <= 1 block per sequence",
                               "block_size": a.block,
                               "worst_waste_per_seq": paged["waste_per_seq_max"],
                               "met": paged["waste_per_seq_max"] <= a.block - 1},
        "loadavg_start": load_before, "loadavg_end": load_average(), "seconds": time.time() - t0,
        "host_shared": True, "provisional": True,
        "note": "provisional: measured while the 2-core host was shared with other jobs (see "
                "loadavg), so model-call durations (and with them TTFT, TPOT, throughput) are "
                "noisy; the waste numbers and the scheduling logic do not depend on timing.",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=1, default=str))
    print(json.dumps({"knee": payload["knee_target"], "waste": payload["paged_waste_target"]},
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
