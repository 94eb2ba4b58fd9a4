"""Tables and verdicts computed from measured records (pandas only: no torch, no charts)."""

from __future__ import annotations

import pandas as pd


def calibration_table(cal: dict) -> pd.DataFrame:
    """One row per number format: peak matmul GFLOP/s, and the machine balance it implies."""
    bw = cal["bandwidth_bytes_per_s"]
    rows = [{"dtype": dt, "peak GFLOP/s": v["flops_per_s"] / 1e9,
             "matmul sizes": ", ".join(str(n) for n in v["sizes"]),
             "bandwidth GB/s": bw / 1e9, "balance FLOP/byte": v["flops_per_s"] / bw}
            for dt, v in cal["matmul"].items()]
    return pd.DataFrame(rows).round(2)


def batching_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: latency, B·T/latency beside measured tokens/s, gain vs the smallest batch,
    arithmetic intensity, MFU and peak memory. Failed points keep their status."""
    ok = df[df["status"] == "ok"].sort_values("knobs.batch_size")
    if ok.empty:
        return df[["knobs.batch_size", "status", "message"]]
    lat_s = ok["latency_ms.median"] / 1e3
    tps = ok["throughput.tokens_per_s"]
    out = pd.DataFrame({
        "batch": ok["knobs.batch_size"],
        "latency ms (median)": ok["latency_ms.median"],
        "p25–p75 ms": [f"{a:.2f}–{b:.2f}" for a, b in zip(ok["latency_ms.p25"], ok["latency_ms.p75"])],
        "n": ok["latency_ms.n"],
        "B·T / latency": ok["throughput.tokens_per_step"] / lat_s,
        "tokens/s measured": tps,
        "gain vs smallest B": tps / tps.iloc[0],
        "arithmetic intensity": ok["theory.roofline.arithmetic_intensity"],
        "bound": ok["theory.roofline.bound"],
        "MFU": ok["flops.mfu"],
        "peak MiB": ok["memory.peak_bytes"] / 2**20,
    })
    return out.round(3).reset_index(drop=True)


def saturation(df: pd.DataFrame, fraction: float = 0.9) -> dict:
    """The smallest batch reaching ``fraction`` of the best measured throughput, and why."""
    ok = df[df["status"] == "ok"].sort_values("knobs.batch_size")
    if ok.empty:
        return {"batch": None, "text": "no successful measurements to analyse"}
    best = ok["throughput.tokens_per_s"].max()
    first = ok[ok["throughput.tokens_per_s"] >= fraction * best].iloc[0]
    b = int(first["knobs.batch_size"])
    ai = first["theory.roofline.arithmetic_intensity"]
    bal = first["theory.roofline.machine_balance"]
    gain = best / ok["throughput.tokens_per_s"].iloc[0]
    text = (f"Throughput reaches {fraction:.0%} of its best ({best:,.0f} tokens/s) at **batch {b}**; "
            f"batching bought ×{gain:.1f} over batch {int(ok['knobs.batch_size'].iloc[0])}. "
            f"There the arithmetic intensity is {ai:.1f} FLOP/byte against a machine balance of "
            f"{bal:.1f}: the step is {'compute' if ai >= bal else 'memory'}-bound, running at "
            f"{first['flops.mfu']:.0%} of the measured peak.")
    return {"batch": b, "best_tokens_per_s": float(best), "gain": float(gain), "text": text}
