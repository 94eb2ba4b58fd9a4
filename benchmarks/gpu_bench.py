"""GPU benchmarks of issue 20, one part per call so that ``scripts/gpu_check.py`` can run each
under its own timeout and go on past a failing one.

    python benchmarks/gpu_bench.py flash --out part.json
    python benchmarks/gpu_bench.py precision|quant_decode|compile|oom --out part.json

Parts and their targets (a target holds only where it was measured on a GPU):

- ``flash``: efflab's Triton FlashAttention vs ``F.scaled_dot_product_attention``, causal,
  bf16, head dim 64, T = 1k..16k (B·T held at 16k tokens, 16 heads), forward and
  forward+backward; target >= 0.8x SDPA's throughput at T >= 4k (Triton tutorial 06's anchor).
- ``precision``: bf16 autocast vs fp32 training step on the GPU preset (``"auto"``): >= 2x,
  and MFU against the measured bf16 matmul peak >= 0.35.
- ``quant_decode``: int8 / int4 weight-only decode at batch 1 vs bf16 on the largest preset
  (gpu-gpt2): int4 >= 1.5x.
- ``compile``: ``torch.compile`` vs eager training step on the GPU preset: >= 1.2x.
- ``oom``: a training batch far beyond the GPU's memory, recorded as ``"oom"`` by
  :func:`efflab.measure`, then the next configuration measured normally.

Every part writes a JSON dict ``{"part", "rows", "targets", "env"}``; a configuration that
fails is a row with its status and message, never a crash of the part. Without CUDA a part
writes ``{"status": "skipped"}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

FLASH_T = (1024, 2048, 4096, 8192, 16384)
FLASH_TOKENS = 16384  # B·T per shape: the same work per key position at every T
FLASH_HEADS, FLASH_HEAD_DIM = 16, 64


def _cuda_ms(fn, warmup: int = 3, reps: int = 20, budget_s: float = 2.0) -> float:
    """Median milliseconds of ``fn`` on the GPU (CUDA events, L2 not flushed)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times, t_end = [], time.perf_counter() + budget_s
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        if time.perf_counter() > t_end:
            break
    times.sort()
    return times[len(times) // 2]


def attention_flops(B: int, H: int, T: int, D: int, mode: str) -> float:
    """FLOPs of causal attention as Triton's tutorial 06 counts them: 2 matmuls of 2·T·T·D,
    halved by the causal mask; backward 2.5x forward."""
    fwd = 4.0 * B * H * T * T * D * 0.5
    return fwd * (3.5 if mode == "fwd_bwd" else 1.0)


def bench_flash() -> dict:
    from efflab.kernels import flash_attention as fa
    rows = []
    for mode in ("fwd", "fwd_bwd"):
        for T in FLASH_T:
            B = max(1, FLASH_TOKENS // T)
            for name in ("sdpa", "triton"):
                row = {"mode": mode, "seq_len": T, "batch_size": B, "provider": name}
                try:
                    fn_attn = fa.provider(name)
                    q, k, v = (torch.randn(B, FLASH_HEADS, T, FLASH_HEAD_DIM, device="cuda",
                                           dtype=torch.bfloat16, requires_grad=mode == "fwd_bwd")
                               for _ in range(3))
                    if mode == "fwd":
                        def step(q=q, k=k, v=v, f=fn_attn):
                            with torch.no_grad():
                                f(q, k, v)
                    else:
                        do = torch.randn_like(q)

                        def step(q=q, k=k, v=v, f=fn_attn, do=do):
                            f(q, k, v).backward(do)
                    ms = _cuda_ms(step)
                    flops = attention_flops(B, FLASH_HEADS, T, FLASH_HEAD_DIM, mode)
                    row.update(status="ok", ms=ms, tflops_per_s=flops / (ms / 1e3) / 1e12)
                except Exception as e:  # recorded; the next shape still runs
                    row.update(status="oom" if isinstance(e, torch.OutOfMemoryError) else "error",
                               message=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
                finally:
                    torch.cuda.empty_cache()
                rows.append(row)
                _save_partial("flash", {"rows": rows})
    ratios = {}
    for mode in ("fwd", "fwd_bwd"):
        for T in FLASH_T:
            by = {r["provider"]: r for r in rows if r["mode"] == mode and r["seq_len"] == T
                  and r["status"] == "ok"}
            if len(by) == 2:
                ratios[f"{mode}@{T}"] = by["triton"]["tflops_per_s"] / by["sdpa"]["tflops_per_s"]
    long = [v for key, v in ratios.items() if int(key.split("@")[1]) >= 4096]
    return {"rows": rows, "ratios_triton_over_sdpa": ratios,
            "targets": [_target("triton >= 0.8x SDPA throughput at T >= 4k (worst shape)",
                                min(long) if long else None, 0.8)]}


_PARTIAL: Path | None = None  # where a part's rows so far are kept, should it be killed


def _save_partial(part: str, out: dict) -> None:
    if _PARTIAL is not None:
        _PARTIAL.write_text(json.dumps({"part": part, "status": "partial", **out}, default=str))


def _target(name: str, value, threshold: float) -> dict:
    ok = None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else bool(value >= threshold)
    return {"target": name, "value": value, "threshold": threshold, "met": ok}


def _row(rec: dict, **extra) -> dict:
    """The few numbers of a measure() record the report shows."""
    row = {"status": rec["status"], **extra}
    if rec["status"] == "ok":
        fl = rec.get("flops", {})
        row.update(latency_ms=rec["latency_ms"]["median"], tokens_per_s=rec.get("throughput", {}).get("tokens_per_s"),
                   mfu=fl.get("mfu"), peak_per_s=fl.get("peak_per_s"))
    else:
        row["message"] = str(rec.get("message", ""))[:400]
    return row


def _measure(preset: str, cal: dict, **knobs) -> dict:
    import efflab
    return efflab.measure(efflab.Knobs(**knobs), preset=preset, weights="random", device="cuda",
                          memory=False, quality=False, target_s=1.0, calibration=cal)


def _speedup(rows: list[dict], fast: str, slow: str, key: str = "variant") -> float | None:
    by = {r[key]: r for r in rows if r["status"] == "ok"}
    if fast in by and slow in by:
        return by[slow]["latency_ms"] / by[fast]["latency_ms"]
    return None


def bench_precision(cal: dict) -> dict:
    import efflab
    preset = efflab.resolve_preset("auto")
    rows = [_row(_measure(preset, cal, batch_size=8, precision=p), variant=p, preset=preset)
            for p in ("fp32", "bf16")]
    bf16 = next((r for r in rows if r["variant"] == "bf16" and r["status"] == "ok"), None)
    mfu = bf16["mfu"] if bf16 else None
    return {"rows": rows, "bf16_peak_per_s": cal["matmul"]["bfloat16"]["flops_per_s"],
            "targets": [_target("bf16 autocast train step >= 2x fp32",
                                _speedup(rows, "bf16", "fp32"), 2.0),
                        _target("bf16 MFU against the measured bf16 peak >= 0.35", mfu, 0.35)]}


def bench_quant_decode(cal: dict) -> dict:
    preset = "gpu-gpt2"
    variants = {"bf16": {"precision": "bf16-pure"},
                "int8": {"quantization": "int8-weight"},
                "int4": {"quantization": "int4-weight", "group_size": 64}}
    rows = [_row(_measure(preset, cal, batch_size=1, workload="decode", seq_len=64,
                          gen_tokens=32, **kn), variant=v, preset=preset)
            for v, kn in variants.items()]
    return {"rows": rows,
            "targets": [_target("int4 weight-only decode at batch 1 >= 1.5x bf16",
                                _speedup(rows, "int4", "bf16"), 1.5),
                        _target("int8 weight-only decode at batch 1 vs bf16 (no target)",
                                _speedup(rows, "int8", "bf16"), 0.0)]}


def bench_compile(cal: dict) -> dict:
    import efflab
    preset = efflab.resolve_preset("auto")
    rows = [_row(_measure(preset, cal, batch_size=8, precision="bf16", compile=c),
                 variant=c, preset=preset) for c in ("none", "default")]
    return {"rows": rows, "targets": [_target("compile train step >= 1.2x eager",
                                              _speedup(rows, "default", "none"), 1.2)]}


def bench_oom(cal: dict) -> dict:
    """A batch no GPU of this generation holds (gpu-gpt2, T = 1024: hundreds of GiB of
    activations), then a small one: the first must come back "oom", the second "ok"."""
    preset = "gpu-gpt2"
    rows = [_row(_measure(preset, cal, batch_size=b, seq_len=1024), batch_size=b, preset=preset)
            for b in (4096, 8)]
    ok = rows[0]["status"] == "oom" and rows[1]["status"] == "ok"
    return {"rows": rows, "targets": [_target("huge batch recorded as oom, next measured ok",
                                              1.0 if ok else 0.0, 1.0)]}


PARTS = {"flash": bench_flash, "precision": bench_precision, "quant_decode": bench_quant_decode,
         "compile": bench_compile, "oom": bench_oom}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        args.out.write_text(json.dumps({"part": args.part, "status": "skipped",
                                        "message": "needs CUDA"}))
        return 0
    from efflab.measurement.hardware import calibrate, environment
    global _PARTIAL
    _PARTIAL = args.out
    t0 = time.perf_counter()
    fn = PARTS[args.part]
    out = fn() if args.part == "flash" else fn(calibrate("cuda"))
    out.update(part=args.part, status="ok", seconds=time.perf_counter() - t0,
               env=environment("cuda"))
    args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
