"""What a distributed record is, and its table forms (numpy + pandas only: no torch).

Every rank of a launch writes one record per job (``schema: efflab.distributed/1``):
``kind`` (allreduce | ddp | sharding), ``status``, ``message``, ``knobs`` (the job's settings),
``rank``, ``world_size``, ``backend``, ``device``, ``threads_per_rank``, ``result``,
``seconds``, ``loadavg`` (the host's load when it finished: this lab runs on shared machines),
``created`` and ``env``. A single-process reference run makes the same record with
``world_size`` 1. The functions below turn lists of them into the tidy tables the charts, the
checks and the benchmark read.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from efflab.measurement.hardware import load_average
from efflab.systems.distributed.comm import AlphaBeta, fit_with_held_out
from efflab.systems.distributed.ddp import comm_time
from efflab.systems.distributed.zero import STATE_CATEGORIES

RECORD_SCHEMA = "efflab.distributed/1"


def new_record(kind: str, *, rank: int, world_size: int, backend: str, device: str,
               threads: int, preset: str | None, env: dict, job: int = 0) -> dict:
    """The fields every distributed record starts with."""
    return {"schema": RECORD_SCHEMA, "kind": kind, "job": job, "rank": rank,
            "world_size": world_size, "backend": backend, "device": device,
            "threads_per_rank": threads, "preset": preset, "env": env}


def finish_record(rec: dict, seconds: float) -> dict:
    """Stamp a record with its wall seconds, the host's load average and the time."""
    rec["seconds"] = seconds
    rec["loadavg"] = load_average()
    rec["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return rec


def _ok(records, kind: str) -> list[dict]:
    return [r for r in records if r.get("kind") == kind and r.get("status") == "ok"]


def _spread(samples_s) -> dict:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(a)), "p25_ms": float(np.percentile(a, 25)),
            "p75_ms": float(np.percentile(a, 75)), "n": int(a.size)}


def allreduce_frame(records) -> pd.DataFrame:
    """One row per (world size, message size): median, p25, p75 in ms and the count n.
    Rank 0's record only: every rank stored the same slowest-rank samples."""
    rows = []
    for r in _ok(records, "allreduce"):
        if r["rank"] != 0:
            continue
        for s in r["result"]["sizes"]:
            rows.append({"world_size": r["world_size"], "bytes": s["bytes"], **_spread(s["samples_s"]),
                         "run": r.get("run")})
    return pd.DataFrame(rows)


FIT_STATISTIC = "p25_ms"


def fit_frame(frame: pd.DataFrame, every: int = 3, stat: str = FIT_STATISTIC) -> dict:
    """The α–β fit of an ``allreduce_frame`` with held-out sizes (``comm.fit_with_held_out``),
    on the statistic ``stat`` of each size's samples: "p25_ms" (default) or "median_ms".

    Why the lower quartile by default: a sample's time is the *slowest* rank's, and on a shared
    machine a rank that the OS sets aside for a moment inflates it — by far more than the
    message costs. The lower quartile is the time when both ranks ran, which is what the α–β
    model describes; on a quiet machine it sits next to the median. The frame must hold one
    world size.
    """
    if stat not in ("p25_ms", "median_ms"):
        raise ValueError(f"stat={stat!r}: expected 'p25_ms' or 'median_ms'")
    sizes = frame["world_size"].unique()
    if len(sizes) != 1:
        raise ValueError(f"fit one world size at a time; the frame holds {sorted(sizes)}")
    out = fit_with_held_out(frame["bytes"].to_numpy(), frame[stat].to_numpy() / 1e3,
                            int(sizes[0]), every)
    out["statistic"] = stat
    return out


def fit_line(fit: AlphaBeta, lo: float, hi: float, points: int = 60) -> pd.DataFrame:
    """The fitted t(n) = α + n/β as a table (bytes, fit_ms) over [lo, hi], log-spaced."""
    n = np.geomspace(max(lo, 1.0), hi, points)
    return pd.DataFrame({"bytes": n, "fit_ms": fit.time(n) * 1e3})


