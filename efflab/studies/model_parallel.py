"""Lesson 15's tables and verdicts: what each model-parallel record shows beside its formula.

Every function takes the records of :func:`efflab.systems.parallel.launching.launch_parallel`
(one per job per rank) and returns a tidy DataFrame or a sentence computed from it:

- :func:`equality_table` — each split model's loss curve and first-step gradients against the
  unsplit model trained beside it;
- :func:`tp_table` — parameters and bytes per TP rank, all-reduces and values per step, each
  beside its formula;
- :func:`bubble_table` / :func:`bubble_summary` / :func:`bubble_verdict` — each stage's measured
  idle share (median, quartiles over the timed steps) beside (p − 1)/(m + p − 1);
- :func:`activation_table` — saved activations per stage, GPipe against 1F1B;
- :func:`timeline_frame` — one step's busy spans per stage, with the ideal schedule beside it;
- :func:`ring_table` — score memory and ring traffic per rank beside their formulas;
- :func:`run_fit` / :func:`plan_verdict` — the α–β fit the TP job made in the launch, and a
  sentence on the layout :func:`~efflab.systems.parallel.planner.plan_parallel` picks, and why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from efflab.systems.parallel import pipeline, ring, tensor
from efflab.systems.parallel.worker import job_config


def _ok(records, kind: str) -> list[dict]:
    return [r for r in records if r.get("kind") == kind and r.get("status") == "ok"]


def equality_table(records) -> pd.DataFrame:
    """One row per job and rank that computes a loss: the largest |loss − the unsplit
    model's| over the steps and the largest first-step gradient difference."""
    rows = []
    for r in records:
        res = r.get("result") or {}
        if r.get("status") != "ok" or "grad_max_abs_diff" not in res:
            continue
        name = r["kind"] + (f" {r['knobs']['schedule']}" if r["kind"] == "pp" else "")
        gap = (max(abs(a - b) for a, b in zip(res["losses"], res["reference_losses"]))
               if res.get("losses") else np.nan)
        rows.append({"parallelism": name, "rank": r["rank"], "steps": r["knobs"]["steps"],
                     "max_loss_gap": gap, "max_grad_gap": res["grad_max_abs_diff"]})
    return pd.DataFrame(rows)


def tp_table(records) -> pd.DataFrame:
    """Per TP rank: parameters held and their fp32 bytes, all-reduces and values per step,
    each measured beside its formula, the bytes a ring sends for those values, and the time
    spent in the all-reduces beside the α–β prediction (lesson 14's fit, made in the same
    launch on messages around the TP size)."""
    rows = []
    for r in _ok(records, "tp"):
        k, res, t = r["knobs"], r["result"], r["world_size"]
        cfg = job_config(k)
        counts = tensor.tp_param_counts(cfg, t)
        calls = sum(res["comm"]["calls"].values())
        values = sum(res["comm"]["values"].values())
        rows.append({"rank": r["rank"], "tp": t, "params": res["params"],
                     "params_formula": counts["total"], "params_unsplit": counts["full"],
                     "param_bytes": 4 * res["params"],
                     "param_bytes_formula": tensor.tp_bytes_per_rank(cfg, t),
                     "allreduces": calls,
                     "allreduces_formula": tensor.tp_allreduces_per_step(cfg.n_layer)["total"],
                     "values": values,
                     "values_formula": tensor.tp_comm_values(cfg, k["batch"], k["seq"])["total"],
                     "ring_bytes_sent": tensor.tp_ring_bytes_sent(values, t),
                     **_tp_times(res, calls)})
    return pd.DataFrame(rows)


def _tp_times(res: dict, calls: int) -> dict:
    """A TP record's step and all-reduce milliseconds (median, quartiles over the steps after the
    first) beside what the α–β fit made in the same launch predicts for ``calls`` all-reduces."""
    steps = res["step_seconds"][1:] or res["step_seconds"]
    comm = np.asarray(res["allreduce_seconds"][1:] or res["allreduce_seconds"]) * 1e3
    fit = res["fit"]
    one = fit["alpha_s"] + res["allreduce_bytes"] / fit["bandwidth"]
    return {"step_ms": 1e3 * float(np.median(steps)), "allreduce_ms": float(np.median(comm)),
            "allreduce_p25_ms": float(np.percentile(comm, 25)),
            "allreduce_p75_ms": float(np.percentile(comm, 75)), "n": int(comm.size),
            "allreduce_pred_ms": 1e3 * calls * one, "alpha_us": 1e6 * fit["alpha_s"],
            "bandwidth_gbps": fit["bandwidth"] / 1e9}


