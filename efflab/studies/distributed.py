"""Lesson 14's tables and verdicts on sharding: what each layout sends per step beside the ZeRO
paper's count, what it costs on this machine's α–β fit, and what ZeRO-2 as torch runs it holds
at rest and at its peak beside the textbook.

Every function takes the ``sharding`` records of :func:`efflab.systems.distributed.launch`
(one per rank; see ``zero.sharded_state``) and returns a tidy DataFrame or a sentence computed
from it:

- :func:`volume_table` — per layout and rank: the collectives of one counted step, by kind, the
  bytes they send on a ring, the paper's 2Ψ / 3Ψ (×(N−1)/N), and the predicted time;
- :func:`volume_verdicts` — one sentence per layout: agrees with the paper, or why not (read from
  which collectives ran);
- :func:`phase_table` / :func:`zero2_verdict` — bytes alive after forward, at the fullest moment
  of backward and after the step, beside the textbook's per-rank formula;
- :func:`takeaway` — the lesson's closing sentence on ZeRO-2 and FSDP's price, from the run.
"""

from __future__ import annotations

import pandas as pd

from efflab.systems.distributed.volume import KINDS, comm_price
from efflab.systems.distributed.zero import STATE_CATEGORIES, memory_per_rank

LAYOUTS = ("none", "zero1", "zero2", "fsdp")
NAMES = {"none": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "fsdp": "FSDP"}
PHASES = ("after_forward", "backward_peak", "after_step")
AGREE = 0.02  # measured within 2% of the paper's count: "agrees"


def _rows(records):
    for r in records:
        if r.get("kind") != "sharding" or r.get("status") != "ok":
            continue
        for s in r["result"]["shardings"]:
            if s.get("status") == "ok" and "comm" in s:
                yield s


def volume_table(records, fit=None) -> pd.DataFrame:
    """One row per (layout, rank): Ψ (fp32 parameter bytes), collectives issued in the counted
    step, each kind's payload as a multiple of Ψ, the ring bytes sent (``sent_bytes``) beside
    the paper's (``paper_bytes``), their ratio, and — given an α–β ``fit`` — the predicted
    communication time of those collectives with no overlap (``comm_pred_ms``)."""
    rows = []
    for s in _rows(records):
        psi = 4 * s["n_params"]
        by = s["comm"]["by_kind"]
        row = {"sharding": s["sharding"], "layout": NAMES.get(s["sharding"], s["sharding"]),
               "rank": s["rank"], "world_size": s["world_size"], "psi_bytes": psi,
               "calls": s["comm"]["calls"]}
        for k in KINDS:
            row[f"{k}_psi"] = by[k]["bytes"] / psi
        row.update(sent_bytes=s["comm"]["sent_bytes"], paper_bytes=s["paper_sent_bytes"],
                   sent_psi=s["comm"]["sent_bytes"] / psi, paper_psi=s["paper_sent_bytes"] / psi,
                   ratio=s["comm"]["sent_bytes"] / s["paper_sent_bytes"])
        if fit is not None:
            row["comm_pred_ms"] = comm_price(s["collectives"], fit, s["world_size"]) * 1e3
        rows.append(row)
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    order = {s: i for i, s in enumerate(LAYOUTS)}
    return t.sort_values(["sharding", "rank"], key=lambda c: c.map(order) if c.name == "sharding"
                         else c).reset_index(drop=True)


def _why(row) -> str:
    """Which collectives explain a measured volume that is not the paper's."""
    s, N = row["sharding"], row["world_size"]
    share = (N - 1) / N
    if s == "zero1" and row["all_reduce_psi"] > 0 and row["broadcast_psi"] > 0:
        return (f"torch's ZeRO-1 (DDP + ZeroRedundancyOptimizer) all-reduces every gradient "
                f"({row['all_reduce_psi']:.2f}Ψ of payload, as plain DDP does) and then broadcasts each "
                f"updated parameter from the rank that owns it ({row['broadcast_psi']:.2f}Ψ), where "
                f"the paper's ZeRO-1 reduce-scatters the gradients and all-gathers the parameters")
    if s == "fsdp" and 1 < row["all_gather_psi"] < 2:
        kept = 2 - row["all_gather_psi"]
        return (f"FSDP gathered {row['all_gather_psi']:.2f}Ψ, not 2Ψ: the root unit (embeddings "
                f"and final LayerNorm, {kept:.0%} of the parameters) is not resharded after forward "
                f"(reshard_after_forward defaults to False at the root), so backward does not "
                f"gather it again")
    if s == "fsdp" and row["all_gather_psi"] > 2:
        return (f"FSDP gathered {row['all_gather_psi']:.2f}Ψ, more than 2Ψ: shards padded to a "
                f"multiple of N")
    return ("by kind: " + ", ".join(f"{k} {row[f'{k}_psi']:.2f}Ψ" for k in KINDS
                                     if row[f"{k}_psi"] > 0) + f" (each × {share:.2f} on a ring)")


