"""Tables and verdicts computed from measured records (pandas only: no torch, no charts)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def calibration_table(cal: dict) -> pd.DataFrame:
    """One row per number format: peak matmul GFLOP/s, and the machine balance it implies."""
    bw = cal["bandwidth_bytes_per_s"]
    read = cal.get("read_bandwidth_bytes_per_s", bw)
    rows = [{"dtype": dt, "peak GFLOP/s": v["flops_per_s"] / 1e9,
             "matmul sizes": ", ".join(str(n) for n in v["sizes"]),
             "copy GB/s": bw / 1e9, "read GB/s": read / 1e9,
             "balance FLOP/byte": v["flops_per_s"] / bw}
            for dt, v in cal["matmul"].items()]
    return pd.DataFrame(rows).round(2)


def _marked(df: pd.DataFrame, column: str) -> pd.Series:
    """A record flag as booleans (``reused``, ``latency_ms.noisy``): True only where the record
    says True; records without the flag are False."""
    if column not in df.columns:
        return pd.Series(False, index=df.index, dtype=bool)
    return df[column].eq(True).astype(bool)


def batching_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per batch size: latency, B·T/latency beside measured tokens/s, gain vs the smallest batch,
    arithmetic intensity, MFU and peak memory; ``reused`` (taken from the store, not measured
    now) and ``noisy`` (the timing was flagged unstable). Failed points keep their status."""
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
        "noisy": _marked(ok, "latency_ms.noisy"),
        "reused": _marked(ok, "reused"),
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


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The configurations no other beats on both ``x`` and ``y`` (lower is better on both),
    sorted by ``x``. Only successful records take part."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    ok = ok.dropna(subset=[x, y]).sort_values([x, y])
    keep, best_y = [], float("inf")
    for idx, row in ok.iterrows():
        if row[y] < best_y:  # better quality than everything at lower or equal cost
            keep.append(idx)
            best_y = row[y]
    return ok.loc[keep]


def best_under_budget(df: pd.DataFrame, cost: str, budget: float, quality: str) -> pd.DataFrame:
    """The single best-``quality`` (lowest) configuration whose ``cost`` fits the budget (empty
    if none fits); ties go to the cheaper one."""
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    fits = ok[ok[cost] <= budget].dropna(subset=[quality])
    if fits.empty:
        return fits
    return fits.sort_values([quality, cost]).head(1)


def curve_gaps(curves: pd.DataFrame, reference: str = "fp32") -> str:
    """Markdown: how far each variant's training loss strayed from the reference run's, step by
    step (same batches, so the gap is the technique's alone), and the last held-out losses."""
    ok = curves[curves["status"] == "ok"]
    if ok.empty or reference not in set(ok["variant"]):
        return f"no successful {reference!r} run to compare against"
    loss = ok.pivot_table(index="step", columns="variant", values="train_loss")
    lines = [f"| variant | max \\|loss − {reference}\\| | mean gap | last held-out loss |",
             "|---|---|---|---|"]
    val = ok.dropna(subset=["val_loss"]) if "val_loss" in ok else ok.iloc[0:0]
    for variant in loss.columns:
        gap = (loss[variant] - loss[reference]).abs()
        last = val[val["variant"] == variant]["val_loss"]
        last_txt = f"{last.iloc[-1]:.4f}" if len(last) else "—"
        lines.append(f"| {variant} | {gap.max():.4f} | {gap.mean():.4f} | {last_txt} |")
    refused = curves[curves["status"] == "refused"]
    for _, r in refused.iterrows():
        lines.append(f"| {r['variant']} | refused | | {r['message']} |")
    return "\n".join(lines)


def technique_table(df: pd.DataFrame, knob: str) -> pd.DataFrame:
    """One row per value of ``knob`` (a technique toggle): status, step latency with spread,
    slowdown against the first row, tokens/s, measured vs predicted peak memory, the largest
    activation footprint, and quality; ``reused`` (taken from the store, not measured now) and
    ``noisy`` (the timing was flagged unstable). Refused or failed rows keep their message."""
    col = f"knobs.{knob}"
    rows = []
    base = None
    reused, noisy = _marked(df, "reused"), _marked(df, "latency_ms.noisy")
    for i, r in df.iterrows():
        row = {knob: r[col], "status": r["status"], "reused": bool(reused[i])}
        if r["status"] != "ok":
            row["message"] = r.get("message")
            rows.append(row)
            continue
        lat = r["latency_ms.median"]
        base = lat if base is None else base
        row.update({
            "latency ms": lat,
            "p25–p75 ms": f"{r['latency_ms.p25']:.2f}–{r['latency_ms.p75']:.2f}",
            "n": r["latency_ms.n"],
            "noisy": bool(noisy[i]),
            "× first": lat / base,
            "tokens/s": r["throughput.tokens_per_s"],
            "peak MiB": r.get("memory.peak_bytes", float("nan")) / 2**20,
            "predicted MiB": r.get("theory.memory.peak_bytes", float("nan")) / 2**20,
            "activations MiB (max)": r.get("memory.max_by_category.activations",
                                           float("nan")) / 2**20,
            "bits/byte": r.get("quality.bits_per_byte"),
        })
        rows.append(row)
    out = pd.DataFrame(rows, index=df.index)
    vs = quality_vs_first(df)
    if vs is not None:
        out = out.join(vs)
    return out.round(3)