def bubble_table(records) -> pd.DataFrame:
    """Per (schedule, m, stage): the idle share over the timed steps (the first step, a
    warm-up, left out) as median, p25, p75 and n, beside the formula, with the host's load and
    ``cpu_share``: the CPU seconds a stage had during its busy spans ÷ their wall seconds (1 on
    a quiet host; lower when the operating system gave its core to another process)."""
    rows = []
    for r in _ok(records, "pp"):
        res, k = r["result"], r["knobs"]
        steps = res["steps"][1:] or res["steps"]
        idle = np.array([s["idle_fraction"] for s in steps])
        busy = np.array([sum(e - a for _, _, a, e in s["spans"]) for s in steps])
        f_ms, b_ms = ([1e3 * (e - a) for s in steps for act, _, a, e in s["spans"] if act == kind]
                      for kind in ("F", "B"))
        cpu = np.array([s.get("busy_cpu_s", np.nan) for s in steps])
        rows.append({"schedule": r["knobs"]["schedule"], "m": r["knobs"]["micro_batches"],
                     "stage": r["rank"], "p": r["world_size"],
                     "idle": float(np.median(idle)), "idle_p25": float(np.percentile(idle, 25)),
                     "idle_p75": float(np.percentile(idle, 75)), "n": int(idle.size),
                     "formula": res["bubble_formula"],
                     "cpu_share": float(np.median(cpu / busy)),
                     "f_ms": float(np.median(f_ms)), "b_ms": float(np.median(b_ms)),
                     # one message between stages: a micro-batch's (B, T, C) fp32 activations
                     # forward, or their gradient backward
                     "message_bytes": 4 * k["batch"] * k["seq"] * job_config(k).n_embd,
                     "step_ms": 1e3 * float(np.median([s["window_s"][1] - s["window_s"][0]
                                                       for s in steps])),
                     "loadavg_1m": (r.get("loadavg") or [np.nan])[0]})
    return pd.DataFrame(rows)


def bubble_summary(table: pd.DataFrame, fit=None) -> pd.DataFrame:
    """Per (schedule, m): the stages' mean idle share, its spread, the formula and the
    relative error (measured ÷ formula − 1).

    Beside them, ``stage_sim``: the mean idle share of the ideal timeline
    (:func:`~efflab.systems.parallel.pipeline.simulate`) run with each stage's own median
    forward and backward times, messages free — what unequal stages alone explain, where the
    formula assumes equal ones; and ``unexplained_ms``: the idle milliseconds per stage and step
    that neither explains (the messages' transfer and the host's scheduling). With ``fit``
    (an ``AlphaBeta``, e.g. :func:`run_fit`), ``msg_sim`` runs the same timeline with every
    message between stages priced by the fit (lesson 14's all-reduce model standing in for one
    send of ``message_bytes``)."""
    g = table.groupby(["schedule", "m"], as_index=False).agg(
        idle=("idle", "mean"), idle_p25=("idle_p25", "mean"), idle_p75=("idle_p75", "mean"),
        formula=("formula", "first"), p=("p", "first"), cpu_share=("cpu_share", "min"),
        loadavg_1m=("loadavg_1m", "max"), step_ms=("step_ms", "median"))
    g["error"] = g["idle"] / g["formula"] - 1
    sims = []
    for (name, m), stages in table.sort_values("stage").groupby(["schedule", "m"], sort=True):
        spans = pipeline.simulate(name, len(stages), int(m), list(stages["f_ms"]),
                                  list(stages["b_ms"]))
        sims.append({"schedule": name, "m": m, "stage_sim": _mean_idle(spans)})
        if fit is not None:
            msg_ms = 1e3 * float(fit.time(float(stages["message_bytes"].iloc[0])))
            sims[-1].update(msg_ms=msg_ms, msg_sim=_mean_idle(pipeline.simulate(
                name, len(stages), int(m), list(stages["f_ms"]), list(stages["b_ms"]), msg_ms)))
    g = g.merge(pd.DataFrame(sims), on=["schedule", "m"])
    g["unexplained_ms"] = (g["idle"] - g["stage_sim"]) * g["step_ms"]
    return g


def _mean_idle(spans) -> float:
    """The stages' mean idle share of a simulated timeline's whole window."""
    end = max(sp[3] for stage in spans for sp in stage)
    return float(np.mean([pipeline.idle_fraction(stage, 0.0, end) for stage in spans]))


