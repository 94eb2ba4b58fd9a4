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
