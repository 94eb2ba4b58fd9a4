"""Lesson 16's tables: what fine-tuning keeps in memory, and what LoRA, QLoRA, low-bit AdamW and
gradient accumulation each take away.

- :func:`memory_by_rank` — one training step tracked by category (frozen weights, adapters,
  gradients, optimizer state, activations) for a full fine-tune and LoRA at each rank, beside
  the formula (``lora.training_state_bytes``).
- :func:`finetune_compare` — full fine-tuning, LoRA and QLoRA trained on the same batches of a
  held-apart corpus (:func:`held_apart_corpus`), each scored on the same held-out windows, so
  the differences are paired (``analysis.quality_difference``).
- :func:`nf4_table` — every block Linear's NF4 bytes (measured = formula) and SQNR beside int4's.
- :func:`optimizer_table` — AdamW state bytes at fp32, 8 and 4 bits, measured and predicted,
  and the loss curves on the same batches.
- :func:`accumulation_check` / :func:`accumulation_memory` — k micro-batches give the big
  batch's gradients (to rounding) at a fraction of its activation memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from efflab.core.data import load_corpus
from efflab.core.weights import load_model
from efflab.measurement.memory import measure_memory
from efflab.measurement.training import run_training
from efflab.measurement.workloads import heldout_quality, make_optimizer
from efflab.studies.analysis import quality_difference
from efflab.techniques import LoRAConfig, NF4Config, apply_
from efflab.techniques.lora import lora_param_count, trainable_parameters, training_state_bytes
from efflab.techniques.lowbit_optim import (
    make_lowbit_optimizer,
    optimizer_state_bytes,
    state_bytes_per_param,
)
from efflab.techniques.nf4 import nf4_bytes, nf4_roundtrip
from efflab.techniques.quantization import (
    Int4WeightOnlyLinear,
    dequantize_int4,
    quantize_int4_groupwise,
    sqnr_db,
)
from efflab.techniques.surgery import block_linears

METHODS = ("full", "lora", "qlora")


def held_apart_corpus():
    """A corpus the shipped checkpoints never saw: the source of the installed ``tqdm`` package
    (an efflab dependency; the default corpus, the standard library, skips site-packages)."""
    import tqdm

    return load_corpus(Path(tqdm.__file__).parent)


def training_batch(corpus, batch_size: int, seq_len: int, seed: int = 0):
    from efflab.core.data import random_batch

    return random_batch(corpus.train, batch_size, seq_len, torch.Generator().manual_seed(seed))


def prepare_method(preset: str, method: str, config: LoRAConfig | None = None) -> nn.Module:
    """The shipped ``preset`` model ready to fine-tune by ``method``: all weights trainable
    (``full``), frozen + LoRA adapters (``lora``), or NF4 frozen base + adapters (``qlora``)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    model = load_model(preset, "auto")
    if method == "qlora":
        apply_(model, NF4Config())
    if method != "full":
        apply_(model, config or LoRAConfig())
    return model


def _tracked_step(model: nn.Module, opt, x, y) -> dict:
    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from the first step on: track the second
    return measure_memory(step, model, opt, inputs=(x, y))


def _stored_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored (NF4 codes and scales count packed)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def predicted_state(preset: str, method: str, config: LoRAConfig | None = None) -> dict:
    """Bytes of weights, gradients and AdamW state for fine-tuning ``preset`` by ``method``,
    from the formulas alone: ``lora.training_state_bytes`` with the frozen weights fp32, or for
    QLoRA the block Linears' weights at ``nf4_bytes`` and everything else fp32."""
    from efflab.core.config import get_preset

    cfg = get_preset(preset)
    n_all = sum(p.numel() for p in load_model(preset, None).parameters())
    if method == "full":
        return {"weights": 4 * n_all, "gradients": 4 * n_all, "optimizer": 8 * n_all}
    k = lora_param_count(cfg, config or LoRAConfig())
    frozen = None
    if method == "qlora":
        linears = [m.in_features * m.out_features
                   for _, m in block_linears(load_model(preset, None))]
        frozen = sum(nf4_bytes(n) for n in linears) + 4 * (n_all - sum(linears))
    st = training_state_bytes(n_all + k, k, frozen_bytes=frozen)
    return {"weights": st["frozen"] + st["adapters"], "gradients": st["gradients"],
            "optimizer": st["optimizer"]}


