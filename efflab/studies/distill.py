"""Knowledge distillation: a small student learns from a trained teacher's whole distribution.

The hard loss tells the student only which byte came next. The teacher's softened distribution
``softmax(z_t / τ)`` also says which *other* bytes were plausible — "dark knowledge" (Hinton,
Vinyals & Dean 2015). The student minimises (:func:`distillation_loss`)::

    L = α · τ² · KL( softmax(z_t/τ) ‖ softmax(z_s/τ) ) + (1 − α) · CE(z_s, y)

The τ² keeps the soft term's gradients the same size as τ changes (they scale as 1/τ²).
:func:`compare_students` trains the same student twice from the same initial weights on the
same batches — once with this loss, once with the hard loss alone — so any gap is the
teacher's doing. The teacher is the shipped ``cpu-small`` checkpoint by default.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.data import load_corpus
from efflab.core.model import GPT, build_model
from efflab.measurement.training import run_training
from efflab.measurement.workloads import heldout_quality


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """τ² · KL(p_t ‖ p_s) with p = softmax(logits / τ), averaged over every position.

    logits: (..., V). KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s). Zero exactly when the student's
    softened distribution equals the teacher's.
    """
    if not temperature > 0:
        raise ConfigError("temperature", temperature, "a number > 0")
    V = student_logits.size(-1)
    log_ps = F.log_softmax(student_logits.float().reshape(-1, V) / temperature, dim=-1)  # (N, V)
    log_pt = F.log_softmax(teacher_logits.float().reshape(-1, V) / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)  # mean over N rows
    return kl * temperature ** 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, temperature: float = 2.0,
                      alpha: float = 0.5) -> torch.Tensor:
    """α · soft-target loss at ``temperature`` + (1 − α) · cross-entropy on the true bytes.

    ``alpha = 0`` is the hard loss alone; ``alpha = 1`` learns from the teacher alone.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError("alpha", alpha, "a number in [0, 1]")
    V = student_logits.size(-1)
    hard = F.cross_entropy(student_logits.float().reshape(-1, V), targets.reshape(-1))
    if alpha == 0:
        return hard
    return alpha * soft_target_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * hard


