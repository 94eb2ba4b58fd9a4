"""A class's results pooled across machines: ``efflab class-results SUBMISSIONS/``.

Every submission zip carries the learner's records and the fingerprint of the machine they
were measured on. Pooled, they answer the question a single laptop cannot: how does the
hardware change the answer? Each comparison is a *ratio* between two records of the same
machine that differ in one knob only (same preset, workload and every other knob), so no
absolute speed is compared across machines:

=========================  ===========================================================
comparison                 ratio (per pair of records, then the median per machine)
=========================  ===========================================================
batching gain (train)      best tokens/s over batch sizes ÷ tokens/s at the smallest batch
batching gain (decode)     the same for decoding
bf16 ÷ fp32 speed          tokens/s with autocast bf16 ÷ fp32, where bf16 ran
int8 decode gain           decode tokens/s, int8 weight-only ÷ unquantized
int4 decode gain           decode tokens/s, int4 weight-only ÷ unquantized
checkpointing saving       peak memory without ÷ with activation checkpointing
MoE ÷ dense loss           validation loss at equal training FLOPs (from stored curves)
=========================  ===========================================================

Only records with ``status == "ok"`` count. The table keeps, per machine and comparison, the
median, p25/p75 over the pairs and their count; the chart (:mod:`efflab.ui.charts.class_results`)
draws one mark per machine with that spread and a line at 1 (no change).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from efflab.core.records import records_frame
from efflab.course.submission import discover, open_submission
from efflab.ui.charts.class_results import class_results_chart
from efflab.ui.charts.export import save_chart

TOKENS_PER_S = "throughput.tokens_per_s"
PEAK = "memory.peak_bytes"
COLUMNS = ["comparison", "machine", "median", "p25", "p75", "n", "students"]


@dataclass(frozen=True)
class Comparison:
    """Records that differ only in ``knob``: ``metric(variant) / metric(base)`` (or its
    inverse, ``invert``, so that every ratio above 1 reads "better")."""

    name: str
    knob: str
    base: object
    variant: object
    metric: str
    workload: str | None = None
    ignore: tuple[str, ...] = ()
    invert: bool = False


COMPARISONS = (
    Comparison("bf16 ÷ fp32 speed", "precision", "fp32", "bf16", TOKENS_PER_S),
    Comparison("int8 decode gain", "quantization", "none", "int8-weight", TOKENS_PER_S,
               workload="decode", ignore=("group_size",)),
    Comparison("int4 decode gain", "quantization", "none", "int4-weight", TOKENS_PER_S,
               workload="decode", ignore=("group_size",)),
    Comparison("checkpointing saving", "checkpointing", "none", "blocks", PEAK,
               workload="train", ignore=("checkpointing_every",), invert=True),
)
ORDER = ["batching gain (train)", "batching gain (decode)", "bf16 ÷ fp32 speed",
         "int8 decode gain", "int4 decode gain", "checkpointing saving", "MoE ÷ dense loss"]
IGNORED_ALWAYS = ("seed",)  # the seed does not change speed or memory


def _machine(sub) -> tuple[str, str]:
    """(fingerprint, label) of the machine a submission's records came from."""
    m = sub.machine if isinstance(sub.machine, dict) else {}
    env = m.get("env") if isinstance(m.get("env"), dict) else {}
    fp = m.get("fingerprint") or sub.manifest.get("fingerprint")
    if not fp:
        fp = hashlib.sha256(json.dumps(env, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cpu = str(env.get("cpu") or "unknown CPU")
    label = f"{cpu[:40]}, {env.get('threads', '?')} threads"
    if env.get("gpu"):
        label += f", {env['gpu']}"
    return str(fp), f"{label} [{str(fp)[:6]}]"


def pool(submissions: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records, curves) of every submission, flattened, with ``machine`` and ``student``
    columns. A record handed in twice (the same store in two zips) counts once per machine.
    Curves are the rows of a ``curves`` table in a submission's store, if it has one."""
    records, curves, seen = [], [], set()
    for student, path in discover(submissions):
        sub = open_submission(path, student=student)
        fp, label = _machine(sub)
        fresh = []
        for r in sub.records:
            key = (fp, json.dumps(r, sort_keys=True, default=str))
            if key not in seen:
                seen.add(key)
                fresh.append(r)
        if fresh:
            df = records_frame(fresh)
            df["machine_fingerprint"], df["machine"], df["student"] = fp, label, student
            records.append(df)
        if sub.tables.get("curves"):
            df = pd.DataFrame(sub.tables["curves"])
            df["machine"], df["student"] = label, student
            curves.append(df)
    rec = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    return rec, (pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())


def _knob_cols(df: pd.DataFrame, drop: tuple[str, ...]) -> list[str]:
    drop_cols = {f"knobs.{k}" for k in drop + IGNORED_ALWAYS}
    return sorted(c for c in df.columns if c.startswith("knobs.") and c not in drop_cols)


def _workload_col(df: pd.DataFrame) -> str:
    return "workload" if "workload" in df else "knobs.workload"


def _summary(name: str, machine: str, values: list[float], students) -> dict:
    v = np.asarray(values, dtype=float)
    return {"comparison": name, "machine": machine, "median": float(np.median(v)),
            "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75)),
            "n": int(v.size), "students": ", ".join(sorted(set(students)))}


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty or "status" not in df:
        return pd.DataFrame()
    return df[df["status"] == "ok"]


def batching_gains(df: pd.DataFrame) -> list[dict]:
    """Best throughput over batch sizes ÷ throughput at the smallest batch, per sweep."""
    out = []
    df = _ok(df)
    if df.empty or TOKENS_PER_S not in df or "knobs.batch_size" not in df:
        return out
    for workload in ("train", "decode"):
        sub = df[df[_workload_col(df)] == workload]
        if sub.empty:
            continue
        group = ["machine", "preset"] + _knob_cols(sub, ("batch_size",))
        for (machine, *_), g in sub.groupby(group, dropna=False):
            per_batch = g.groupby("knobs.batch_size")[TOKENS_PER_S].median()
            if len(per_batch) < 2 or per_batch.iloc[0] <= 0:
                continue
            out.append({"comparison": f"batching gain ({workload})", "machine": machine,
                        "value": float(per_batch.max() / per_batch.iloc[0]),
                        "student": ", ".join(sorted(set(g["student"])))})
    return out


def pair_ratios(df: pd.DataFrame, c: Comparison) -> list[dict]:
    """Ratios of records that differ only in ``c.knob`` (base vs variant)."""
    out = []
    df = _ok(df)
    col = f"knobs.{c.knob}"
    if df.empty or col not in df or c.metric not in df:
        return out
    if c.workload is not None:
        df = df[df[_workload_col(df)] == c.workload]
    group = ["machine", "preset"] + _knob_cols(df, (c.knob,) + c.ignore)
    group = [g for g in group if g in df]
    for (machine, *_), g in df.groupby(group, dropna=False):
        base = g[g[col] == c.base][c.metric].dropna()
        var = g[g[col] == c.variant][c.metric].dropna()
        if base.empty or var.empty or base.median() <= 0 or var.median() <= 0:
            continue
        ratio = float(var.median() / base.median())
        out.append({"comparison": c.name, "machine": machine,
                    "value": 1 / ratio if c.invert else ratio,
                    "student": ", ".join(sorted(set(g["student"])))})
    return out


def moe_loss_ratios(curves: pd.DataFrame) -> list[dict]:
    """MoE ÷ dense validation loss at equal training FLOPs, from training-curve rows
    (``variant``, ``flops``, ``val_loss``, ``machine``, ``student``, and ``run`` where the store
    kept one per :func:`efflab.measurement.training.train_curves` call; a variant whose name starts with
    "dense" is the reference), compared at the largest FLOPs both reached: one ratio per MoE
    variant per run, so a lesson run twice gives two pairs, never one mixed curve."""
    out = []
    need = {"variant", "flops", "val_loss", "machine"}
    if curves.empty or not need <= set(curves.columns):
        return out
    curves = curves.dropna(subset=["val_loss", "flops"])
    keys = ["machine", "student"] + (["run"] if "run" in curves.columns else [])
    for (machine, student, *_), g in curves.groupby(keys):
        dense = g[g["variant"].astype(str).str.startswith("dense")].sort_values("flops")
        if dense.empty:
            continue
        for variant, v in g[~g["variant"].astype(str).str.startswith("dense")].groupby("variant"):
            if "balanc" in str(variant):  # the collapse demonstration is not the comparison
                continue
            v = v.sort_values("flops")
            at = min(dense["flops"].max(), v["flops"].max())
            if at <= max(dense["flops"].min(), v["flops"].min()):
                continue
            d = float(np.interp(at, dense["flops"], dense["val_loss"]))
            m = float(np.interp(at, v["flops"], v["val_loss"]))
            if d > 0:
                out.append({"comparison": "MoE ÷ dense loss", "machine": machine,
                            "value": m / d, "student": student})
    return out


def class_table(records: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per comparison and machine: median, p25, p75 over pairs, n, students."""
    rows = batching_gains(records)
    for c in COMPARISONS:
        rows += pair_ratios(records, c)
    if curves is not None:
        rows += moe_loss_ratios(curves)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    raw = pd.DataFrame(rows)
    table = [_summary(name, machine, list(g["value"]), g["student"])
             for (name, machine), g in raw.groupby(["comparison", "machine"])]
    out = pd.DataFrame(table, columns=COLUMNS)
    out["order"] = out["comparison"].map({n: i for i, n in enumerate(ORDER)}).fillna(len(ORDER))
    return out.sort_values(["order", "machine"]).drop(columns="order").reset_index(drop=True)


def class_results(submissions: str | os.PathLike, out: str | os.PathLike = "class_results.html",
                  csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """Pool ``submissions``, write the chart to ``out`` (.html/.svg/.png/.json) and the table
    to ``csv`` (default: beside the chart); return the table."""
    table = class_table(*pool(submissions))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_chart(class_results_chart(table), out)
    table.to_csv(Path(csv) if csv else out.with_suffix(".csv"), index=False)
    return table
