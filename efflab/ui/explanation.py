"""A record explained in words: every metric with its formula and this run's numbers.

``explain(record)`` returns Markdown; notebooks show it with ``IPython.display.Markdown``.
"""

from __future__ import annotations

MIB = 2**20


def _mib(b) -> str:
    return "—" if b is None else f"{b / MIB:,.2f} MiB"


def explain(rec: dict) -> str:
    """Markdown that walks through one measurement record, formula by formula."""
    head = (f"**{rec['preset']} · {rec['workload']} · batch {rec['knobs']['batch_size']}** "
            f"— status `{rec['status']}`")
    if rec["status"] != "ok":
        return f"{head}\n\n{rec.get('message')}"
    lat, tp, mem, fl, q, en = (rec["latency_ms"], rec["throughput"], rec["memory"],
                               rec["flops"], rec["quality"], rec["energy"])
    roof = rec["theory"]["roofline"]
    unit = lat["unit"]
    lines = [
        head, "",
        "| metric | formula | this run |", "|---|---|---|",
        f"| latency | median of n timed {unit}s (p25–p75 spread) | {lat['median']:.3f} ms "
        f"({lat['p25']:.3f}–{lat['p75']:.3f}, n={lat['n']}) |",
        f"| throughput | tokens per {unit} / median latency = {tp['tokens_per_step']} / "
        f"{lat['median'] / 1e3:.5f} s | {tp['tokens_per_s']:,.0f} tokens/s |",
        f"| FLOPs per {unit} | counted matmuls + attention ({fl['attention_source']}) | "
        f"{fl['per_step'] / 1e9:,.3f} GFLOP (6·N·tokens estimate: {fl['estimate_6n'] / 1e9:,.3f}) |",
        f"| achieved FLOP/s | FLOPs / median latency | {fl['achieved_per_s'] / 1e9:,.1f} GFLOP/s |",
        f"| MFU | achieved / peak measured here ({fl['peak_per_s'] / 1e9:,.1f} GFLOP/s) | "
        f"{fl['mfu']:.1%} |",
        f"| roofline bound | max(FLOPs/peak, bytes/bandwidth) → {roof['bound']}-bound | "
        f"≥ {roof['step_ms_lower_bound']:.3f} ms, ≤ {roof['tokens_per_s_upper_bound']:,.0f} tokens/s |",
        f"| arithmetic intensity | FLOPs / bytes moved (machine balance "
        f"{roof['machine_balance']:.1f}) | {roof['arithmetic_intensity']:.1f} FLOP/byte |",
        f"| peak memory | live bytes at the fullest moment of one {unit} | {_mib(mem['peak_bytes'])} "
        f"(formula: {_mib(rec['theory']['memory']['peak_bytes'])}) |",
    ]
    for cat, b in (mem.get("by_category") or {}).items():
        if b:
            lines.append(f"| · {cat} | tracked at the peak | {_mib(b)} |")
    if q.get("bits_per_byte") is not None:
        lines.append(f"| quality | held-out loss / ln 2 = bits per byte | {q['val_loss']:.4f} nats → "
                     f"{q['bits_per_byte']:.4f} bits/byte |")
    energy = (f"{en['joules']:.3f} J ({en['source']})" if en["joules"] is not None
              else "unavailable: no readable energy counter (NVML or RAPL) on this machine")
    lines.append(f"| energy | a hardware counter read around the timed {unit}s | {energy} |")
    return "\n".join(lines)
