"""The four things a GPT is asked to do, each prepared as a repeatable unit of work.

``prepare(workload, model, corpus, knobs)`` returns a :class:`Prepared`: a ``step()`` closure
the timer calls again and again, how many tokens one step processes, and the tensors the memory
tracker should know by name. Every step works on fixed inputs drawn once from the corpus, so a
timing measures compute, not data loading.

- ``train``: forward, backward, AdamW step (gradients set to None between steps).
- ``eval``: forward with no gradients over a fixed held-out batch; ``eval_loss`` averages the
  loss over a fixed held-out slice (deterministic: same windows every call).
- ``prefill``: forward over a prompt batch that fills a fresh KV cache.
- ``decode``: one new token per sequence against a filled KV cache; cycles back to the prompt
  end when the cache is full, so every step costs the same on average.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from efflab.core.config import Knobs, ModelConfig
from efflab.core.data import Corpus, fixed_batches, random_batch
from efflab.core.model import GPT, KVCache
from efflab.techniques import auxiliary_loss
from efflab.techniques.compile import CompileConfig, compile_optimizer
from efflab.techniques.precision import PrecisionConfig, autocast, grad_scaler

LN2 = math.log(2)


@dataclass
class Prepared:
    """A workload ready to run: ``step()`` does one unit of work on ``tokens_per_step`` tokens."""

    workload: str
    step: Callable[[], None]
    tokens_per_step: int
    unit: str  # what one step is: "step" (train/eval/prefill) or "token" (decode)
    tagged: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # category -> tensors
    optimizer: torch.optim.Optimizer | None = None
    cache: KVCache | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)


def make_optimizer(model: GPT, lr: float = 1e-3, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (not biases, LayerNorms or position vectors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=True)


def optimizer_step(model: GPT, loss: torch.Tensor, opt: torch.optim.Optimizer,
                   scaler=None, clip_norm: float | None = None) -> None:
    """One update from ``loss``: add the techniques' auxiliary losses (MoE load balancing),
    backward (scaled for fp16, so small gradients survive), optional gradient clipping, step,
    and drop the gradients."""
    aux = auxiliary_loss(model)  # None for most models
    if aux is not None:
        loss = loss + aux
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        if clip_norm is not None:
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    opt.zero_grad(set_to_none=True)


def prepare(workload: str, model: GPT, corpus: Corpus, knobs: Knobs, device="cpu") -> Prepared:
    """The workload as a repeatable ``step()`` on fixed inputs, run in ``knobs.precision``.

    The model must already carry the knobs' techniques (``efflab.techniques.apply_techniques``)
    and, for ``knobs.compile``, be compiled already (``apply_(model, CompileConfig(...))``, in
    place); a training step's optimizer update is compiled here, under the same mode.
    """
    cfg: ModelConfig = model.cfg
    T = knobs.resolve_seq_len(cfg)
    B = knobs.batch_size
    g = torch.Generator().manual_seed(knobs.seed)
    prec = PrecisionConfig(knobs.precision)

    def forward(*args, **kwargs):
        with autocast(prec, device):
            return model(*args, **kwargs)

    if workload == "train":
        model.train()
        opt = compile_optimizer(make_optimizer(model), CompileConfig(knobs.compile))
        scaler = grad_scaler(prec, device)
        x, y = random_batch(corpus.train, B, T, g, device)

        def step():
            _, loss = forward(x, y)
            optimizer_step(model, loss, opt, scaler)

        return Prepared("train", step, B * T, "step", optimizer=opt, inputs=[x, y])

    if workload == "eval":
        model.eval()
        x, y = fixed_batches(corpus.val, 1, B, T, device)[0]

        def step():
            with torch.no_grad():
                forward(x, y)

        return Prepared("eval", step, B * T, "step", inputs=[x, y])

    if workload == "prefill":
        model.eval()
        x, _ = random_batch(corpus.val, B, T, g, device)
        p = next(model.parameters())
        cache = KVCache(cfg, B, T, device, p.dtype)

        def step():
            cache.pos = 0
            with torch.no_grad():
                forward(x, cache=cache)

        return Prepared("prefill", step, B * T, "step", tagged={"kv_cache": cache.k + cache.v},
                        cache=cache, inputs=[x])

    if workload == "decode":
        model.eval()
        x, _ = random_batch(corpus.val, B, T, g, device)
        p = next(model.parameters())
        cache = KVCache(cfg, B, T + knobs.gen_tokens, device, p.dtype)
        with torch.no_grad():
            logits, _ = forward(x, cache=cache)
        state = {"next": logits[:, -1:, :].argmax(-1)}  # (B, 1) greedy: deterministic

        def step():
            if cache.pos >= cache.max_len:
                cache.pos = T  # start the generation over from the end of the prompt
            with torch.no_grad():
                logits, _ = forward(state["next"], cache=cache)
            state["next"] = logits[:, -1:, :].argmax(-1)

        return Prepared("decode", step, B, "token", tagged={"kv_cache": cache.k + cache.v},
                        cache=cache, inputs=[x])

    raise ValueError(f"workload={workload!r} is not one of 'train', 'eval', 'prefill', 'decode'")


QUALITY_WINDOWS = 512  # held-out windows a model's quality is measured on (heldout_quality)


@torch.no_grad()
def window_losses(model: GPT, corpus: Corpus, seq_len: int, windows: int, batch_size: int = 16,
                  device="cpu") -> np.ndarray:
    """Mean next-byte loss of each of ``windows`` fixed held-out windows of ``seq_len`` bytes:
    (windows,) float64. The windows are evenly spaced over the whole held-out split (many
    files), the same on every call, so two models are compared window by window."""
    was_training = model.training
    model.eval()
    n_batches = -(-windows // batch_size)
    out = []
    for x, y in fixed_batches(corpus.val, n_batches, batch_size, seq_len, device):
        logits, _ = model(x)  # (B, T, V)
        per_byte = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
        out.append(per_byte.mean(dim=1).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()[:windows]


def summarize_windows(losses: np.ndarray, seq_len: int) -> dict:
    """Held-out loss with its 95% interval from per-window losses (windows spread over many
    files are treated as independent), in nats and bits per byte."""
    n = losses.size
    mean = float(losses.mean())
    half = 1.96 * float(losses.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return {"val_loss": mean, "val_loss_ci95": half, "bits_per_byte": mean / LN2,
            "bits_per_byte_ci95": half / LN2, "eval_tokens": n * seq_len, "windows": n,
            "seq_len": seq_len}


def heldout_quality(model: GPT, corpus: Corpus, seq_len: int,
                    windows: int = QUALITY_WINDOWS, device="cpu") -> dict:
    """A model's held-out quality: :func:`summarize_windows` plus the per-window losses
    (``window_losses``), which let two models be compared pairwise on the same windows — far
    tighter than two unpaired intervals (see ``efflab.studies.analysis.quality_difference``)."""
    losses = window_losses(model, corpus, seq_len, windows, device=device)
    return {**summarize_windows(losses, seq_len),
            "window_losses": [round(float(v), 6) for v in losses]}


def eval_loss(model: GPT, corpus: Corpus, seq_len: int | None = None, batch_size: int = 8,
              n_batches: int = 8, device="cpu") -> dict:
    """Mean next-byte cross-entropy over a fixed held-out slice of ``n_batches × batch_size``
    windows, with its 95% interval, and bits per byte.

    Bits per byte = loss / ln 2: how many bits the model needs, on average, to encode each
    byte of unseen text (8 would be no better than uniform over 256 bytes).
    """
    T = seq_len or model.cfg.block_size
    n_batches = max(1, min(n_batches, (corpus.val.size - 1) // max(1, batch_size * T)))
    losses = window_losses(model, corpus, T, n_batches * batch_size, batch_size, device)
    return summarize_windows(losses, T)