def _quality_of(row: pd.Series) -> dict:
    q = {k.removeprefix("quality."): row[k] for k in row.index if k.startswith("quality.")}
    return {"quality": q, "context": {"corpus": row.get("context.corpus")}}


def quality_vs_first(df: pd.DataFrame) -> pd.DataFrame | None:
    """Per row of a sweep: its held-out loss against the first measured row's, with the 95%
    interval of the difference and whether it is inside the noise (paired on the same windows
    where the records carry them, see :func:`quality_difference`). None without quality."""
    if "quality.val_loss" not in df:
        return None
    ok = df[(df["status"] == "ok") & df["quality.val_loss"].notna()]
    if len(ok) < 2:
        return None
    first = _quality_of(ok.iloc[0])
    out = {}
    for i, r in ok.iloc[1:].iterrows():
        d = quality_difference(first, _quality_of(r))
        base = first["quality"]["val_loss"]
        out[i] = {"Δ loss vs first %": 100 * d["relative"], "± 95% %": 100 * d["ci95"] / base,
                  "quality vs first": "inside noise" if d["inside_noise"] else
                  ("worse" if d["diff"] > 0 else "better")}
    return pd.DataFrame.from_dict(out, orient="index")


def _applies(name: str, row: pd.Series) -> bool:
    """Whether knob ``name`` means anything for this row (only int4 uses ``group_size``)."""
    return name != "group_size" or row.get("knobs.quantization") == "int4-weight"


def add_costs(df: pd.DataFrame, vary: list[str] | None = None) -> pd.DataFrame:
    """The sweep with the columns a frontier compares: ``config`` (a label from the varied
    knobs that apply to the row), ``ms per token`` (1000 / tokens per second: the cost of a
    token in machine time), ``ms per request token`` (for decoding: what one request waits for
    each of its tokens — the step's latency, since a step gives every sequence of the batch one
    token; B times 1000 / throughput) and ``peak MiB``."""
    out = df.copy()
    names = vary or []
    out["config"] = [", ".join(f"{n}={r[f'knobs.{n}']}" for n in names if _applies(n, r))
                     or str(i) for i, r in out.iterrows()]
    if "throughput.tokens_per_s" in out:
        out["ms per token"] = 1000.0 / out["throughput.tokens_per_s"]
    if "latency_ms.median" in out and "latency_ms.unit" in out:
        out["ms per request token"] = out["latency_ms.median"].where(out["latency_ms.unit"] == "token")
    if "memory.peak_bytes" in out:
        out["peak MiB"] = out["memory.peak_bytes"] / 2**20
    return out


def budget_answer(best: pd.DataFrame, cost: str, budget: float,
                  quality: str = "quality.bits_per_byte") -> str:
    """One sentence (Markdown) naming the best configuration under the budget, or saying none fits."""
    if best is None or best.empty:
        return f"**No measured configuration fits** {cost} ≤ {budget:g}: loosen the budget."
    r = best.iloc[0]
    return (f"**Best under {cost} ≤ {budget:g}:** `{r['config']}` — {cost} {r[cost]:.3f}, "
            f"{quality} {r[quality]:.4f}.")


def quality_difference(a: dict, b: dict) -> dict:
    """How much worse record ``b``'s held-out loss is than record ``a``'s, with a 95% interval,
    and whether the difference is inside the noise (the interval contains 0).

    When both were evaluated on the same windows (same corpus, context and count) the
    comparison is paired, window by window — it resolves differences far smaller than either
    value's own interval; otherwise the two intervals are combined (unpaired, wider).
    Returns ``{"diff": nats, "ci95": nats, "relative": diff / a's loss, "paired": bool,
    "inside_noise": bool, "verdict": one sentence}``.
    """
    qa, qb = a.get("quality") or {}, b.get("quality") or {}
    if qa.get("val_loss") is None or qb.get("val_loss") is None:
        raise ValueError("both records need a measured quality (val_loss)")
    wa, wb = qa.get("window_losses"), qb.get("window_losses")
    wa, wb = (w if isinstance(w, (list, tuple, np.ndarray)) else None for w in (wa, wb))
    same = (wa is not None and wb is not None and len(wa) == len(wb) > 1
            and qa.get("seq_len") == qb.get("seq_len")
            and (a.get("context") or {}).get("corpus") == (b.get("context") or {}).get("corpus"))
    if same:
        d = np.asarray(wb, dtype=np.float64) - np.asarray(wa, dtype=np.float64)
        diff, half = float(d.mean()), 1.96 * float(d.std(ddof=1)) / math.sqrt(d.size)
    else:
        diff = float(qb["val_loss"] - qa["val_loss"])
        half = math.hypot(qa.get("val_loss_ci95") or 0.0, qb.get("val_loss_ci95") or 0.0)
    rel = diff / qa["val_loss"]
    inside = abs(diff) <= half
    how = "paired, same windows" if same else "unpaired"
    verdict = (f"{rel:+.2%} ({diff:+.4f} ± {half:.4f} nats, 95%, {how}): "
               + ("inside the noise — no measurable difference" if inside
                  else ("measurably worse" if diff > 0 else "measurably better")))
    return {"diff": diff, "ci95": half, "relative": rel, "paired": same,
            "inside_noise": inside, "verdict": verdict}