def memory_by_rank(preset: str = "cpu-small", ranks=(2, 8, 32), *, batch_size: int = 8,
                   seq_len: int = 128, methods=("full", "lora"), seed: int = 0) -> pd.DataFrame:
    """One tracked training step (AdamW, fp32) per method and rank: bytes by category, measured
    and from the formula (:func:`predicted_state`). Long format: {method, r, trainable,
    trainable_share, category, measured, formula, peak_bytes}; ``formula`` is NaN for
    activations (measured only: what autograd saves depends on which weights train)."""
    corpus = held_apart_corpus()
    x, y = training_batch(corpus, batch_size, seq_len, seed)
    n_all = sum(p.numel() for p in load_model(preset, None).parameters())
    rows = []
    for method in methods:
        for r in ([None] if method == "full" else ranks):
            config = LoRAConfig(r=r) if r else None
            model = prepare_method(preset, method, config)
            model.train()
            k = trainable_parameters(model)
            opt = make_optimizer(model)  # frozen parameters get no grad, so no state
            rep = _tracked_step(model, opt, x, y)
            want = predicted_state(preset, method, config)
            got = {"weights": _stored_bytes(model),
                   "gradients": rep["max_by_category"]["gradients"],
                   "optimizer": rep["max_by_category"]["optimizer"],
                   "activations": rep["max_by_category"]["activations"]}
            for cat, v in got.items():
                rows.append({"method": method, "r": r or 0, "trainable": k,
                             "trainable_share": k / n_all, "category": cat, "measured": int(v),
                             "formula": want.get(cat, float("nan")),
                             "peak_bytes": rep["peak_bytes"]})
    return pd.DataFrame(rows)


def formula_error(df: pd.DataFrame) -> float:
    """The worst relative gap |measured − formula| ÷ formula over :func:`memory_by_rank`'s rows
    that have a formula (activations have none)."""
    rows = df.dropna(subset=["formula"])
    rows = rows[rows.formula > 0]
    return float(((rows.measured - rows.formula).abs() / rows.formula).max())


def memory_verdict(df: pd.DataFrame, r: int = 8) -> str:
    """One sentence: how much of the full fine-tune's training state LoRA at ``r`` keeps, and
    whether every formula category matches the measurement within 10%."""
    def total(sel, cats=("gradients", "optimizer")):
        return int(sel[sel.category.isin(cats)].measured.sum())

    full, lora = df[df.method == "full"], df[(df.method == "lora") & (df.r == r)]
    if full.empty or lora.empty:
        return "Run the sweep with the full fine-tune and LoRA at this rank."
    worst = formula_error(df)
    share = float(lora.trainable_share.iloc[0])
    ratio = total(lora) / total(full)
    acts = (int(lora[lora.category == "activations"].measured.iloc[0])
            / max(1, int(full[full.category == "activations"].measured.iloc[0])))
    return (f"LoRA at r = {r} trains {share:.1%} of the weights; its gradients and AdamW state "
            f"take {ratio:.1%} of the full fine-tune's, and its saved activations "
            f"{acts:.0%}. Formula vs measured: worst category off by {worst:.1%} "
            f"({'within' if worst <= 0.10 else 'outside'} 10%).")


