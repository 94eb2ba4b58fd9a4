"""The ``efflab`` command: train, measure, sweep, calibrate, results, report, presets, scaling.

Knob flags (``--batch-size``, ``--seq-len`` ...) are generated from ``efflab.Knobs``, so a new
technique's field appears here by itself. Bad input ends with one clear line and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from efflab.core.config import (
    PRESETS,
    ConfigError,
    Knobs,
    check_int,
    knob_fields,
    parse_knob,
    parse_vary,
)
from efflab.course.cli import add_commands as add_course_commands

# Each command imports what it runs when it runs: building the parser needs only the config,
# so ``efflab --help`` and a mistyped flag answer at once instead of after the notebook stack
# (nbformat, altair, pandas) has loaded.


def _add_knob_flags(p: argparse.ArgumentParser) -> None:
    for f in knob_fields():
        flag = "--" + f["name"].replace("_", "-")
        shown = f"one of {', '.join(map(str, f['choices']))}; " if f["choices"] else ""
        default = f["default"] if f["default"] is not None else "auto"
        p.add_argument(flag, dest=f["name"], default=None, metavar="VALUE",
                       help=f"{shown}default {default}")


def _knobs_from(args) -> Knobs:
    """Knobs from the flags given; each value read by ``config.parse_knob`` (ConfigError on
    bad text, which ``main`` turns into one line and exit status 2)."""
    given = {f["name"]: parse_knob(f["name"], getattr(args, f["name"])) for f in knob_fields()
             if getattr(args, f["name"], None) is not None}
    return Knobs(**given)


def _parse_vary(items: list[str]) -> dict[str, list]:
    """``["batch_size=1,2,4"]`` -> ``{"batch_size": [1, 2, 4]}``."""
    return dict(parse_vary(item) for item in items)


def _quality_windows(args) -> int | None:
    """``--quality-windows``: held-out windows quality is scored on (None: the default)."""
    return check_int("--quality-windows", args.quality_windows, 2, optional=True)


def _budget(args) -> int | None:
    return None if args.budget_mib is None else int(args.budget_mib * 2**20)


def _summary(rec: dict) -> str:
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('message')}"
    lat, mem, fl = rec["latency_ms"], rec["memory"], rec["flops"]
    peak = f"{mem['peak_bytes'] / 2**20:.1f} MiB" if mem.get("peak_bytes") else "-"
    return (f"{rec['preset']} {rec['workload']} B={rec['knobs']['batch_size']}: "
            f"{lat['median']:.2f} ms/{lat['unit']} (p25 {lat['p25']:.2f}, p75 {lat['p75']:.2f}, "
            f"n={lat['n']}), {rec['throughput']['tokens_per_s']:,.0f} tok/s, peak {peak}, "
            f"MFU {fl['mfu']:.1%}, bpb {rec['quality']['bits_per_byte']}")


def cmd_train(args) -> int:
    from efflab.measurement.training import train

    if args.steps is None and args.minutes is None:
        args.steps = 1000
    rec = train(args.preset, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                seq_len=args.seq_len, lr=args.lr, seed=args.seed, corpus=args.corpus,
                out=args.out, threads=args.threads)
    fin = rec["final"]
    print(f"wrote {rec['path']}: {rec['steps']} steps, {rec['tokens']:,} tokens, "
          f"{rec['seconds']:.0f} s, val loss {fin['val_loss']:.4f}, "
          f"{fin['bits_per_byte']:.4f} bits/byte")
    return 0


def cmd_measure(args) -> int:
    from efflab.core.store import Store
    from efflab.measurement import measure

    rec = measure(_knobs_from(args), preset=args.preset, corpus=args.corpus,
                  weights=args.weights, budget_bytes=_budget(args), target_s=args.target_s,
                  quality_windows=_quality_windows(args))
    if args.store:
        Store(args.store).append(rec)
    print(json.dumps(rec, indent=1, default=str) if args.json else _summary(rec))
    return 0 if rec["status"] in ("ok", "refused", "oom") else 1


def cmd_sweep(args) -> int:
    from efflab.measurement.sweeping import sweep

    vary = _parse_vary(args.vary)
    df = sweep(_knobs_from(args), vary, preset=args.preset, store=args.store,
               budget_bytes=_budget(args), weights=args.weights, corpus=args.corpus,
               target_s=args.target_s, resume=not args.again, name=args.name,
               quality_windows=_quality_windows(args), on_record=lambda r: print(_summary(r), flush=True))
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


def cmd_calibrate(args) -> int:
    from efflab.measurement.hardware import calibrate

    cal = calibrate(force=args.force)
    if args.json:
        print(json.dumps(cal, indent=1))
    else:
        for dt, v in cal["matmul"].items():
            print(f"{dt:>9} matmul peak: {v['flops_per_s'] / 1e9:8.1f} GFLOP/s (sizes {v['sizes']})")
        print(f"copy bandwidth:    {cal['bandwidth_bytes_per_s'] / 1e9:8.1f} GB/s")
        print(f"machine {cal['fingerprint']}, {cal['threads']} threads, {cal['env']['cpu']}")
    return 0


def cmd_results(args) -> int:
    from efflab.core.store import results

    df = results(args.store, sweep=args.name)
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"wrote {len(df)} records to {args.csv}")
    elif df.empty:
        print("no records yet")
    else:
        cols = [c for c in ("preset", "workload", "knobs.batch_size", "status",
                            "latency_ms.median", "throughput.tokens_per_s", "memory.peak_bytes",
                            "flops.mfu") if c in df]
        print(df[cols].to_string(index=False))
    return 0


def cmd_report(args) -> int:
    from efflab.course.report import build_report

    index = build_report(args.out, smoke=args.smoke)
    print(f"wrote {index}")
    return 0


def cmd_presets(args) -> int:
    import torch

    for name, cfg in PRESETS.items():
        where = "GPU" if cfg.needs_gpu else "CPU or GPU"
        usable = "" if (not cfg.needs_gpu or torch.cuda.is_available()) else "  (refused here: no GPU)"
        print(f"{name:>10}: {cfg.n_params() / 1e6:6.2f}M params, {cfg.n_layer} layers, "
              f"width {cfg.n_embd}, {cfg.n_head} heads, context {cfg.block_size}; {where}{usable}")
    return 0


def _budgets(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError("--budgets", text, "comma-separated FLOP counts, e.g. 1e10,3e10,1e11") from None


def cmd_scaling(args) -> int:
    from efflab.studies.scaling import ScalingSpec, export_runs, isoflop_sweep, scaling_fit

    spec = ScalingSpec(budgets=_budgets(args.budgets)) if args.budgets else ScalingSpec()
    plan = spec.plan()
    print(f"IsoFLOP sweep: {len(spec.budgets)} budgets, {len(plan)} runs, "
          f"{sum(r['flops'] for r in plan):.2e} training FLOPs in all")

    def line(r):
        tag = "reused" if r.get("reused") else f"{r['seconds']:.0f} s"
        print(f"C={r['budget']:.0e} {r['name']:>8} N={r['n_params']:>8,} {r['steps']:>6} steps "
              f"loss {r['val_loss']:.4f} ± {1.96 * r['val_se']:.4f} ({tag})", flush=True)

    df = isoflop_sweep(spec, store=args.store, resume=not args.again, threads=args.threads,
                       device=args.device or "cpu", on_point=line)
    if args.export:
        print(f"wrote {export_runs(df, args.export, note=args.note or '')}")
    if df["budget"].nunique() >= 2:
        fit = scaling_fit(df)
        for _, r in fit["budgets"].iterrows():
            where = "inside" if r["inside"] else "OUTSIDE the sizes tried"
            print(f"C={r['budget']:.0e}: N_opt {r['n_opt']:,.0f} [{r['n_opt_lo']:,.0f}, "
                  f"{r['n_opt_hi']:,.0f}], D_opt {r['d_opt']:,.0f}, vertex {where}")
        print(f"N_opt ∝ C^{fit['a']:.3f} (95% [{fit['a_ci'][0]:.3f}, {fit['a_ci'][1]:.3f}]), "
              f"D_opt ∝ C^{fit['b']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="efflab", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def with_common(p, knobs=True):
        p.add_argument("--preset", default="cpu-small", choices=list(PRESETS))
        p.add_argument("--corpus", default=None, help="text file or folder (default: Python stdlib)")
        if knobs:
            _add_knob_flags(p)
            p.add_argument("--weights", default="auto",
                           help="'auto' (shipped weights if any), 'random', or a path")
            p.add_argument("--budget-mib", type=float, default=None,
                           help="refuse configurations whose predicted peak exceeds this")
            p.add_argument("--target-s", type=float, default=1.0, help="seconds of timing samples")
            p.add_argument("--quality-windows", type=int, default=None,
                           help="held-out windows the quality is scored on (default: the "
                                "preset's usual count; fewer is faster, with a wider interval)")
            p.add_argument("--store", default=None, help="results database (default results/)")
        return p

    p = sub.add_parser("train", help="train a preset and write a weights file + record")
    with_common(p, knobs=False)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None, help="train as many steps as fit")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="data/weights")
    p.set_defaults(func=cmd_train)

    p = with_common(sub.add_parser("measure", help="measure one configuration"))
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_measure)

    p = with_common(sub.add_parser("sweep", help="measure a grid of configurations"))
    p.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2",
                   help="a knob and its values, e.g. batch_size=1,2,4,8 (repeatable)")
    p.add_argument("--name", default=None, help="label the sweep's records")
    p.add_argument("--again", action="store_true", help="measure even what the store holds")
    p.add_argument("--csv", default=None, help="also write the sweep's table here")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("calibrate", help="measure this machine's peak FLOP/s and bandwidth")
    p.add_argument("--force", action="store_true", help="measure again even if cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("results", help="show or export stored records")
    p.add_argument("--store", default=None)
    p.add_argument("--name", default=None, help="only this sweep's records")
    p.add_argument("--csv", default=None)
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("report", help="run every notebook headless into an HTML report")
    p.add_argument("--out", default="reports")
    p.add_argument("--smoke", action="store_true", help="SMOKE=True: the quick version")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("presets", help="list the model presets and where they run")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("scaling", help="run (or resume) the IsoFLOP scaling-law sweep")
    p.add_argument("--budgets", default=None, help="FLOP budgets, e.g. 1e10,3e10,1e11,3e11 "
                   "(default: the shipped sweep's)")
    p.add_argument("--store", default=None, help="results database (default results/scaling.sqlite)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--again", action="store_true", help="train even what the store holds")
    p.add_argument("--export", default=None, help="also write the runs as JSON here "
                   "(data/scaling/isoflop.json is what the notebook draws)")
    p.add_argument("--note", default=None, help="a note stored with the exported runs")
    p.set_defaults(func=cmd_scaling)

    add_course_commands(sub)  # assign, submit, grade, class-results
    return ap


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors ``main`` prints as one line (bad input or a refusal, not a bug); imported
    only once something has been raised."""
    from efflab.core.data import CorpusError
    from efflab.core.weights import WeightsError
    from efflab.measurement.hardware import RefusedError

    return ConfigError, CorpusError, WeightsError, RefusedError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"efflab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efflab {args.command}: interrupted; completed records are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
