"""The attention technique: choose how every ``block.attn.core`` computes causal attention.

    from efflab.techniques import AttentionConfig, apply_
    apply_(model, AttentionConfig(impl="triton"))
    print(model)  # ... (core): TritonCore(impl='triton', ...)

Four implementations of the same function, softmax(q kᵀ / √hs) v with a causal mask:

- ``naive``: plain torch ops that build the whole (T, S) score matrix
  (:func:`efflab.kernels.flash_attention.naive_attention`); memory grows as T·S.
- ``blocked``: the naive ops, one block of 64 query rows at a time, each block against only
  the keys its last row may see (:func:`blocked_attention`): the key blocks above the causal
  diagonal, all −∞ in the full matrix, are never computed — FlashAttention's skip, in plain
  torch. At T = S = 128 that is 3/4 of naive's score FLOPs and bytes.
- ``sdpa``: PyTorch's fused ``scaled_dot_product_attention`` (the model's default core).
- ``triton``: efflab's own FlashAttention kernel
  (:func:`efflab.kernels.flash_attention.flash_attention`); on a CPU it runs in Triton's
  interpreter — correct, but for correctness only, never fast.

:func:`attention_memory_bytes` is the theory the lesson draws beside the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from efflab.core.config import ATTENTIONS, Attention, ConfigError, check_choice, check_int
from efflab.core.model import SDPACore as _ModelSDPACore
from efflab.kernels.flash_attention import (
    INTERPRETED,
    TRITON_AVAILABLE,
    flash_attention,
    naive_attention,
)
from efflab.techniques.registry import register


@dataclass(frozen=True)
class AttentionConfig:
    """Which attention every layer uses: ``"naive"``, ``"blocked"``, ``"sdpa"`` (default) or
    ``"triton"``.

    Validated on construction: an unknown impl, or ``"triton"`` where triton is not
    installed, raises :class:`efflab.core.config.ConfigError` naming the field.
    """

    impl: Attention = "sdpa"

    def __post_init__(self):
        check_choice("impl", self.impl, ATTENTIONS)
        if self.impl == "triton" and not TRITON_AVAILABLE:
            raise ConfigError("impl", self.impl,
                              "'naive', 'blocked' or 'sdpa' here: triton is not installed")


BLOCK_ROWS = 64
"""Query rows per block of :func:`blocked_attention`: a multiple of the 8 floats an AVX2
register holds, and half of cpu-small's 128-token context (at 32 rows the step measured no
faster there, with twice the operators)."""


def causal_query_blocks(T: int, S: int, block: int = BLOCK_ROWS) -> list[tuple[int, int, int]]:
    """``(first, end, keys)`` for each block of ``block`` query rows, in order.

    Queries are the last T of S positions, so rows ``first .. end-1`` (absolute positions
    ``S - T + first ..``) see keys ``0 .. keys-1`` with ``keys = S - T + end``; the keys after
    that are masked for every row of the block, so the block never computes them."""
    return [(a, min(a + block, T), S - T + min(a + block, T)) for a in range(0, T, block)]


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      block: int = BLOCK_ROWS) -> torch.Tensor:
    """Causal attention as :func:`naive_attention` per block of query rows, each against only
    the keys it may see (:func:`causal_query_blocks`); the same function as naive, to rounding.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs) with S >= T. Returns (B, nh, T, hs). The slices are
    views (no copies); each block keeps its own (B, nh, rows, keys) probabilities for backward.
    """
    T, S = q.size(-2), k.size(-2)
    outs = [naive_attention(q[:, :, a:e], k[:, :, :keys], v[:, :, :keys])  # (B, nh, e - a, hs)
            for a, e, keys in causal_query_blocks(T, S, block)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (B, nh, T, hs)


class NaiveCore(nn.Module):
    """Attention from plain torch ops; keeps the (B, nh, T, S) probabilities for backward."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, nh, T, hs)   k, v: (B, nh, S, hs)  ->  (B, nh, T, hs)
        return naive_attention(q, k, v)

    def extra_repr(self) -> str:
        return "impl='naive', materialises the (T, S) scores: O(T·S) memory"


