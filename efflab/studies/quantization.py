"""Lesson 05's table: what each quantization scheme stores, reads per token and loses.

Built from the techniques layer's quantizers (:mod:`efflab.techniques.quantization`) on the
shipped weights, with this machine's calibrated read bandwidth."""

from __future__ import annotations

import math

import pandas as pd

from efflab.core.weights import load_model
from efflab.studies.analysis import quality_difference
from efflab.techniques.quantization import (
    QuantizationConfig,
    layer_sqnr,
    model_bytes,
    weight_bytes_per_token,
)
from efflab.techniques.registry import apply_


def quantization_table(preset: str, schemes=("none", "int8-weight", "int4-weight"),
                       group_size: int = 64, calibration: dict | None = None):
    """Per scheme, for ``preset``'s shipped weights: model bytes as stored, bytes read per
    decoded token at batch 1, the bandwidth bound tokens/s ≤ read bandwidth / bytes per token
    (with this machine's calibrated read bandwidth), and the weakest layer's SQNR."""
    rows = []
    for mode in schemes:
        config = QuantizationConfig(mode, group_size)
        model = apply_(load_model(preset), config)
        per_token = weight_bytes_per_token(model)
        row = {"scheme": mode, "group size": group_size if mode == "int4-weight" else None,
               "model MB": model_bytes(model) / 1e6, "MB read per token": per_token / 1e6}
        if calibration is not None:
            bw = calibration.get("read_bandwidth_bytes_per_s", calibration["bandwidth_bytes_per_s"])
            row["bound tokens/s"] = bw / per_token
        if mode != "none":
            sq = layer_sqnr(load_model(preset), config)
            row["min layer SQNR dB"] = min(r["sqnr_db"] for r in sq)
        rows.append(row)
    return pd.DataFrame(rows)


DB_PER_BIT = 20 * math.log10(2)  # ~6.02 dB: one more bit halves the rounding step


def sqnr_verdict(rows: list[dict], low: str = "int4-weight", high: str = "int8-weight") -> str:
    """One sentence from :func:`layer_sqnr` rows (each with ``scheme``): the median layer SQNR of
    ``high`` and ``low``, their gap, and that gap against the ~6 dB-per-bit rule of thumb."""
    def median(scheme):
        v = sorted(r["sqnr_db"] for r in rows if r["scheme"] == scheme)
        if not v:
            raise ValueError(f"no SQNR rows for {scheme!r}")
        return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2, len(v)

    (hi, n), (lo, _) = median(high), median(low)
    bits = {"int8-weight": 8, "int4-weight": 4, "int8-dynamic": 8}
    rule = DB_PER_BIT * (bits[high] - bits[low])
    gap = hi - lo
    how = (f"{rule - gap:.1f} dB better than the rule: its per-group scales track the weights "
           "more closely than one scale per row" if gap < rule else
           f"{gap - rule:.1f} dB worse than the rule")
    return (f"Median layer SQNR over {n} layers: {high} {hi:.1f} dB, {low} {lo:.1f} dB — a gap of "
            f"{gap:.1f} dB against the rule of thumb's {rule:.1f} dB, so {low} lands {how}.")


def _row(df: pd.DataFrame, scheme: str):
    ok = df[(df["status"] == "ok") & (df["knobs.quantization"] == scheme)]
    return None if ok.empty else ok.iloc[0]


def _record(row) -> dict:
    q = {k.removeprefix("quality."): row[k] for k in row.index if k.startswith("quality.")}
    return {"quality": q, "context": {"corpus": row.get("context.corpus")}}


def quality_verdicts(df: pd.DataFrame, reference: str = "none") -> list[str]:
    """Per quantized scheme of a sweep with quality: its held-out loss against ``reference``'s,
    paired on the same windows where the records allow (:func:`quality_difference`), and its
    bits/byte change, with how many held-out windows both were scored on where the records say
    (fewer windows: a wider interval). Schemes that did not run say so."""
    ref = _row(df, reference)
    if ref is None:
        return [f"no successful {reference!r} row to compare against"]
    out = []
    for scheme, r, msg in _others(df, reference):
        if r is None:
            out.append(f"{scheme}: did not run ({msg})")
            continue
        d = quality_difference(_record(ref), _record(r))
        dbpb = r["quality.bits_per_byte"] - ref["quality.bits_per_byte"]
        n = _windows(ref)
        on = f" on {n} held-out windows" if n is not None and n == _windows(r) else ""
        out.append(f"{scheme}: {dbpb:+.4f} bits/byte against fp32{on}; loss {d['verdict']}")
    return out


def _windows(row) -> int | None:
    """How many held-out windows a row's quality was scored on, where its record says."""
    n = row.get("quality.windows")
    return None if n is None or n != n else int(n)  # n != n: NaN, a frame without the count