def finetune_compare(preset: str = "cpu-small", *, steps: int = 60, batch_size: int = 8,
                     seq_len: int = 128, lr: dict | None = None, r: int = 8, windows: int = 128,
                     seed: int = 0, methods=METHODS, on_row=None) -> dict:
    """Fine-tune the shipped model by each method on the same batches of the held-apart corpus
    and score each (and the untouched base) on the same held-out windows.

    Returns ``{"curves": DataFrame {method, step, train_loss}, "quality": {method: heldout},
    "table": DataFrame {method, trainable, val_loss, ci95, vs_base, vs_full, vs_lora}, "models":
    {method: the trained model}}``; ``vs_*`` are paired differences (``quality_difference``
    verdicts; ``vs_lora`` for QLoRA: what the NF4 base costs)."""
    lr = {"full": 3e-4, "lora": 2e-3, "qlora": 2e-3, **(lr or {})}
    corpus = held_apart_corpus()
    ctx = {"corpus": corpus.sha256}
    base = load_model(preset, "auto")
    qual = {"base": heldout_quality(base, corpus, seq_len, windows)}
    curves, trainable, models = [], {"base": 0}, {"base": base}
    for method in methods:
        model = prepare_method(preset, method, LoRAConfig(r=r))
        trainable[method] = trainable_parameters(model)
        run = run_training(model, corpus, steps=steps, batch_size=batch_size, seq_len=seq_len,
                           lr=lr[method], schedule="constant", seed=seed, progress=False,
                           on_row=on_row)
        curves += [{"method": method, "step": row["step"], "train_loss": row["train_loss"]}
                   for row in run.rows]
        qual[method] = heldout_quality(model, corpus, seq_len, windows)
        models[method] = model
    rec = {m: {"quality": q, "context": ctx} for m, q in qual.items()}
    table = []
    for m, q in qual.items():
        table.append({"method": m, "trainable": trainable[m], "val_loss": q["val_loss"],
                      "ci95": q["val_loss_ci95"],
                      "vs_base": None if m == "base" else quality_difference(rec["base"], rec[m])["verdict"],
                      "vs_full": (quality_difference(rec["full"], rec[m])["verdict"]
                                  if m not in ("base", "full") and "full" in rec else None),
                      "vs_lora": (quality_difference(rec["lora"], rec[m])["verdict"]
                                  if m == "qlora" and "lora" in rec else None)})
    return {"curves": pd.DataFrame(curves), "quality": qual, "table": pd.DataFrame(table),
            "models": models}


@torch.no_grad()
def merge_check(model: nn.Module, corpus, seq_len: int = 128, batch_size: int = 4) -> dict:
    """Merge a LoRA model's adapters (W + (α/r)·B·A) into a copy and compare its logits with the
    adapter model's on held-out windows, in float64 (the algebra: ``relative`` ≤ 1e-6 is
    ``equal``) and in fp32 (``fp32_relative``: what rounding adds when the merge is stored in
    fp32). Relative = max |Δ logits| ÷ max |logits|."""
    import copy

    from efflab.core.data import fixed_batches
    from efflab.techniques.lora import lora_layers, merge_lora_

    x, _ = next(iter(fixed_batches(corpus.val, 1, batch_size, seq_len, "cpu")))
    out = {}
    for name, dtype in (("", torch.float64), ("fp32_", torch.float32)):
        adapted = copy.deepcopy(model).to(dtype).eval()
        merged = merge_lora_(copy.deepcopy(adapted)).eval()
        a, b = adapted(x)[0], merged(x)[0]
        out[f"{name}relative"] = float((a - b).abs().max()) / float(a.abs().max())
        out.setdefault("adapters_left", len(lora_layers(merged)))
    out["equal"] = out["relative"] <= 1e-6
    return out


@torch.no_grad()
def nf4_table(model: nn.Module) -> pd.DataFrame:
    """Per block Linear: weights, NF4 bytes (measured storage and formula), bits per weight,
    SQNR of NF4 and of int4 (groups of 64, lesson 05's scheme) and int4's stored bytes."""
    from efflab.techniques.nf4 import quantize_nf4

    rows = []
    for name, m in block_linears(model):
        w = m.weight.detach().float()
        n = w.numel()
        stored = sum(t.numel() * t.element_size() for t in quantize_nf4(w).values())
        codes, sz = quantize_int4_groupwise(w, 64)
        int4_b = Int4WeightOnlyLinear.stored_bytes(m.out_features, m.in_features, bias=False,
                                                   group_size=64)
        rows.append({"name": name, "weights": n, "nf4_bytes": stored, "formula_bytes": nf4_bytes(n),
                     "nf4_bits_per_weight": 8 * stored / n, "nf4_sqnr_db": sqnr_db(w, nf4_roundtrip(w)),
                     "int4_bytes": int4_b, "int4_bits_per_weight": 8 * int4_b / n,
                     "int4_sqnr_db": sqnr_db(w, dequantize_int4(codes, sz)), "fp32_bytes": 4 * n})
    return pd.DataFrame(rows)


