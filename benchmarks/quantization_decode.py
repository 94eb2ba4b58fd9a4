"""Decode tokens/s at batch 1 for fp32 and each quantized format, beside the bandwidth bound.

Targets (from the quantization issue): on the memory-bound wide preset, int4 decode >= 3x the
fp32 tokens/s; on the trained cpu-small checkpoint, int8 val bits-per-byte within 1% of fp32
and int4 within 5%.

    python benchmarks/quantization_decode.py                  # 2 threads, both presets
    python benchmarks/quantization_decode.py --threads 1 --runs 9

The formats are timed in interleaved rounds (fp32, int8, int4, fp32, ...) so that a neighbour
process slowing the machine for a while hurts every format alike. Each round times
``--steps`` decode steps of the ``decode`` workload (prompt 64, batch 1); the table gives the
median tokens/s over rounds with the 25th/75th percentiles and the count. The bound is
``read bandwidth / weight_bytes_per_token``: what the format could reach if decoding only
streamed its weights, with the bandwidth of a large *read* (a sum over 256 MiB: decoding
reads weights and writes almost nothing, so a copy's read+write rate would understate it).
Writes ``benchmarks/results/quantization_decode.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from efflab.core.config import Knobs, get_preset
from efflab.core.data import load_corpus
from efflab.core.model import build_model
from efflab.core.weights import load_model
from efflab.measurement.hardware import copy_bandwidth, environment, fingerprint, read_bandwidth
from efflab.measurement.workloads import eval_loss, prepare
from efflab.techniques import apply_
from efflab.techniques.quantization import (
    QuantizationConfig,
    model_bytes,
    weight_bytes_per_token,
)

RESULTS = Path(__file__).resolve().parent / "results"
# the memory-bound preset: fp32 weights ~229 MB, ~7x this CPU's 32 MiB L3
CPU_WIDE = get_preset("cpu-wide")
FORMATS = {"fp32": QuantizationConfig("none"), "int8": QuantizationConfig("int8-weight"),
           "int4": QuantizationConfig("int4-weight", 64), "int8-dynamic": QuantizationConfig("int8-dynamic")}


def decode_rates(base, formats: list[str], corpus, runs: int, steps: int, bandwidth: float):
    knobs = Knobs(batch_size=1, workload="decode", seq_len=64, gen_tokens=32)
    prepared, models = {}, {}
    for f in formats:
        models[f] = apply_(copy.deepcopy(base), FORMATS[f]).eval()
        prepared[f] = prepare("decode", models[f], corpus, knobs)
        for _ in range(5):  # warm up: first calls allocate
            prepared[f].step()
    rates = {f: [] for f in formats}
    for _ in range(runs):
        for f in formats:
            t0 = time.perf_counter()
            for _ in range(steps):
                prepared[f].step()
            rates[f].append(steps / (time.perf_counter() - t0))
    rows = []
    for f in formats:
        q = statistics.quantiles(rates[f], n=4) if runs > 1 else [rates[f][0]] * 3
        per_token = weight_bytes_per_token(models[f])
        rows.append({"format": f, "tokens_per_s": statistics.median(rates[f]), "p25": q[0],
                     "p75": q[2], "n": runs, "model_bytes": model_bytes(models[f]),
                     "bytes_per_token": per_token, "bound_tokens_per_s": bandwidth / per_token})
    fp32 = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_fp32"] = r["tokens_per_s"] / fp32
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--formats", default="fp32,int8,int4")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    formats = args.formats.split(",")
    corpus = load_corpus()
    bandwidth = read_bandwidth()
    small = load_model("cpu-small").eval()
    out = {"threads": args.threads, "read_bandwidth_bytes_per_s": bandwidth,
           "copy_bandwidth_bytes_per_s": copy_bandwidth(), "presets": {}}
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s, copy (read+write) "
          f"{out['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, {args.threads} threads")
    for name, base in [("cpu-wide", build_model(CPU_WIDE)), ("cpu-small", small)]:
        rows = decode_rates(base, formats, corpus, args.runs, args.steps, bandwidth)
        out["presets"][name] = rows
        for r in rows:
            print(f"{name:9s} {r['format']:12s} {r['tokens_per_s']:8.1f} tok/s "
                  f"[{r['p25']:.1f}, {r['p75']:.1f}] n={r['n']}  x{r['speedup_vs_fp32']:.2f}  "
                  f"weights {r['model_bytes'] / 1e6:7.2f} MB  read/token "
                  f"{r['bytes_per_token'] / 1e6:7.2f} MB  bound {r['bound_tokens_per_s']:.0f} tok/s")
    bpb = {}
    for f in ["fp32", "int8", "int4", "int8-dynamic"]:
        m = apply_(copy.deepcopy(small), FORMATS[f])
        bpb[f] = eval_loss(m, corpus, 128, batch_size=8, n_batches=8)["bits_per_byte"]
        print(f"cpu-small {f:12s} val bpb {bpb[f]:.4f} ({100 * (bpb[f] / bpb['fp32'] - 1):+.2f}%)")
    out["val_bits_per_byte"] = bpb
    wide = {r["format"]: r for r in out["presets"]["cpu-wide"]}
    out["targets"] = {
        "int4_decode_3x_fp32_on_cpu_wide": wide.get("int4", {}).get("speedup_vs_fp32", 0) >= 3,
        "int8_bpb_within_1pct": bpb["int8"] <= 1.01 * bpb["fp32"],
        "int4_bpb_within_5pct": bpb["int4"] <= 1.05 * bpb["fp32"],
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "quantization_decode.json"
    payload = {"benchmark": "quantization_decode", "fingerprint": fingerprint(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(), **out}
    path.write_text(json.dumps(payload, indent=1, default=str))
    print("targets:", out["targets"], "->", path)


if __name__ == "__main__":
    main()
