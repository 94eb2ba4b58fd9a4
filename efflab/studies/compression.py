"""The "5x cheaper at 98% of the quality" claim, tested: combine distillation, pruning and
quantization, measure every combination, and read the frontier.

Quality of a candidate = teacher's bits/byte ÷ candidate's bits/byte (1.0 = as good as the
teacher; 0.98 = 2% more bits per byte). Both are measured on the same held-out windows, so the
ratio's 95% interval comes from a paired bootstrap over those windows (:func:`quality_ratio`).
Cost is measured two ways, each against the teacher (:func:`measure_candidate`):

- **speed**: decode tokens/s at batch 1 (median of repeated single-token steps with a KV cache,
  with p25/p75 and n) — ``speedup`` = candidate ÷ teacher;
- **size**: bytes of weights as stored (packed int4 counts packed) — ``shrink`` = teacher ÷
  candidate.

A candidate (:class:`Recipe`) is a base model (the teacher, or a distilled student), optionally
structurally pruned and fine-tuned, optionally quantized. :func:`claim` finds the cheapest
candidate that keeps >= 98% and says whether the 5x is reached, on which cost, and how far off.
Timings on a shared host are provisional: every row keeps the load average.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch.nn as nn

from efflab.core.config import ConfigError, Knobs, check_choice, check_int
from efflab.measurement.hardware import load_average
from efflab.measurement.timing import summarize, time_steps
from efflab.measurement.training import run_training
from efflab.measurement.workloads import heldout_quality, prepare
from efflab.studies.analysis import pareto_front
from efflab.techniques import apply_
from efflab.techniques.pruning import PruningConfig, enforce_masks
from efflab.techniques.quantization import QuantizationConfig, check_fits, model_bytes
from efflab.techniques.surgery import block_linears

QUALITY_FLOOR = 0.98
TARGET_RATIO = 5.0


# ----------------------------------------------------------------------------- fine-tuning

def finetune(model: nn.Module, corpus, steps: int, *, batch_size: int = 16,
             seq_len: int | None = None, lr: float = 3e-4, seed: int = 0, device="cpu",
             eval_every: int = 0, evaluate: Callable[[nn.Module], float] | None = None,
             on_point: Callable[[dict], None] | None = None) -> list[dict]:
    """A short fine-tune after pruning: AdamW at a small constant ``lr`` on training batches,
    pruned weights held at zero (the one loop, ``run_training``, with a constant schedule).
    Returns rows {step, tokens, seconds, train_loss[, val_loss]};
    ``evaluate(model) -> loss`` is called every ``eval_every`` steps and at the end."""
    T = seq_len or model.cfg.block_size
    score = None if evaluate is None else (lambda m: {"val_loss": float(evaluate(m))})
    run = run_training(model, corpus, steps=steps, batch_size=batch_size, seq_len=T, lr=lr,
                       schedule="constant", seed=seed, device=device, after_step=enforce_masks,
                       eval_every=eval_every, evaluate=score, on_row=on_point, progress=False)
    rows = run.rows
    model.eval()
    return rows



@dataclass(frozen=True)
class Recipe:
    """One candidate: ``base`` ("teacher" or "student"), then structured pruning (``prune``,
    None = none) with ``finetune_steps`` of recovery, then ``quant`` (None = fp32)."""

    label: str
    base: str = "teacher"
    prune: PruningConfig | None = None
    finetune_steps: int = 0
    quant: QuantizationConfig | None = None

    def __post_init__(self):
        check_choice("base", self.base, ("teacher", "student"))
        check_int("finetune_steps", self.finetune_steps, lo=0)

    def parts(self) -> dict:
        return {"base": self.base,
                "prune": "none" if self.prune is None else
                (f"{self.prune.method} s={self.prune.sparsity:g}"
                 + (f" heads-{self.prune.heads}" if self.prune.heads else "")),
                "finetune_steps": self.finetune_steps,
                "quant": "fp32" if self.quant is None else
                (self.quant.mode + (f" g{self.quant.group_size}"
                                    if self.quant.mode == "int4-weight" else ""))}


def build_candidate(recipe: Recipe, bases: dict[str, nn.Module], corpus, *, batch_size: int = 16,
                    lr: float = 3e-4, seed: int = 0) -> nn.Module:
    """A fresh copy of ``bases[recipe.base]`` with the recipe's pruning, fine-tune and
    quantization applied (int4's group size is lowered to one that divides every pruned
    layer's inputs when needed)."""
    model = copy.deepcopy(bases[recipe.base]).eval()
    if recipe.prune is not None:
        apply_(model, recipe.prune)
        if recipe.finetune_steps:
            finetune(model, corpus, recipe.finetune_steps, batch_size=batch_size, lr=lr,
                     seed=seed)
    if recipe.quant is not None and recipe.quant.mode != "none":
        q = recipe.quant
        for g in sorted({q.group_size, 64, 32}, reverse=True):
            try:
                check_fits(model, QuantizationConfig(q.mode, g))
                q = QuantizationConfig(q.mode, g)
                break
            except ConfigError:
                continue
        apply_(model, q)
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored: parameters and buffers (packed int4 counted packed, the
    tied table once), without pruning masks — a deployed model would not carry them."""
    masks = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                if n.endswith(".mask"))
    return model_bytes(model) - masks


def decode_speed(model: nn.Module, corpus, gen_tokens: int = 32, target_s: float = 0.5,
                 seed: int = 0) -> dict:
    """Decode tokens/s at batch 1 (one token per step against a filled KV cache): median with
    p25/p75 (of tokens/s, from the step times) and the sample count."""
    knobs = Knobs(batch_size=1, workload="decode", gen_tokens=gen_tokens, seed=seed)
    prep = prepare("decode", model, corpus, knobs)
    t = summarize(time_steps(prep.step, target_s=target_s))
    return {"tokens_per_s": 1e3 / t["median"], "tokens_per_s_p25": 1e3 / t["p75"],
            "tokens_per_s_p75": 1e3 / t["p25"], "ms_per_token": t["median"], "n": t["n"],
            "noisy": t["noisy"]}


def quality_ratio(teacher_q: dict, cand_q: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """teacher bits/byte ÷ candidate bits/byte, with a 95% interval from a paired bootstrap
    over the shared held-out windows (same windows resampled for both)."""
    wt, wc = np.asarray(teacher_q["window_losses"]), np.asarray(cand_q["window_losses"])
    if wt.shape != wc.shape or wt.size < 2:
        raise ValueError("teacher and candidate need per-window losses on the same windows")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, wt.size, (n_boot, wt.size))
    boot = wt[pick].mean(1) / wc[pick].mean(1)
    return {"quality": float(wt.mean() / wc.mean()), "quality_lo": float(np.percentile(boot, 2.5)),
            "quality_hi": float(np.percentile(boot, 97.5))}


def measure_candidate(label: str, model: nn.Module, corpus, teacher_row: dict | None = None, *,
                      windows: int = 512, seq_len: int | None = None,
                      target_s: float = 0.5, parts: dict | None = None) -> dict:
    """One frontier row: bits/byte (with its interval and per-window losses), weight bytes,
    decode tokens/s at batch 1 — and, given the teacher's row, quality, speedup and shrink."""
    T = seq_len or model.cfg.block_size
    q = heldout_quality(model, corpus, T, windows)
    row = {"label": label, **(parts or {}), "bits_per_byte": q["bits_per_byte"],
           "bits_per_byte_ci95": q["bits_per_byte_ci95"], "window_losses": q["window_losses"],
           "weight_bytes": weight_bytes(model), **decode_speed(model, corpus, target_s=target_s),
           "params": sum(p.numel() for p in model.parameters()),
           "loadavg": load_average()}
    if teacher_row is not None:
        row.update(quality_ratio({"window_losses": teacher_row["window_losses"]}, q))
        row["speedup"] = row["tokens_per_s"] / teacher_row["tokens_per_s"]
        row["shrink"] = teacher_row["weight_bytes"] / row["weight_bytes"]
    else:
        row.update({"quality": 1.0, "quality_lo": 1.0, "quality_hi": 1.0, "speedup": 1.0,
                    "shrink": 1.0})
    return row


def evaluate_recipes(recipes: list[Recipe], bases: dict[str, nn.Module], corpus, *,
                     windows: int = 512, target_s: float = 0.5, finetune_batch: int = 16,
                     on_point=None) -> pd.DataFrame:
    """Measure the teacher, then every recipe against it; one row each (see
    :func:`measure_candidate`). ``on_point(row)`` after each (a live chart's hook)."""
    teacher = measure_candidate("teacher", bases["teacher"], corpus, windows=windows,
                                target_s=target_s, parts=Recipe("teacher").parts())
    rows = [teacher]
    if on_point:
        on_point(teacher)
    for r in recipes:
        model = build_candidate(r, bases, corpus, batch_size=finetune_batch)
        row = measure_candidate(r.label, model, corpus, teacher, windows=windows,
                                target_s=target_s, parts=r.parts())
        rows.append(row)
        if on_point:
            on_point(row)
    return pd.DataFrame(rows)


def matmul_flops_per_token(model: nn.Module) -> int:
    """2 FLOPs per weight of every Linear a token passes through (blocks + output head): the
    decode step's matmul work, zeros included — a dense kernel multiplies them too."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return 2 * n


def sparsity_sweep(model: nn.Module, corpus, configs: list[PruningConfig], *,
                   windows: int = 256, target_s: float = 0.3, finetune_steps: int = 0,
                   finetune_batch: int = 16, on_point=None) -> pd.DataFrame:
    """Prune a copy of ``model`` with each config and measure it: one row per config with
    method, sparsity (fraction of block weights gone), bits/byte (95% interval), decode tokens/s
    at batch 1 (p25/p75, n), weight bytes, and ``theory_tokens_per_s`` — the dense model's
    speed scaled by its matmul FLOPs over the pruned model's (zeros in a dense layout are still
    multiplied, so only structured pruning moves it). With ``finetune_steps`` each pruned model
    is also fine-tuned and measured again (``finetuned`` True)."""
    dense_w = sum(m.weight.numel() for _, m in block_linears(model))
    dense_flops = matmul_flops_per_token(model)
    rows, dense_speed = [], None
    for cfg in configs:
        m = apply_(copy.deepcopy(model).eval(), cfg)
        zeros = sum(int((mod.weight == 0).sum()) for _, mod in block_linears(m))
        kept = sum(mod.weight.numel() for _, mod in block_linears(m))
        sparsity = 1 - (kept - zeros) / dense_w
        method = ("dense" if cfg.method == "none" or (cfg.method != "2:4" and cfg.sparsity == 0
                                                     and not cfg.heads)
                  else f"unstructured-{cfg.scope}" if cfg.method == "unstructured"
                  else "structured+heads" if cfg.heads else cfg.method)
        stages = [False] + ([True] if finetune_steps and method != "dense" else [])
        for tuned in stages:  # measured as pruned, then again after the fine-tune
            if tuned:
                finetune(m, corpus, finetune_steps, batch_size=finetune_batch)
            q = heldout_quality(m, corpus, m.cfg.block_size, windows)
            speed = decode_speed(m, corpus, target_s=target_s)
            if dense_speed is None and method == "dense":
                dense_speed = speed["tokens_per_s"]
            theory = (None if dense_speed is None
                      else dense_speed * dense_flops / matmul_flops_per_token(m))
            row = {"method": method, "sparsity": round(sparsity, 4), "finetuned": tuned,
                   "heads_removed": cfg.heads, "bits_per_byte": q["bits_per_byte"],
                   "bits_per_byte_ci95": q["bits_per_byte_ci95"],
                   "weight_bytes": weight_bytes(m), **speed, "theory_tokens_per_s": theory,
                   "loadavg": load_average()}
            rows.append(row)
            if on_point:
                on_point(row)
    return pd.DataFrame(rows)


def frontier(df: pd.DataFrame, cost: str = "speedup") -> pd.DataFrame:
    """The candidates no other beats on both cost and quality. ``cost`` is "speedup" or
    "shrink" (higher = cheaper)."""
    t = df.assign(_cost=1.0 / df[cost], _bad=-df["quality"])
    return pareto_front(t, "_cost", "_bad").drop(columns=["_cost", "_bad"])


def claim(df: pd.DataFrame, cost: str = "speedup", floor: float = QUALITY_FLOOR,
          target: float = TARGET_RATIO) -> dict:
    """The cheapest candidate keeping >= ``floor`` of the teacher's quality, and whether it is
    ``target``x cheaper. ``kept`` uses the point estimate; ``kept_surely`` asks the interval's
    lower end to clear the floor too. Returns the row's label, ratio, and one plain sentence."""
    ok = df[(df["quality"] >= floor) & (df["label"] != "teacher")]
    sure = ok[ok["quality_lo"] >= floor]
    what = {"speedup": "decode tokens/s at batch 1", "shrink": "bytes of weights"}[cost]
    what_ratio = {"speedup": "decodes {:.2f}x as fast as the teacher",
                  "shrink": "stores {:.2f}x fewer weight bytes than the teacher"}
    if ok.empty:
        return {"met": False, "best": None, "ratio": 1.0,
                "verdict": f"No candidate keeps {floor:.0%} of the teacher's quality; the "
                           f"claim is not reached on {what}."}
    best = ok.loc[ok[cost].idxmax()]
    ratio = float(best[cost])
    met = ratio >= target
    surely = not sure.empty and float(sure[cost].max()) >= target
    verdict = (f"On {what}: the cheapest candidate keeping >= {floor:.0%} is "
               f"'{best['label']}', which {what_ratio[cost].format(ratio)} at quality "
               f"{best['quality']:.3f} (95% {best['quality_lo']:.3f}-{best['quality_hi']:.3f}). "
               + (f"{target:g}x at {floor:.0%} is reached"
                  + ("" if surely else " (but the interval's lower end dips below the floor)")
                  if met else f"{target:g}x at {floor:.0%} is NOT reached: "
                              f"{target / ratio:.1f}x short ({ratio:.2f}x of {target:g}x)") + ".")
    return {"met": bool(met), "met_surely": bool(surely), "best": str(best["label"]),
            "ratio": ratio, "quality": float(best["quality"]), "verdict": verdict}


__all__ = ["QUALITY_FLOOR", "TARGET_RATIO", "Recipe", "build_candidate", "decode_speed",
           "matmul_flops_per_token", "sparsity_sweep", "weight_bytes",
           "quality_ratio", "measure_candidate", "evaluate_recipes", "frontier", "claim"]