def nf4_verdict(df: pd.DataFrame) -> str:
    exact = bool((df.nf4_bytes == df.formula_bytes).all())
    d = float((df.nf4_sqnr_db - df.int4_sqnr_db).median())
    return (f"NF4 stores {df.nf4_bits_per_weight.mean():.3f} bits per weight "
            f"({'exactly' if exact else 'NOT'} the formula's bytes in all {len(df)} layers) "
            f"against int4's {df.int4_bits_per_weight.mean():.2f}; its SQNR is "
            f"{abs(d):.2f} dB {'above' if d >= 0 else 'below'} int4's (median over layers).")


def optimizer_table(preset: str = "cpu-small", *, steps: int = 40, batch_size: int = 8,
                    seq_len: int = 128, lr: float = 3e-4, seed: int = 0,
                    bits=(None, 8, 4)) -> dict:
    """Full fine-tunes of the shipped model on the same batches of the held-apart corpus with
    fp32 AdamW and AdamW at 8 and 4 bits. Returns ``{"table": {optimizer, state_bytes,
    formula_bytes, ratio_vs_fp32, final_loss}, "curves": {optimizer, step, train_loss}}``;
    ``formula_bytes`` counts the large parameters at :func:`state_bytes_per_param` and the
    small ones (biases, LayerNorms: fp32 moments) at 8 bytes."""
    corpus = held_apart_corpus()
    rows, curves = [], []
    for b in bits:
        model = load_model(preset, "auto")
        factory = None if b is None else (lambda m, lr_, b=b: make_lowbit_optimizer(m, lr_, bits=b))
        opts = []

        def build(m, lr_, factory=factory, opts=opts):
            o = make_optimizer(m, lr_) if factory is None else factory(m, lr_)
            opts.append(o)
            return o

        run = run_training(model, corpus, steps=steps, batch_size=batch_size, seq_len=seq_len,
                           lr=lr, schedule="constant", seed=seed, progress=False,
                           optimizer=build)
        opt = opts[0]
        label = "fp32" if b is None else f"{b}-bit"
        state = sum(v.numel() * v.element_size() for st in opt.state.values()
                    for k, v in st.items() if isinstance(v, torch.Tensor) and k != "step")
        formula = 0
        for p in model.parameters():
            small = b is None or not opt.quantized(p)
            formula += p.numel() * (8 if small else state_bytes_per_param(b))
        rows.append({"optimizer": label, "state_bytes": state, "formula_bytes": int(formula),
                     "all_state_bytes": optimizer_state_bytes(opt),
                     "final_loss": sum(r["train_loss"] for r in run.rows[-5:]) / min(5, steps)})
        curves += [{"optimizer": label, "step": r["step"], "train_loss": r["train_loss"]}
                   for r in run.rows]
    table = pd.DataFrame(rows)
    table["ratio_vs_fp32"] = table.state_bytes / float(table.state_bytes.iloc[0])
    return {"table": table, "curves": pd.DataFrame(curves)}


# ----------------------------------------------------------------------------- accumulation