def _others(df: pd.DataFrame, reference: str):
    """Each scheme of ``df`` but ``reference``, in order: (scheme, its successful row or None,
    the message of its first row)."""
    for scheme in [s for s in dict.fromkeys(df["knobs.quantization"]) if s != reference]:
        r = _row(df, scheme)
        yield scheme, r, (df[df["knobs.quantization"] == scheme]["message"].iloc[0]
                          if r is None else None)


def _spread(row) -> tuple[float, float]:
    return row["latency_ms.p25"], row["latency_ms.p75"]


def speed_verdict(df: pd.DataFrame, label: str, reference: str = "none") -> str:
    """A decode sweep at batch 1 over schemes, in words with its numbers: how close ``reference``
    comes to its bandwidth bound, and each scheme's measured speed-up beside the speed-up its
    bound allows — faster or slower only where the p25–p75 latency ranges do not overlap."""
    ref = _row(df, reference)
    if ref is None:
        return f"{label}: no successful {reference!r} row to compare against."
    bound = "theory.roofline.tokens_per_s_upper_bound"
    tps0, b0 = ref["throughput.tokens_per_s"], ref.get(bound)
    parts = []
    if b0 is not None and b0 == b0 and b0 > 0:
        frac = tps0 / b0
        where = ("above its DRAM bound: the weights are served from the cache" if frac > 1 else
                 "near its bound: the step is memory-bound" if frac >= 0.5 else
                 "well below its bound: something other than reading weights limits the step")
        parts.append(f"{label}: fp32 decodes {tps0:,.0f} tokens/s, {frac:.0%} of its bandwidth "
                     f"bound ({b0:,.0f}), {where}.")
    else:
        parts.append(f"{label}: fp32 decodes {tps0:,.0f} tokens/s.")
    lo0, hi0 = _spread(ref)
    for scheme, r, msg in _others(df, reference):
        if r is None:
            parts.append(f"{scheme} did not run ({msg}).")
            continue
        x = r["throughput.tokens_per_s"] / tps0
        lo, hi = _spread(r)
        how = ("faster" if hi < lo0 else "slower" if lo > hi0
               else "no measurable difference (the p25–p75 ranges overlap)")
        allowed = r.get(bound)
        beside = (f" (its bound allows {allowed / b0:.2f}×)"
                  if allowed is not None and allowed == allowed and b0 else "")
        parts.append(f"{scheme} runs at {x:.2f}× fp32's speed{beside}: {how}.")
    return " ".join(parts)




# ----------------------------------------------------------------------------- weights vs cache

def last_level_cache_bytes(device: str = "cpu", sysfs: str = "/sys/devices/system/cpu/cpu0/cache"):
    """The largest cache this machine reports for ``device``, in bytes, or None when unknown.

    On CUDA: the GPU's L2 (``torch.cuda.get_device_properties``). On a CPU: the largest
    ``index*/size`` Linux lists under ``sysfs`` for CPU 0 (its last-level cache, shared or not);
    None on a system without that folder. Nothing is assumed when nothing is reported."""
    if str(device).startswith("cuda"):
        import torch
        return int(torch.cuda.get_device_properties(0).L2_cache_size) or None
    from pathlib import Path
    units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
    sizes = []
    for f in Path(sysfs).glob("index*/size"):
        text = f.read_text().strip()
        try:
            sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
        except (ValueError, IndexError):
            continue  # an unreadable entry says nothing about the size
    return max(sizes) if sizes else None


def weight_bytes(preset: str, schemes=("none", "int4-weight"), group_size: int = 64) -> dict:
    """Per scheme, the bytes ``preset``'s model reads per decoded token at batch 1 (every weight,
    scale and bias once: :func:`weight_bytes_per_token`), with the preset's own weights."""
    return {mode: weight_bytes_per_token(apply_(load_model(preset),
                                                QuantizationConfig(mode, group_size)))
            for mode in schemes}


def cache_fit_verdict(sizes: dict, cache_bytes: int | None) -> str:
    """One sentence per model: its weight bytes per scheme against this machine's last-level
    cache (``sizes``: label -> {scheme: bytes}). With the cache size unknown it says so and
    compares nothing."""
    parts = []
    for label, per_scheme in sizes.items():
        each = ", ".join(f"{s} {b / 1e6:.1f} MB" for s, b in per_scheme.items())
        if cache_bytes is None:
            parts.append(f"`{label}` reads {each} per token")
            continue
        fits = [f"{s} {'fits' if b <= cache_bytes else f'is {b / cache_bytes:.1f}× it'}"
                for s, b in per_scheme.items()]
        parts.append(f"`{label}` reads {each} per token: " + ", ".join(fits))
    cache = ("this machine did not report its last-level cache size, so whether the weights fit "
             "in it is unknown here" if cache_bytes is None else
             f"this machine's last-level cache holds {cache_bytes / 1e6:.1f} MB")
    return cache[0].upper() + cache[1:] + ". " + "; ".join(parts) + "."


__all__ = ["quantization_table", "sqnr_verdict", "quality_verdicts", "speed_verdict",
           "last_level_cache_bytes", "weight_bytes", "cache_fit_verdict"]
