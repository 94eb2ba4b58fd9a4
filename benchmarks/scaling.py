"""The IsoFLOP sweep's targets: each budget's parabola vertex inside the sizes tried, and the
fitted exponent a (N_opt ∝ C^a) with its interval.

    nice -n 19 python benchmarks/scaling.py                # resume the sweep, fit, write JSON
    nice -n 19 python benchmarks/scaling.py --export       # also refresh data/scaling/isoflop.json

Runs (or resumes, from ``results/scaling.sqlite``) the default :class:`ScalingSpec` sweep, fits
it, and writes ``benchmarks/results/scaling.json`` with the machine fingerprint and load. Losses
do not depend on the machine's load; the CPU seconds do, and the host was shared when this ran.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from efflab.measurement.hardware import environment, fingerprint, load_average
from efflab.studies.scaling import (
    PUBLISHED,
    SHIPPED,
    ScalingSpec,
    export_runs,
    isoflop_sweep,
    scaling_fit,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default=None, help="comma-separated FLOP budgets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", default="results/scaling.sqlite")
    ap.add_argument("--export", action="store_true", help=f"write {SHIPPED}")
    args = ap.parse_args()
    spec = (ScalingSpec(budgets=tuple(float(b) for b in args.budgets.split(",")))
            if args.budgets else ScalingSpec())
    t0 = time.perf_counter()
    load_before = load_average()
    df = isoflop_sweep(spec, store=args.store, threads=args.threads)
    fit = scaling_fit(df, n_boot=1000)
    cpu_s = float(df["cpu_seconds"].sum())
    note = (f"efflab scaling, default ScalingSpec (budgets {', '.join(f'{b:.0e}' for b in spec.budgets)}), "
            f"{len(df)} runs, {cpu_s:.0f} CPU-seconds in all (1 thread each, nice 19, on a 2-core "
            f"host shared by ~8 engineers, load average {load_before[0]:.1f})")
    if args.export:
        print("wrote", export_runs(df, SHIPPED, note=note))
    b = fit["budgets"]
    out = {
        "benchmark": "scaling",
        "targets": {"every budget's vertex inside the sizes tried": bool(fit["all_inside"]),
                    "budgets": int(len(b))},
        "a": fit["a"], "a_ci_bootstrap95": list(fit["a_ci"]), "a_ci_regression95": list(fit["a_ci_ols"]),
        "b": fit["b"], "b_ci_bootstrap95": list(fit["b_ci"]),
        "loss_law": {"prefactor": fit["loss_law"]["prefactor"], "exponent": fit["loss_law"]["exponent"]},
        "published": PUBLISHED,
        "per_budget": [{"budget": float(r.budget), "n_opt": float(r.n_opt),
                        "n_opt_ci95": [float(r.n_opt_lo), float(r.n_opt_hi)],
                        "d_opt": float(r.d_opt), "loss_opt": float(r.loss_opt),
                        "vertex_inside": bool(r.inside), "sizes": int(r.sizes),
                        "n_range": [int(r.n_min), int(r.n_max)]} for r in b.itertuples()],
        "runs": int(len(df)), "cpu_seconds": cpu_s,
        "wall_seconds_this_invocation": time.perf_counter() - t0,
        "interval_note": "bootstrap over held-out eval batches (paired across sizes); seed-to-seed "
                         "training noise is not included",
        "host": "shared: 2 cores, ~8 engineers; losses are load-independent, CPU seconds are not",
        "loadavg": load_average(), "fingerprint": fingerprint(args.threads),
        "env": environment("cpu"), "torch_threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "scaling.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("targets", "a", "a_ci_bootstrap95", "b")}, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