def bubble_verdict(summary: pd.DataFrame, tolerance: float = 0.10, cores: int | None = None) -> str:
    """A sentence on how the measured bubbles sit against the formula, from this run."""
    inside = summary[summary["error"].abs() <= tolerance]
    worst = summary.loc[summary["error"].abs().idxmax()]
    said = (f"{len(inside)} of {len(summary)} (schedule, m) points within ±{tolerance:.0%} of "
            f"(p − 1)/(m + p − 1); the farthest is {worst['schedule']} at m = {int(worst['m'])}: "
            f"{worst['idle']:.2f} measured against {worst['formula']:.2f}")
    said += _stage_sim_clause(worst)
    load, share = float(summary["loadavg_1m"].max()), float(summary["cpu_share"].min())
    # the load is read while the ranks run, so they count in it themselves
    ranks = int(summary["p"].max()) if "p" in summary else 0
    if cores and np.isfinite(load) and load > cores and load - ranks > 0.5:
        said += (f". The host's load average was {load:.1f} on {cores} cores"
                 + (f", {ranks} of it this launch's own ranks" if ranks else "")
                 + ": other processes took turns with the stages, and each wait shows up as "
                 "idle time")
    if np.isfinite(share) and share < 0.9:
        said += (f". While busy, a stage had its core for as little as {share:.0%} of the time: "
                 "the rest it was set aside by the operating system, and the stage waiting on it "
                 "counted that as bubble")
    elif np.isfinite(share):
        said += (f". While busy, every stage had its core for at least {share:.0%} of the time "
                 "(cpu_share), so the idle time measured here is the schedule's and the messages', "
                 "not other processes'")
    return said + "."


def _stage_sim_clause(row) -> str:
    """How much of one (schedule, m) point's gap to the formula unequal stages explain."""
    sim, gap = row.get("stage_sim", np.nan), row["idle"] - row["formula"]
    if not np.isfinite(sim) or abs(gap) < 0.005:
        return ""
    said = (f". The ideal schedule run with each stage's own median forward and backward times "
            f"(messages free) predicts {sim:.2f} there")
    part = (sim - row["formula"]) / gap
    if part <= 0:
        return said + ": unequal stages explain none of the gap"
    said += f": unequal stages explain {min(part, 1.0):.0%} of the gap"
    if row["unexplained_ms"] > 0:
        said += (f", and the other {row['unexplained_ms']:.1f} ms of idle per stage and step "
                 f"(of a {row['step_ms']:.0f} ms step) the stages' own times leave unexplained: "
                 "messages between the stages, the code between spans, the host")
    if np.isfinite(row.get("msg_sim", np.nan)):
        said += (f". With each message priced by this launch's α–β fit ({row['msg_ms']:.2f} ms), "
                 f"the same timeline predicts {row['msg_sim']:.2f}")
    return said


def activation_table(records) -> pd.DataFrame:
    """Per (schedule, m, stage): peak saved-activation bytes against micro-batches in flight
    (the schedule's count) × one micro-batch's saved bytes."""
    rows = []
    for r in _ok(records, "pp"):
        s0 = r["result"]["steps"][0]
        rows.append({"schedule": r["knobs"]["schedule"], "m": r["knobs"]["micro_batches"],
                     "stage": r["rank"], "in_flight": r["result"]["peak_in_flight"],
                     "per_micro_bytes": s0["saved_bytes_per_micro"],
                     "peak_bytes": s0["saved_peak_bytes"],
                     "predicted_bytes": r["result"]["peak_in_flight"] * s0["saved_bytes_per_micro"]})
    return pd.DataFrame(rows)


def timeline_frame(records, schedule: str, m: int, step: int = -1) -> pd.DataFrame:
    """One step's busy spans per stage (ms from the step's start), ``source`` "measured", and
    the ideal schedule with each stage's mean forward and backward times, ``source`` "ideal"."""
    recs = sorted((r for r in _ok(records, "pp") if r["knobs"]["schedule"] == schedule
                   and r["knobs"]["micro_batches"] == m), key=lambda r: r["rank"])
    if not recs:
        raise ValueError(f"no pipeline record for schedule={schedule!r}, m={m}")
    rows, t_f, t_b = [], [], []
    for r in recs:
        st = r["result"]["steps"][step]
        t0 = st["window_s"][0]
        for act, i, a, b in st["spans"]:
            rows.append({"source": "measured", "stage": r["rank"], "action": act, "micro": i,
                         "start_ms": 1e3 * (a - t0), "end_ms": 1e3 * (b - t0)})
            (t_f if act == "F" else t_b).append(b - a)
    ideal = pipeline.simulate(schedule, len(recs), m, 1e3 * float(np.mean(t_f)),
                              1e3 * float(np.mean(t_b)))
    for s, spans in enumerate(ideal):
        rows += [{"source": "ideal", "stage": s, "action": act, "micro": i, "start_ms": a,
                  "end_ms": b} for act, i, a, b in spans]
    return pd.DataFrame(rows)