class BlockedCore(nn.Module):
    """Naive attention per block of query rows, skipping the masked key blocks."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, nh, T, hs)   k, v: (B, nh, S, hs)  ->  (B, nh, T, hs)
        return blocked_attention(q, k, v)

    def extra_repr(self) -> str:
        return (f"impl='blocked', naive per {BLOCK_ROWS} query rows, masked key blocks skipped: "
                f"O(T·S) memory, about half of naive's at long T")


class SDPACore(_ModelSDPACore):
    """The model's own :class:`efflab.core.model.SDPACore`, made to say what it is in ``print``."""

    def extra_repr(self) -> str:
        return "impl='sdpa', torch scaled_dot_product_attention: fused, O(T) memory"


class TritonCore(nn.Module):
    """efflab's FlashAttention Triton kernel, forward and backward."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, nh, T, hs)   k, v: (B, nh, S, hs)  ->  (B, nh, T, hs)
        return flash_attention(q, k, v)

    def extra_repr(self) -> str:
        mode = "interpreted, correctness only" if INTERPRETED else "compiled"
        return f"impl='triton', efflab FlashAttention kernel ({mode}): O(T) memory"


CORES: dict[str, type[nn.Module]] = {"naive": NaiveCore, "blocked": BlockedCore, "sdpa": SDPACore,
                                      "triton": TritonCore}


@register(AttentionConfig)
def _set_attention(model: nn.Module, config: AttentionConfig) -> nn.Module:
    """Replace every attention core (each ``block.attn.core``) of ``model`` in place.

    Parameters are untouched (cores hold none), so logits and gradients change only by
    floating-point rounding. Raises ValueError when the model has no ``core``.
    """
    parents = [m for m in model.modules() if "core" in dict(m.named_children())]
    if not parents:
        raise ValueError("model has no attention core to replace (no submodule named 'core', "
                         "as efflab.core.model.CausalSelfAttention has)")
    for attn in parents:
        core = CORES[config.impl]()
        core.train(attn.training)
        attn.core = core
    return model


MATERIALISING: tuple[str, ...] = ("naive", "blocked")
"""The impls that write score matrices to memory and keep them for backward."""


def _check_memory_args(impl: str, B: int, nh: int, T: int, S: int, hs: int,
                       bytes_per_el: int) -> None:
    """ConfigError naming the field for an unknown impl, a size that is not an integer >= 1,
    or S < T."""
    check_choice("impl", impl, ATTENTIONS)
    for name, value in (("B", B), ("nh", nh), ("T", T), ("S", S), ("hs", hs),
                        ("bytes_per_el", bytes_per_el)):
        check_int(name, value, lo=1)
    if S < T:
        raise ConfigError("S", S, f"an integer >= T={T} (queries are the last T of S positions)")


def attention_memory_bytes(impl: str, B: int, nh: int, T: int, S: int, hs: int,
                           bytes_per_el: int = 4) -> int:
    """Bytes one attention call needs beyond q, k, v and out, for a training step (backward).

    - ``naive``: at the peak, in backward, three (B, nh, T, S) matrices at once — the
      probabilities kept from forward, their gradient and the scores' gradient — plus the
      (T, S) bool causal mask that ``masked_fill`` keeps: ``3·B·nh·T·S·bytes_per_el + T·S``
      (of which ``B·nh·T·S·bytes_per_el + T·S`` is what forward keeps for backward).
    - ``blocked``: the same per block of :func:`causal_query_blocks`: forward keeps every
      block's (B, nh, rows, keys) probabilities and (rows, keys) mask; backward adds the two
      gradients of the largest block at the peak (:func:`attention_kept_and_transient_bytes`).
    - ``sdpa``: the fp32 logsumexp, one number per query row: ``B·nh·T·4``; when
      1 < T < S (a multi-token step after a cache) the (T, S) mask, which SDPA keeps
      as an additive float mask, adds ``T·S·bytes_per_el``.
    - ``triton``: the fp32 logsumexp, ``B·nh·T·4``; nothing of size T·S exists outside a tile.

    ``hs`` does not enter: no impl keeps anything per head dimension beyond q, k, v, out. It is
    in the signature so every impl is called alike.
    """
    _check_memory_args(impl, B, nh, T, S, hs, bytes_per_el)
    lse = B * nh * T * 4  # fp32 logsumexp: (B, nh, T)
    if impl in MATERIALISING:
        return sum(attention_kept_and_transient_bytes(impl, B, nh, T, S, bytes_per_el))
    if impl == "sdpa":
        return lse + (T * S * bytes_per_el if 1 < T < S else 0)
    return lse


def attention_kept_and_transient_bytes(impl: str, B: int, nh: int, T: int, S: int,
                                       bytes_per_el: int = 4) -> tuple[int, int]:
    """(kept, transient) bytes of one score-materialising attention call in training.

    ``kept``: what forward keeps for backward — the probabilities and the bool causal mask of
    the whole (T, S) matrix for ``naive``, of each of :func:`causal_query_blocks`'s blocks for
    ``blocked``. ``transient``: the two gradients (of the probabilities and of the scores) of
    the largest block, alive together at the peak of backward. Arguments are those of
    :func:`attention_memory_bytes`, which validates them first."""
    blocks = [(e - a, keys) for a, e, keys in causal_query_blocks(T, S, T if impl == "naive"
                                                                   else BLOCK_ROWS)]
    kept = sum(B * nh * rows * keys * bytes_per_el + rows * keys for rows, keys in blocks)
    transient = 2 * B * nh * max(rows * keys for rows, keys in blocks) * bytes_per_el
    return kept, transient


def model_attention_bytes(impl: str, n_layer: int, B: int, nh: int, T: int, hs: int,
                          bytes_per_el: int = 4) -> int:
    """Bytes a whole model's training step keeps for attention beyond the default (``sdpa``)
    activation formula: for ``naive`` and ``blocked``, every layer keeps its probabilities and
    masks for backward, and the one layer whose backward is running adds two gradients of its
    largest score block (:func:`attention_kept_and_transient_bytes`); 0 for the fused impls."""
    if impl not in MATERIALISING:
        return 0
    _check_memory_args(impl, B, nh, T, T, hs, bytes_per_el)
    kept, transient = attention_kept_and_transient_bytes(impl, B, nh, T, T, bytes_per_el)
    return n_layer * kept + transient


INTERPRETED_STEP_LIMIT_S = 5.0


def interpreted_step_seconds(cfg, batch_size: int, seq_len: int, train: bool,
                             seconds_per_program: float) -> float:
    """Predicted seconds of one step's attention through the Triton *interpreter* (CPU).

    The interpreter pays per kernel program, not per FLOP: each causal (query block, key block)
    tile is one program, and backward runs two kernels over the same tiles plus a per-row
    preprocess. Blocks are 64 wide there. ``seconds_per_program`` is measured on this machine
    (:func:`efflab.measurement.hardware.interpreter_seconds_per_program`).
    """
    nq = -(-seq_len // 64)  # query blocks (ceil)
    heads = batch_size * cfg.n_head * cfg.n_layer
    tiles = heads * nq * (nq + 1) // 2
    programs = tiles * (3 if train else 1) + (heads * nq if train else 0)
    return programs * seconds_per_program


def interpreted_refusal(cfg, batch_size: int, seq_len: int, train: bool,
                        seconds_per_program: float | None,
                        limit_s: float = INTERPRETED_STEP_LIMIT_S) -> str | None:
    """Why a Triton-attention step should not run interpreted here (too slow), else None.
    ``seconds_per_program`` None means the kernels are compiled: nothing to refuse."""
    if not INTERPRETED or seconds_per_program is None:
        return None
    predicted = interpreted_step_seconds(cfg, batch_size, seq_len, train, seconds_per_program)
    if predicted <= limit_s:
        return None
    return (f"attention='triton' refused here: with no GPU the Triton kernel runs interpreted "
            f"(correctness only); at {seconds_per_program * 1e3:.1f} ms per tile program, "
            f"measured on this machine, a step of this shape would take about {predicted:.0f} s "
            f"(limit {limit_s:.0f} s). Use a smaller batch or context (e.g. preset 'cpu-tiny'), "
            f"or a GPU.")


__all__ = ["AttentionConfig", "CORES", "NaiveCore", "BlockedCore",
           "SDPACore", "TritonCore", "BLOCK_ROWS", "causal_query_blocks",
           "blocked_attention", "attention_memory_bytes", "attention_kept_and_transient_bytes",
           "model_attention_bytes",
           "interpreted_step_seconds", "interpreted_refusal"]
