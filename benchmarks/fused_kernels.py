"""Our fused Triton kernels (LayerNorm fwd+bwd, vocabulary cross-entropy fwd+bwd) against eager
PyTorch and torch.compile of the eager reference; JSON with the machine fingerprint.

Declared as data: one x-axis (rows), one line per provider. On a CUDA GPU every provider is
timed (median with p25/p75 and n, synchronised per sample). Without one, the Triton kernels run
in the interpreter: they are checked for correctness only, never timed, and the JSON says so.

    python benchmarks/fused_kernels.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from efflab.kernels import cross_entropy as ce
from efflab.kernels import layernorm as ln
from efflab.measurement.hardware import environment, fingerprint, load_average
from efflab.measurement.timing import summarize, time_steps

RESULTS = Path(__file__).resolve().parent / "results"
BENCH = {
    "layernorm": {"x_name": "rows", "x_vals": (4096, 16384, 65536), "n": 768,
                  "providers": ("eager", "compiled", "triton")},
    "cross_entropy": {"x_name": "rows", "x_vals": (1024, 4096, 16384), "vocab": 50304,
                      "providers": ("eager", "compiled", "triton")},
}


def _fns(kind: str):
    if kind == "layernorm":
        eager = lambda x, w, b: F.layer_norm(x, (x.size(-1),), w, b)  # noqa: E731
        return {"eager": eager, "compiled": torch.compile(eager), "triton": ln.fused_layernorm}
    eager = lambda x, t: F.cross_entropy(x.float(), t)  # noqa: E731
    return {"eager": eager, "compiled": torch.compile(eager), "triton": ce.fused_cross_entropy}


def _inputs(kind: str, rows: int, device: str):
    g = torch.Generator().manual_seed(0)
    if kind == "layernorm":
        n = BENCH[kind]["n"]
        x = torch.randn(rows, n, generator=g).to(device).requires_grad_()
        w = torch.randn(n, generator=g).to(device).requires_grad_()
        b = torch.randn(n, generator=g).to(device).requires_grad_()
        return (x, w, b), x
    v = BENCH[kind]["vocab"]
    x = (torch.randn(rows, v, generator=g) * 2).to(device).requires_grad_()
    t = torch.randint(0, v, (rows,), generator=g).to(device)
    return (x, t), x


def run(quick: bool) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    for kind, spec in BENCH.items():
        fns = _fns(kind)
        xs = spec["x_vals"][:1] if quick or device == "cpu" else spec["x_vals"]
        rows = []
        for rows_n in xs:
            if device == "cpu":  # the interpreter: a small correctness check, never a timing
                rows_n = min(rows_n, 64)
            args, leaf = _inputs(kind, rows_n, device)
            ref = fns["eager"](*args)
            (ref_g,) = torch.autograd.grad(ref.sum(), leaf)
            for name in spec["providers"]:
                row = {"kernel": kind, spec["x_name"]: rows_n, "provider": name, "device": device,
                       "timed": False, "ms": None, "max_abs_err": None, "note": ""}
                if name == "compiled" and device == "cpu":
                    row["note"] = "not run on CPU here (cold compile; see benchmarks/fusion.py)"
                    rows.append(row)
                    continue
                fn = fns[name]
                y = fn(*args)
                (gx,) = torch.autograd.grad(y.sum(), leaf)
                row["max_abs_err"] = max(float((y - ref).detach().abs().max()),
                                         float((gx - ref_g).abs().max()))
                if name == "triton" and ln.INTERPRETED:
                    row["note"] = "correctness only (interpreted): not timed"
                else:
                    def step(fn=fn, args=args, leaf=leaf):
                        torch.autograd.grad(fn(*args).sum(), leaf)
                    row["ms"] = summarize(time_steps(step, device, warmup=3, target_s=0.5))
                    row["timed"] = True
                rows.append(row)
        out[kind] = rows
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    payload = {"benchmark": "fused_kernels", "fingerprint": fingerprint(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "env": environment(),
               "loadavg": load_average(), "interpreted": ln.INTERPRETED,
               "note": ("Triton interpreted (no CUDA): correctness only, nothing timed"
                        if ln.INTERPRETED else "compiled Triton on CUDA, fwd+bwd timed"),
               "results": run(args.quick)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "fused_kernels.json"
    path.write_text(json.dumps(payload, indent=1, default=lambda v: None if isinstance(v, float)
                               and math.isnan(v) else str(v)))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