def accumulated_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int
                          ) -> dict[str, torch.Tensor]:
    """Gradients of the mean loss over the batch, computed as ``k`` micro-batches: each
    micro-batch's loss scaled by its share of the batch, gradients summed by autograd."""
    B = x.size(0)
    if k < 1 or B % k:
        raise ValueError(f"k={k}: expected a divisor of the batch size {B}")
    model.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(k), y.chunk(k)):
        _, loss = model(xs, ys)
        (loss * xs.size(0) / B).backward()  # the mean over B, not a mean of means times k
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def accumulation_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ks=(1, 2, 4, 8)
                       ) -> pd.DataFrame:
    """Per k: the largest relative difference (‖g_k - g_1‖ / ‖g_1‖ over all gradients) between
    k accumulated micro-batches and the one big batch."""
    ref = accumulated_gradients(model, x, y, 1)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in ref.values()))
    rows = []
    for k in ks:
        g = accumulated_gradients(model, x, y, k)
        diff = math.sqrt(sum(float((g[n].double() - ref[n].double()).pow(2).sum()) for n in ref))
        rows.append({"k": k, "micro_batch": x.size(0) // k, "rel_diff": diff / norm})
    return pd.DataFrame(rows)


def _accumulation_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, k: int):
    """One full-fine-tune step of the batch ``x`` (B, T) as ``k`` micro-batches of B/k: each
    micro-batch's loss scaled by its share of the batch, one optimizer step."""
    B = x.size(0)

    def step():
        for xs, ys in zip(x.chunk(k), y.chunk(k)):  # (B/k, T) each
            _, loss = model(xs, ys)
            (loss * xs.size(0) / B).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_peak(preset: str, micro_batch: int, seq_len: int, k: int = 1, *, corpus=None,
              seed: int = 0) -> dict:
    """The tracked peak of one full-fine-tune step (AdamW fp32, the shipped ``preset`` model
    built fresh) of ``k`` micro-batches of ``micro_batch`` sequences of ``seq_len`` tokens, after
    one untracked step (so AdamW's state exists). ``measure_memory``'s report."""
    corpus = corpus or held_apart_corpus()
    x, y = training_batch(corpus, k * micro_batch, seq_len, seed)  # (k·b, T) each
    model = load_model(preset, "auto")
    opt = make_optimizer(model)
    step = _accumulation_step(model, opt, x, y, k)
    step()
    return measure_memory(step, model, opt, inputs=(x, y))


def accumulation_memory(preset: str = "cpu-small", batch_size: int = 16, seq_len: int = 128,
                        ks=(1, 2, 4, 8), seed: int = 0) -> pd.DataFrame:
    """Per k: the peak bytes of one full-fine-tune step of ``batch_size`` sequences made of k
    micro-batches, and its activation high-water mark (tracked, AdamW fp32)."""
    corpus = held_apart_corpus()
    rows = []
    for k in ks:
        if k < 1 or batch_size % k:
            raise ValueError(f"ks: k={k} is not a divisor of batch_size={batch_size}")
        rep = step_peak(preset, batch_size // k, seq_len, k, corpus=corpus, seed=seed)
        rows.append({"k": k, "micro_batch": batch_size // k, "peak_bytes": rep["peak_bytes"],
                     "activations": rep["max_by_category"]["activations"]})
    return pd.DataFrame(rows)


def accumulation_budget(mem: pd.DataFrame) -> int:
    """The lesson's budget from this machine's numbers: halfway between the peak of the batch in
    one piece (``mem``'s first row, k = 1) and the smallest peak over k (``accumulation_memory``)."""
    return int((mem.peak_bytes.iloc[0] + mem.peak_bytes.min()) / 2)


def _line(points: dict[int, int]) -> tuple[float, float]:
    """(fixed, per_seq): peak ≈ fixed + per_seq · batch, least squares through {batch: peak}."""
    import numpy as np

    b = np.array(sorted(points), dtype=float)
    per_seq, fixed = np.polyfit(b, [float(points[int(v)]) for v in b], 1)
    return float(fixed), float(per_seq)


def _edge(fixed: float, per_seq: float, budget: int) -> int:
    """The largest whole batch the line ``fixed + per_seq · b`` keeps within ``budget``."""
    if per_seq <= 0:
        return 1 << 30
    return int(math.floor((budget - fixed) / per_seq + 1e-9))  # 1e-9: the fit's rounding


def _bracket(points: dict[int, int], budget: int) -> tuple[int, int | None]:
    """(largest batch measured within the budget, or 0; smallest above it measured over, or None)."""
    lo = max((b for b, p in points.items() if p <= budget), default=0)
    hi = min((b for b, p in points.items() if p > budget and b > lo), default=None)
    return lo, hi


def _next_batch(points: dict[int, int], budget: int, slope: float, limit: int) -> int:
    """The next batch to measure: a secant through the two measurements nearest the edge (inside
    the bracket so far); with one measurement on the only side known, a line of ``slope``
    through it; at most doubling while nothing is over the budget yet."""
    lo, hi = _bracket(points, budget)
    if lo and hi is not None:
        near = {lo: points[lo], hi: points[hi]}
    elif hi is None:
        near = {b: points[b] for b in sorted(points)[-2:]}
    else:
        near = {b: points[b] for b in sorted(points)[:2]}
    if len(near) == 2 and len({*near.values()}) == 2:
        fixed, per_seq = _line(near)
    else:
        (b0, p0), = list(near.items())[:1]
        fixed, per_seq = p0 - slope * b0, slope
    upper = hi - 1 if hi is not None else min(limit, max(2 * lo, lo + 1))
    return min(max(_edge(fixed, per_seq, budget), lo + 1), upper)


def _search(peak_of, budget: int, start: int, slope: float, points: dict[int, int],
            limit: int, left) -> tuple[dict[int, int], bool]:
    """Measure ``start``, then walk (:func:`_next_batch`) until batch b is measured within the
    budget and b + 1 over it (or b = ``limit``, or batch 1 is over: nothing fits). ``left()``
    says how many measurements remain. Returns (every measured point, whether the bound was hit)."""
    b = min(max(start, 1), limit)
    while True:
        lo, hi = _bracket(points, budget)
        if (hi is not None and hi == lo + 1) or (hi is None and lo >= limit):
            return points, False
        if b in points:
            b = _next_batch(points, budget, slope, limit)
        if left() <= 0:
            return points, True
        points[b] = peak_of(b)


def largest_batch_under_budget(preset: str, budget_bytes: int, *, seq_len: int = 128,
                               ks=(1, 2, 4, 8), fit_batches=(1, 2), max_measurements: int = 16,
                               limit: int = 4096, seed: int = 0) -> pd.DataFrame:
    """The largest batch whose full-fine-tune step (AdamW fp32, :func:`step_peak`) peaks within
    ``budget_bytes``, found by measurement, without and with gradient accumulation.

    1. Measure one-piece steps at ``fit_batches`` (batch 1 always: a budget below it is refused)
       and fit a line (peak ≈ fixed + per_seq · b): its largest b under the budget is the
       *prediction*.
    2. Measure the predicted batch, then walk — its neighbour (+1) when it fits, each further step
       a secant through the two measurements nearest the edge — until batch b is measured within
       the budget and b + 1 over it. The peak is only piecewise linear (at small batches the
       optimizer step peaks, at larger ones the end of forward), so the line can be off.
    3. Accumulation: k micro-batches, measured at the largest k in ``ks``, starting from that b.
       The first micro-batches' gradients stay alive while the next one runs forward, so this
       peak can exceed one batch of b; the same walk finds the largest micro-batch that fits at
       k_max, confirmed the same way. Smaller k reuse that measurement (the same micro-batch,
       fewer input tokens held): ``source`` says "predicted". One batch of that micro-batch is
       measured too, to compare the two peaks.

    At most ``max_measurements`` tracked steps in all; where the bound is hit first the frame's
    ``attrs["bound_hit"]`` is True and the edge stays unconfirmed (``attrs["confirmed"]``).

    Returns a long frame {method ("one batch" | "line" | "accumulation"), k, micro_batch,
    effective_batch, peak_bytes, line_bytes, budget_bytes, fits, source ("measured" |
    "predicted"), role ("largest" | "over budget" | "fit point" | "prediction" | "walk")};
    ``attrs``: fixed_bytes, per_seq_bytes, prediction, largest, largest_accumulated, confirmed,
    confirmed_accumulated, measurements, max_measurements, bound_hit, k_max, ks, budget_bytes,
    one_batch_peak (one batch of the accumulated micro-batch), fit_batches.
    """
    budget = int(budget_bytes)
    if budget <= 0:
        raise ValueError(f"budget_bytes={budget_bytes!r}: expected a positive number of bytes")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks={ks!r}: expected positive micro-batch counts")
    fit_batches = sorted({1, *(int(b) for b in fit_batches)})
    if len(fit_batches) < 2 or fit_batches[0] < 1:
        raise ValueError(f"fit_batches={fit_batches!r}: expected at least two batch sizes >= 1")
    if max_measurements < len(fit_batches) + 1:
        raise ValueError(f"max_measurements={max_measurements}: expected at least "
                         f"{len(fit_batches) + 1} (the fit points and one more)")
    corpus = held_apart_corpus()
    count = 0

    def measure(b: int, k: int = 1) -> int:
        nonlocal count
        count += 1
        return int(step_peak(preset, b, seq_len, k, corpus=corpus, seed=seed)["peak_bytes"])

    one = {1: measure(1)}  # one-piece batch -> measured peak
    if one[1] > budget:
        raise ValueError(
            f"budget_bytes={budget:,} ({budget / 2**20:.2f} MiB) is below the smallest step: one "
            f"sequence of {seq_len} tokens peaks at {one[1]:,} bytes ({one[1] / 2**20:.2f} MiB), "
            f"measured; expected budget_bytes >= {one[1]:,}")
    for b in fit_batches[1:]:
        one[b] = measure(b)
    fixed, per_seq = _line(dict(one))
    prediction = max(1, min(limit, _edge(fixed, per_seq, budget)))

    def left() -> int:
        return max_measurements - count

    one, hit_one = _search(measure, budget, prediction, per_seq, one, limit, left)
    lo, hi = _bracket(one, budget)
    confirmed = hi is not None and hi == lo + 1 or (hi is None and lo >= limit)

    k_max, acc, hit_acc, b_acc = ks[-1], {}, False, lo
    if k_max > 1:
        # the slope of one-piece peaks near the edge guides the walk at k_max
        near = {b: one[b] for b in (lo, hi) if b in one} if hi is not None else one
        slope = _line(near)[1] if len(near) >= 2 else per_seq
        acc, hit_acc = _search(lambda b: measure(b, k_max), budget, lo, slope, {}, limit, left)
        b_acc, hi_acc = _bracket(acc, budget)
        confirmed_acc = hi_acc is not None and hi_acc == b_acc + 1
        if b_acc and b_acc not in one and left() > 0:
            one[b_acc] = measure(b_acc)  # one batch of the accumulated micro-batch, to compare
    else:
        confirmed_acc = confirmed

    rows = []

    def row(method, k, b, peak, source, role, line=None):
        rows.append({"method": method, "k": k, "micro_batch": b, "effective_batch": k * b,
                     "peak_bytes": int(peak), "line_bytes": line, "budget_bytes": budget,
                     "fits": bool(peak <= budget), "source": source, "role": role})

    for b in sorted(one):
        role = ("largest" if b == lo else "over budget" if b == hi
                else "fit point" if b in fit_batches else "prediction" if b == prediction
                else "walk")
        row("one batch", 1, b, one[b], "measured", role, fixed + per_seq * b)
    row("line", 1, prediction, round(fixed + per_seq * prediction), "predicted", "prediction",
        fixed + per_seq * prediction)
    hi_acc = _bracket(acc, budget)[1] if acc else None
    for b in sorted(acc):
        row("accumulation", k_max, b, acc[b], "measured",
            "largest" if b == b_acc else "over budget" if b == hi_acc else "walk")
    for k in ks[1:-1]:
        if b_acc:
            row("accumulation", k, b_acc, acc[b_acc], "predicted", "largest")
    df = pd.DataFrame(rows)
    df.attrs.update({"fixed_bytes": fixed, "per_seq_bytes": per_seq, "prediction": prediction,
                     "largest": lo, "largest_accumulated": b_acc, "confirmed": bool(confirmed),
                     "confirmed_accumulated": bool(confirmed_acc), "measurements": count,
                     "max_measurements": max_measurements, "bound_hit": hit_one or hit_acc,
                     "k_max": k_max, "ks": ks, "budget_bytes": budget, "seq_len": seq_len,
                     "one_batch_peak": one.get(b_acc), "fit_batches": fit_batches})
    return df


def largest_batch_verdict(df: pd.DataFrame) -> str:
    """Sentences from :func:`largest_batch_under_budget`'s frame: the line's prediction, the
    measured edge (b within the budget, b + 1 over it), and the effective batch with
    accumulation at its measured peak beside one batch of the same micro-batch."""
    a = df.attrs
    if "largest" not in a:
        raise ValueError("df: expected the frame largest_batch_under_budget returns (its attrs)")
    mib = 2**20
    budget, lo, pred = a["budget_bytes"], a["largest"], a["prediction"]
    one = df[(df.method == "one batch")].set_index("micro_batch").peak_bytes
    out = [f"Under a {budget / mib:.2f} MiB budget, the line through the measured batches "
           f"{', '.join(map(str, a['fit_batches']))} (peak ≈ {a['fixed_bytes'] / mib:.2f} MiB + "
           f"{a['per_seq_bytes'] / mib:.3f} MiB per sequence) predicted a largest batch of {pred}."]
    if a["confirmed"]:
        off = pred - lo
        out.append(f"Measured: batch {lo} peaks at {one[lo] / mib:.2f} MiB (fits), batch {lo + 1} "
                   f"at {one[lo + 1] / mib:.2f} MiB (over): the largest batch in one piece is "
                   f"{lo}, confirmed in {a['measurements']} tracked steps — the prediction was "
                   + ("right." if off == 0 else f"{abs(off)} {'too high' if off > 0 else 'too low'}."))
    else:
        out.append(f"Measured: batch {lo} fits at {one[lo] / mib:.2f} MiB, but the bound of "
                   f"{a['max_measurements']} tracked steps was hit before batch {lo + 1} was "
                   "measured over the budget: the edge is NOT confirmed.")
    k, b = a["k_max"], a["largest_accumulated"]
    if k > 1:
        acc = df[(df.method == "accumulation") & (df.k == k)].set_index("micro_batch").peak_bytes
        if not b:
            return " ".join(out + [f"With accumulation at k = {k}, not even micro-batches of 1 fit: "
                                   f"they peak at {acc[1] / mib:.2f} MiB, measured."])
        ks = [kk for kk in a["ks"] if kk > 1]
        edge = (f"{k} micro-batches of {b + 1} measured over it"
                if a["confirmed_accumulated"] else "the next micro-batch NOT measured (bound hit)")
        cmp = ""
        same = a["one_batch_peak"]
        if same is not None:
            d = int(acc[b]) - int(same)
            cmp = (f"; one batch of {b} peaks at {same / mib:.2f} MiB, " + (
                f"the same to {d:+,} bytes ({d / same:+.3%}: the batch's extra input tokens)"
                if abs(d) <= 0.005 * same else
                f"so the accumulated step holds {d / mib:+.3f} MiB ({d / same:+.1%}) more — the "
                "gradients of the first micro-batches stay alive while the next one runs "
                "forward"))
        out.append(f"With accumulation: {k} micro-batches of {b} peak at {acc[b] / mib:.2f} MiB, "
                   f"measured (fits; {edge}){cmp}. The largest effective batch under the budget "
                   f"is k·{b}: " + ", ".join(f"{kk * b} for k = {kk}" for kk in ks)
                   + (f" (k < {k} predicted from the k = {k} step: the same micro-batch, fewer "
                      "input tokens held)." if len(ks) > 1 else "."))
    return " ".join(out)


def accumulation_verdict(check: pd.DataFrame, mem: pd.DataFrame,
                         largest: pd.DataFrame | None = None) -> str:
    """The worst gradient difference over the k tried; under :func:`accumulation_budget`, which
    k fit (k = 1 refused with its need); then :func:`largest_batch_verdict` of ``largest``
    (:func:`largest_batch_under_budget` at that budget) when given — the largest batch is only
    ever stated measured, never read off a line."""
    worst = float(check.rel_diff.max())
    first = mem.iloc[0]
    budget = accumulation_budget(mem)
    fits = mem[mem.peak_bytes <= budget]
    head = (f"k micro-batches vs one batch: gradients within {worst:.1e} relative "
            f"({'within' if worst <= 1e-6 else 'OUTSIDE'} 1e-6) for k in {list(check.k)}.")
    if len(mem) < 2 or fits.empty or budget >= first.peak_bytes:
        return head + " (Only one k measured or no saving: no budget to compare under.)"
    best = fits.iloc[0]
    tail = (" " + largest_batch_verdict(largest) if largest is not None else
            " The largest batch under this budget, with and without accumulation, is measured "
            "by largest_batch_under_budget.")
    return (head + f" Under a {budget / 2**20:.2f} MiB budget, the batch of "
            f"{int(first.micro_batch)} in one piece (peak {first.peak_bytes / 2**20:.2f} MiB) does "
            f"not fit; as {int(best.k)} micro-batches of {int(best.micro_batch)} it fits at "
            f"{best.peak_bytes / 2**20:.2f} MiB, the same gradient for {int(best.k)}x the "
            "forward/backward calls." + tail)


__all__ = ["METHODS", "held_apart_corpus", "prepare_method", "memory_by_rank", "memory_verdict",
           "formula_error",
           "finetune_compare", "merge_check", "nf4_table", "nf4_verdict", "optimizer_table",
           "training_batch", "accumulated_gradients", "accumulation_check", "accumulation_memory",
           "accumulation_budget", "accumulation_verdict", "step_peak",
           "largest_batch_under_budget", "largest_batch_verdict", "lora_param_count"]