def volume_verdicts(table: pd.DataFrame, rank: int = 0) -> list[str]:
    """One sentence per layout (``rank``'s row): measured bytes sent per step against the
    paper's, and the reason when they differ by more than 2%."""
    out = []
    for _, row in table[table["rank"] == rank].iterrows():
        head = (f"{row['layout']}: sends {row['sent_bytes']:,.0f} bytes per step = "
                f"{row['sent_psi']:.3f}Ψ; the paper's count is {row['paper_psi']:.3f}Ψ")
        if abs(row["ratio"] - 1) <= AGREE:
            out.append(f"{head} — they agree (within {AGREE:.0%})")
        else:
            out.append(f"{head} — {row['ratio']:.2f}× the paper's: {_why(row)}")
    return out


def phase_table(records) -> pd.DataFrame:
    """One row per (layout, rank, phase): bytes alive by category (counted by storage) and in
    total, beside the textbook per-rank total (``memory_per_rank``) and their ratio."""
    rows = []
    for s in _rows(records):
        formula = memory_per_rank(s["n_params"], s["world_size"], s["sharding"])
        for ph in PHASES:
            b = s["phases"][ph]
            rows.append({"sharding": s["sharding"], "layout": NAMES.get(s["sharding"]),
                         "rank": s["rank"], "phase": ph, "n_params": s["n_params"],
                         **{c: b[c] for c in STATE_CATEGORIES}, "total": b["total"],
                         "textbook_total": formula["total"],
                         "textbook_parameters": formula["parameters"],
                         "vs_textbook": b["total"] / formula["total"]})
    return pd.DataFrame(rows)


def zero2_verdict(phases: pd.DataFrame, rank: int = 0) -> str:
    """What ZeRO-2 as torch runs it (FSDP2, reshard_after_forward=False) held on ``rank``, at
    rest and at its peak, beside the textbook's 4P + 4P/N + 8P/N (parameters replicated)."""
    z = phases[(phases["sharding"] == "zero2") & (phases["rank"] == rank)].set_index("phase")
    if z.empty:
        return "ZeRO-2 did not run (refused on this backend)"
    P4 = 4 * int(z["n_params"].iloc[0])
    rest, fwd, peak = z.loc["after_step"], z.loc["after_forward"], z.loc["backward_peak"]
    book = rest["textbook_parameters"] / P4
    return (f"ZeRO-2 as torch runs it holds parameters of {rest['parameters'] / P4:.2f}×4P at rest "
            f"(after the step) and {fwd['parameters'] / P4:.2f}×4P between forward and backward, "
            f"where the textbook keeps {book:.2f}×4P throughout; in total "
            f"{rest['total'] / 2**20:.3f} MiB at rest and {peak['total'] / 2**20:.3f} MiB at "
            f"the fullest moment of backward, against the textbook's "
            f"{rest['textbook_total'] / 2**20:.3f} MiB ({peak['vs_textbook']:.2f}× it at the "
            f"peak)")


def takeaway(volume: pd.DataFrame, phases: pd.DataFrame, rank: int = 0) -> str:
    """The lesson's closing sentence on ZeRO-2 and FSDP: their bytes sent per step against
    DDP's, their predicted time on this machine's fit, and ZeRO-2's peak, all from the run."""
    v = volume[volume["rank"] == rank].set_index("sharding")
    needed = {"none", "zero2", "fsdp"}
    if not needed <= set(v.index):
        return "ZeRO-2 or FSDP did not run here, so their price is not measured"
    ddp, z2, fs = v.loc["none"], v.loc["zero2"], v.loc["fsdp"]
    timed = "comm_pred_ms" in v.columns
    t = (lambda r: f", predicted {r['comm_pred_ms']:.2f} ms") if timed else (lambda r: "")
    def at(sharding, phase):
        row = phases[(phases["sharding"] == sharding) & (phases["rank"] == rank)
                     & (phases["phase"] == phase)]
        return None if row.empty else row.iloc[0]

    z2p, fsp, z2r, fsr = (at("zero2", "backward_peak"), at("fsdp", "backward_peak"),
                          at("zero2", "after_step"), at("fsdp", "after_step"))
    held = ""
    if all(x is not None for x in (z2p, fsp, z2r, fsr)):
        rest = ("the same bytes at rest" if z2r["total"] == fsr["total"] else
                f"{z2r['total'] / fsr['total']:.2f}× FSDP's bytes at rest")
        buys = ("what FSDP's second all-gather buys is a lower peak"
                if z2p["total"] > fsp["total"] else
                "here FSDP's second all-gather bought no lower peak")
        held = (f"; at the fullest moment of backward ZeRO-2 held {z2p['total'] / fsp['total']:.2f}× "
                f"FSDP's bytes ({z2p['vs_textbook']:.2f}× the textbook's ZeRO-2) and {rest}: {buys}")
    return (f"ZeRO-2 sent {z2['sent_bytes'] / ddp['sent_bytes']:.2f}× DDP's bytes per step "
            f"({z2['sent_psi']:.2f}Ψ{t(z2)}; DDP {ddp['sent_psi']:.2f}Ψ{t(ddp)}) and FSDP "
            f"{fs['sent_bytes'] / ddp['sent_bytes']:.2f}× ({fs['sent_psi']:.2f}Ψ{t(fs)}){held}")


__all__ = ["LAYOUTS", "NAMES", "PHASES", "volume_table", "volume_verdicts", "phase_table",
           "zero2_verdict", "takeaway"]