def ring_table(records) -> pd.DataFrame:
    """Per ring rank: the largest score block held (bytes) beside B·nh·(T/N)² · 4 and beside
    full attention's B·nh·T² · 4; the values sent round the ring in one forward beside theirs."""
    rows = []
    for r in _ok(records, "ring"):
        k, res, n = r["knobs"], r["result"], r["world_size"]
        cfg = job_config(k)
        B, T = k["batch"], k["seq"]
        rows.append({"rank": r["rank"], "N": n, "T": T,
                     "score_bytes": 4 * res["score_values_peak"],
                     "score_bytes_formula": ring.score_bytes_per_rank(B, cfg.n_head, T, n),
                     "full_attention_bytes": ring.score_bytes_per_rank(B, cfg.n_head, T, 1),
                     "sent_values": res["sent_values_forward"],
                     "sent_values_formula": ring.ring_sent_values(B, cfg.n_head, T, cfg.head_dim,
                                                                  n, cfg.n_layer)})
    return pd.DataFrame(rows)


def run_fit(records):
    """The α–β fit (an ``AlphaBeta``) the tensor-parallel job made in this launch, on messages
    around its activation size: what the planner prices every collective with."""
    from efflab.systems.distributed.comm import AlphaBeta

    recs = _ok(records, "tp")
    if not recs:
        raise ValueError("no tensor-parallel record with an α–β fit in these records")
    f = recs[0]["result"]["fit"]
    return AlphaBeta(float(f["alpha_s"]), float(f["bandwidth"]), int(f.get("world_size", 2)))


def _layout(row) -> str:
    return f"dp={int(row['dp'])} tp={int(row['tp'])} pp={int(row['pp'])}"


def plan_verdict(plan: pd.DataFrame, device_memory_bytes: float) -> str:
    """A sentence, from a ``plan_parallel`` table: the layout the planner picks, with its memory
    per device against the device's and its predicted step, how many layouts fit, and what
    rules out the faster ones (or, when none fits, that the planner cannot choose, and why)."""
    gib = 2**30
    fits = plan[plan["fits"]]
    if fits.empty:
        sized = plan.dropna(subset=["memory_bytes"]) if "memory_bytes" in plan else plan.iloc[:0]
        if sized.empty:
            return ("No layout is possible: " + "; ".join(dict.fromkeys(plan["reason"])) + ".")
        low = sized.loc[sized["memory_bytes"].idxmin()]
        return (f"No layout of these devices fits, so the planner cannot choose: the leanest, "
                f"{_layout(low)}, needs {low['memory_bytes'] / gib:,.2f} GiB per device and a "
                f"device has {device_memory_bytes / gib:,.2f} GiB.")
    best = fits.iloc[0]
    said = (f"The planner picks {_layout(best)}: {best['memory_bytes'] / gib:,.2f} GiB per device "
            f"of {device_memory_bytes / gib:,.2f} GiB ({best['state_bytes'] / gib:,.2f} training "
            f"state, {best['activation_bytes'] / gib:,.2f} activations), a predicted step of "
            f"{best['step_s'] * 1e3:,.1f} ms (bubble {best['bubble']:.2f}; TP "
            f"{best['tp_comm_s'] * 1e3:,.1f} ms, pipeline {best['pp_comm_s'] * 1e3:,.1f} ms, DP "
            f"{best['dp_comm_s'] * 1e3:,.1f} ms of communication). {len(fits)} of {len(plan)} "
            "layouts fit")
    faster = plan[~plan["fits"] & (plan["step_s"] < best["step_s"])] if "step_s" in plan else []
    if len(faster):
        f = faster.sort_values("step_s").iloc[0]
        said += (f"; the faster {_layout(f)} ({f['step_s'] * 1e3:,.1f} ms) is ruled out: "
                 f"{f['reason']}")
    return said + "."


__all__ = ["equality_table", "tp_table", "bubble_table", "bubble_summary", "bubble_verdict",
           "activation_table", "timeline_frame", "ring_table", "run_fit", "plan_verdict"]