def student_config(teacher: ModelConfig, n_layer: int | None = None,
                   n_embd: int | None = None) -> ModelConfig:
    """A smaller shape than ``teacher``: fewer layers and/or a narrower width (heads of the
    teacher's size), same context and vocabulary."""
    L = n_layer or teacher.n_layer
    C = n_embd or teacher.n_embd
    if L > teacher.n_layer or C > teacher.n_embd or (L, C) == (teacher.n_layer, teacher.n_embd):
        raise ConfigError("student", (L, C), f"smaller than the teacher's ({teacher.n_layer}, "
                                             f"{teacher.n_embd}) in layers or width")
    n_head = max(1, C // teacher.head_dim)
    return ModelConfig(f"{teacher.name}-student-L{L}-d{C}", n_layer=L, n_head=n_head, n_embd=C,
                       block_size=teacher.block_size, vocab_size=teacher.vocab_size)


def init_from_teacher(student: GPT, teacher: GPT) -> GPT:
    """Copy the teacher's embeddings, final norm and evenly spaced blocks into a student of the
    same width and fewer layers (DistilBERT's initialisation). Returns the student."""
    if student.cfg.n_embd != teacher.cfg.n_embd:
        raise ConfigError("init", "teacher", "a student of the teacher's width (it copies blocks)")
    L, Lt = student.cfg.n_layer, teacher.cfg.n_layer
    picks = [round(i * (Lt - 1) / max(L - 1, 1)) for i in range(L)]
    with torch.no_grad():
        student.wte.weight.copy_(teacher.wte.weight)
        student.wpe.weight.copy_(teacher.wpe.weight)
        student.ln_f.load_state_dict(teacher.ln_f.state_dict())
        for i, j in enumerate(picks):
            student.h[i].load_state_dict(teacher.h[j].state_dict())
    return student


def compare_students(teacher: GPT, student_cfg: ModelConfig, steps: int = 300, *,
                     batch_size: int = 16, seq_len: int | None = None, lr: float = 2e-3,
                     temperature: float = 2.0, alpha: float = 0.5, init: str = "random",
                     seed: int = 0, eval_every: int = 50, eval_windows: int = 64,
                     final_windows: int = 512, corpus: str | None = None, device="cpu",
                     on_point: Callable[[dict], None] | None = None,
                     progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train ``student_cfg`` twice — ``distilled`` (the loss above) and ``hard only`` (α = 0) —
    from the same initial weights (``init``: "random" or "teacher" blocks) on the same batches.

    Both run the one training loop (``efflab.measurement.training.run_training``) with the loss
    above in place of the model's own. Returns (curves, final): curves has one row per step per
    variant (variant, step, tokens, seconds of training compute, train_loss, and val_loss every
    ``eval_every`` steps on ``eval_windows`` held-out windows);
    final maps each variant — and "teacher" — to its :func:`heldout_quality` on
    ``final_windows`` windows (the same windows for all three, so they compare pairwise), with
    the trained students under ``final["models"]``.
    """
    if init not in ("random", "teacher"):
        raise ConfigError("init", init, "one of 'random', 'teacher'")
    data = load_corpus(corpus)
    T = seq_len or student_cfg.block_size
    teacher = teacher.to(device).eval()
    rows: list[dict] = []
    final: dict = {"models": {}}
    for variant, a in (("distilled", alpha), ("hard only", 0.0)):
        student = build_model(student_cfg, seed, device)
        if init == "teacher":
            init_from_teacher(student, teacher)

        def loss_fn(model, x, y, a=a):  # x, y: (B, T)
            logits, _ = model(x)  # (B, T, V)
            if a > 0:
                with torch.no_grad():
                    t_logits, _ = teacher(x)
                return distillation_loss(logits, t_logits, y, temperature, a)
            return distillation_loss(logits, logits, y, temperature, 0.0)

        def evaluate(model):
            return {"val_loss": heldout_quality(model, data, T, eval_windows,
                                                device=device)["val_loss"]}

        def on_row(row, variant=variant):
            row = {"variant": variant, **row}
            rows.append(row)
            if on_point is not None:
                on_point(row)

        run_training(student, data, steps=steps, batch_size=batch_size, seq_len=T, lr=lr,
                     warmup=max(1, steps // 20), seed=seed,  # the same batches for both
                     device=device, loss_fn=loss_fn, eval_every=eval_every,
                     evaluate=evaluate if eval_every else None, on_row=on_row,
                     progress=progress, desc=f"student ({variant})", leave=False)
        student.eval()
        final[variant] = heldout_quality(student, data, T, final_windows, device=device)
        final["models"][variant] = student
    final["teacher"] = heldout_quality(teacher, data, T, final_windows, device=device)
    return pd.DataFrame(rows), final


def paired_gap(a: dict, b: dict) -> dict:
    """How much lower ``b``'s held-out loss is than ``a``'s on the same windows: mean of the
    per-window differences (a − b) with its 95% interval (positive = ``b`` better)."""
    import numpy as np

    wa, wb = np.asarray(a["window_losses"]), np.asarray(b["window_losses"])
    if wa.shape != wb.shape or wa.size < 2:
        raise ValueError("both qualities need per-window losses on the same windows")
    d = wa - wb
    half = 1.96 * float(d.std(ddof=1)) / np.sqrt(d.size)
    return {"gap": float(d.mean()), "ci95": half, "windows": int(d.size),
            "significant": bool(abs(d.mean()) > half)}


__all__ = ["soft_target_loss", "distillation_loss", "student_config", "init_from_teacher",
           "compare_students", "paired_gap"]
