"""Fast path against reference on the lab's own model: same loss, same gradients?

``compare_gradients(preset, a, b)`` builds the same model twice from one seed, applies the
techniques of two Knobs, runs one training forward/backward on the same batch, and reports how
far apart the losses and every parameter's gradient are. The lessons use it to show, not just
claim, that checkpointing or a fused attention kernel leaves the mathematics unchanged.
"""

from __future__ import annotations

import torch

from efflab.core.config import Knobs, get_preset
from efflab.core.data import load_corpus, random_batch
from efflab.core.model import build_model
from efflab.techniques import apply_techniques
from efflab.techniques.precision import PrecisionConfig, autocast

__all__ = ["compare_gradients", "frontier_verdict", "precision_takeaways"]


def _loss_and_grads(preset: str, knobs: Knobs, x, y, seed: int, device) -> tuple[float, dict]:
    model = apply_techniques(build_model(get_preset(preset), seed, device), knobs)
    model.train()
    with autocast(PrecisionConfig(knobs.precision), device):
        _, loss = model(x, y)
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.item(), grads


def compare_gradients(preset: str, a: Knobs, b: Knobs, batch_size: int = 4,
                      seq_len: int | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """Loss and gradient differences between the techniques of ``a`` and ``b`` (same weights,
    same batch). ``max_abs_grad_diff`` is over every element of every parameter's gradient;
    ``max_rel_grad_diff`` divides by that parameter's largest gradient magnitude."""
    cfg = get_preset(preset)
    T = seq_len or cfg.block_size
    g = torch.Generator().manual_seed(seed)
    x, y = random_batch(load_corpus().train, batch_size, T, g, device)  # (B, T) each
    loss_a, grads_a = _loss_and_grads(preset, a, x, y, seed, device)
    loss_b, grads_b = _loss_and_grads(preset, b, x, y, seed, device)
    if grads_a.keys() != grads_b.keys():
        raise ValueError("the two configurations have different parameters; compare techniques "
                         "that keep the model's parameters (not MoE)")
    abs_diff = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    rel_diff = max(((grads_a[n] - grads_b[n]).abs().max()
                    / grads_a[n].abs().max().clamp_min(1e-30)).item() for n in grads_a)
    return {"loss_a": loss_a, "loss_b": loss_b, "loss_diff": abs(loss_a - loss_b),
            "max_abs_grad_diff": abs_diff, "max_rel_grad_diff": rel_diff,
            "n_tensors": len(grads_a)}


# ----------------------------------------------------------------------------- verdicts from a run

def _ok_rows(df, knob: str, value, **where):
    ok = df[(df["status"] == "ok") & (df[f"knobs.{knob}"] == value)]
    for k, v in where.items():
        ok = ok[ok[f"knobs.{k}"] == v]
    return ok


def frontier_verdict(decode, scheme: str = "int8-weight", reference: str = "none",
                     batch_size: int = 1) -> str:
    """Lesson 07: what ``scheme`` costs and buys against ``reference`` in the learner's own decode
    grid at ``batch_size`` — held-out loss (paired on the same windows where it can be, with its
    95% interval), ms per request token (faster or slower only where the p25–p75 ranges do not
    overlap) and peak memory. Needs :func:`efflab.studies.analysis.add_costs` columns."""
    from efflab.studies.analysis import quality_difference

    a = _ok_rows(decode, "quantization", reference, batch_size=batch_size)
    b = _ok_rows(decode, "quantization", scheme, batch_size=batch_size)
    if a.empty or b.empty:
        missing = reference if a.empty else scheme
        return f"No successful `{missing}` decode at batch {batch_size} in this grid to compare."
    a, b = a.iloc[0], b.iloc[0]

    def rec(r):
        return {"quality": {k.removeprefix("quality."): r[k] for k in r.index
                            if k.startswith("quality.")},
                "context": {"corpus": r.get("context.corpus")}}

    q = quality_difference(rec(a), rec(b))
    lat = b["ms per request token"] / a["ms per request token"]
    if b["latency_ms.p75"] < a["latency_ms.p25"]:
        speed = "faster"
    elif b["latency_ms.p25"] > a["latency_ms.p75"]:
        speed = "slower"
    else:
        speed = "no measurable difference (the p25–p75 ranges overlap)"
    mem = b["peak MiB"] / a["peak MiB"]
    label = scheme
    if scheme == "int4-weight" and "knobs.group_size" in b.index:
        label += f" (group_size={b['knobs.group_size']})"  # a grid may hold several
    return (f"**{label} against {reference}, batch {batch_size}, this run:** quality {q['verdict']}; "
            f"latency {lat:.2f}× ({b['ms per request token']:.3f} against "
            f"{a['ms per request token']:.3f} ms per request token): {speed}; "
            f"peak memory {mem:.2f}× ({b['peak MiB']:.2f} against {a['peak MiB']:.2f} MiB).")


def precision_takeaways(formats, small, curves, reference: str = "fp32") -> list[str]:
    """Lesson 02's take-aways, each computed from the run: the step time of every format against
    ``reference`` in ``formats`` (or why it was refused), bytes by category from ``small``
    (a memory sweep over precisions) and the largest training-loss gap of each curve in
    ``curves`` against the reference's, step for step."""
    out = []
    base = _ok_rows(formats, "precision", reference)
    for p in [p for p in dict.fromkeys(formats["knobs.precision"]) if p != reference]:
        rows = formats[formats["knobs.precision"] == p]
        ok = rows[rows["status"] == "ok"]
        if ok.empty:
            out.append(f"{p}: refused or failed here — {rows['message'].iloc[0]}")
        elif not base.empty:
            x = ok["latency_ms.median"].iloc[0] / base["latency_ms.median"].iloc[0]
            out.append(f"{p}: step time {x:.2f}× {reference}'s on this machine")
    ref = _ok_rows(small, "precision", reference)
    if not ref.empty:
        for p in [p for p in dict.fromkeys(small["knobs.precision"]) if p != reference]:
            ok = _ok_rows(small, "precision", p)
            if ok.empty:
                continue
            parts = []
            for cat in ("parameters", "optimizer", "activations"):
                col = f"memory.by_category.{cat}"
                if col in ok and ref[col].iloc[0]:
                    parts.append(f"{cat} {ok[col].iloc[0] / ref[col].iloc[0]:.2f}×")
            if parts:
                out.append(f"{p}: bytes against {reference} — " + ", ".join(parts))
    good = curves[curves["status"] == "ok"]
    loss = good.pivot_table(index="step", columns="variant", values="train_loss")
    if reference in loss:
        for v in [v for v in loss.columns if v != reference]:
            gap = (loss[v] - loss[reference]).abs()
            out.append(f"{v}: training loss at most {gap.max():.4f} nats from {reference}'s "
                       f"(mean {gap.mean():.4f}) over {len(gap)} steps")
    return out