def ddp_frame(records, fit: AlphaBeta | None = None) -> pd.DataFrame:
    """One row per data-parallel run (rank 0): world size, bucket cap, buckets, step and
    compute time (median, p25, p75 ms, n), tokens/s, and — given an α–β ``fit`` — the
    predicted communication and step time and how much of the communication was hidden."""
    rows = []
    for r in _ok(records, "ddp"):
        if r["rank"] != 0:
            continue
        res, k = r["result"], r["knobs"]
        step, comp = _spread(res["step_s"]), _spread(res["compute_s"])
        row = {"world_size": r["world_size"], "bucket_cap_mb": k["bucket_cap_mb"],
               "preset": r.get("preset"), "global_batch": k["global_batch"],
               "n_buckets": len(res["bucket_bytes"]), "bucket_bytes": list(res["bucket_bytes"]),
               "grad_bytes": res["grad_bytes"],
               "step_ms": step["median_ms"], "step_p25_ms": step["p25_ms"],
               "step_p75_ms": step["p75_ms"], "n": step["n"],
               "compute_ms": comp["median_ms"], "compute_p25_ms": comp["p25_ms"],
               "compute_p75_ms": comp["p75_ms"],
               "tokens_per_s": res["tokens_per_step"] / (step["median_ms"] / 1e3),
               "loadavg_1m": (r.get("loadavg") or [None])[0], "run": r.get("run")}
        stats = res.get("ddp_stats_ns") or {}  # DDP's own account of its sampled iterations
        if stats:
            row["ddp_backward_ms"] = stats.get("avg_backward_compute_time", 0) / 1e6 or None
            row["ddp_comm_ms"] = stats.get("avg_backward_comm_time", 0) / 1e6 or None
            row["ddp_overlap_ms"] = stats.get("avg_backward_compute_comm_overlap_time", 0) / 1e6 or None
        if fit is not None and r["world_size"] > 1:
            c = comm_time(res["bucket_bytes"], fit, r["world_size"]) * 1e3
            row["comm_pred_ms"] = c
            row["pred_ms"] = comp["median_ms"] + c
            row["pred_error"] = (row["pred_ms"] - step["median_ms"]) / step["median_ms"]
            exposed = step["median_ms"] - comp["median_ms"]
            row["exposed_comm_ms"] = exposed
            row["hidden_fraction"] = float(np.clip(1 - exposed / c, 0, 1)) if c > 0 else None
        rows.append(row)
    return pd.DataFrame(rows)


def loss_frame(records) -> pd.DataFrame:
    """Long table of training losses: series ("1 process" / "N processes, bucket X MiB"),
    step, loss (the global-batch mean), and each rank's own shard loss apart."""
    rows = []
    for r in _ok(records, "ddp"):
        res, N = r["result"], r["world_size"]
        label = "1 process" if N == 1 else f"{N} processes, bucket {r['knobs']['bucket_cap_mb']} MiB"
        if r["rank"] == 0:
            for i, loss in enumerate(res["losses"]):
                rows.append({"series": label, "step": i + 1, "loss": loss, "rank": None})
        if N > 1:
            for i, loss in enumerate(res["local_losses"]):
                rows.append({"series": f"rank {r['rank']} shard ({label})", "step": i + 1,
                             "loss": loss, "rank": r["rank"]})
    return pd.DataFrame(rows)


def memory_frame(records) -> pd.DataFrame:
    """One row per (sharding, rank, category): measured bytes and the formula's bytes."""
    rows = []
    for r in _ok(records, "sharding"):
        for s in r["result"]["shardings"]:
            if s["status"] != "ok":
                continue
            for cat in STATE_CATEGORIES:
                rows.append({"sharding": s["sharding"], "rank": s["rank"],
                             "world_size": s["world_size"], "category": cat,
                             "measured_bytes": s["bytes"][cat], "formula_bytes": s["formula"][cat],
                             "n_params": s["n_params"]})
    return pd.DataFrame(rows)


def refusals(records) -> list[dict]:
    """Every sharding a backend refused, with its reason."""
    return [s for r in _ok(records, "sharding") for s in r["result"]["shardings"]
            if s["status"] == "refused"]


__all__ = ["RECORD_SCHEMA", "FIT_STATISTIC", "new_record", "finish_record", "allreduce_frame", "fit_frame",
           "fit_line", "ddp_frame", "loss_frame", "memory_frame", "refusals"]
