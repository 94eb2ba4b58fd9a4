"""Activation checkpointing: keep less for backward, recompute the rest when backward needs it.

Training keeps, for every block, the tensors its backward pass will read — about 17·B·T·C
values per layer (see :func:`efflab.measurement.memory.predict_memory`). Checkpointing a part of
the model keeps only that part's *input*; during backward the part's forward runs again
(``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``) to rebuild what its backward
reads. Memory traded for compute:

================  ===========================================  =======================
mode              kept per wrapped layer (values)              recomputed in backward
================  ===========================================  =======================
``"none"``        17·B·T·C                                     nothing
``"blocks"``      B·T·C (the block's input)                    the whole block
``"selective"``   9·B·T·C (everything but the MLP's 4C-wide    ``mlp.c_fc`` and GELU
                  GELU input and output)
================  ===========================================  =======================

One verb, torchao style::

    apply_(model, CheckpointingConfig("blocks"))           # every block
    apply_(model, CheckpointingConfig("blocks", every=2))  # blocks 0, 2, 4, ...
    apply_(model, CheckpointingConfig("selective"))        # only the MLPs' insides
    apply_(model, CheckpointingConfig())                   # back to plain blocks

Wrappers are transparent: they share the wrapped module's parameter and child registries, so
``model.state_dict()`` keys, ``named_parameters()`` and attribute paths such as
``model.h[0].attn`` are exactly those of the plain model, and a checkpoint saved with or
without checkpointing loads into either. ``print(model)`` shows which parts are wrapped.

Checkpointing only acts when it can help: with gradients disabled (eval, ``torch.no_grad``)
or with a KV cache (decode, which never runs backward) the wrapped module runs as usual.

Seen on a 2-core CPU, cpu-small, B=8, T=128, one thread: "blocks" cut the activation memory
at the step's peak 3.2x (37.1 -> 11.7 MiB; formula 37.0 -> 10.5) and what is kept from forward
to backward 8.5x, for about +27% step time (fastest of 40 steps; the formula's FLOPs: +23%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from efflab.core.config import CHECKPOINTINGS, Checkpointing, ModelConfig, check_choice, check_int
from efflab.techniques.registry import register

# values (not bytes) each block saves for backward, in units of B·T·C — see the table above
SAVED_PER_BLOCK = 17  # ln_1 in, c_attn in, q k v (3), attention out, attn.c_proj in, ln_2 in,
#                       c_fc in, GELU in (4C wide: 4), GELU out (4C wide: 4).
# Kept equal to predict_memory's 17. Measured with SDPA it is 16: the fused kernel returns its
# output laid out as (B, T, nh, hs), so attn's .transpose(1, 2).contiguous() copies nothing and
# "attention out" and "attn.c_proj in" are one tensor.
SAVED_PER_CHECKPOINTED_BLOCK = 1  # only the block's input x
MLP_HIDDEN_SAVED = 8  # GELU input and output, each 4C wide: what "selective" recomputes
SAVED_PER_SELECTIVE_BLOCK = SAVED_PER_BLOCK - MLP_HIDDEN_SAVED  # 9: c_fc's input stays
BACKWARD_WORKSPACE = 8  # gradients of the 4C-wide hidden, before and after GELU, in backward


@dataclass(frozen=True)
class CheckpointingConfig:
    """What to recompute in backward instead of keeping.

    ``mode``: ``"none"`` (keep everything), ``"blocks"`` (keep only each wrapped block's input,
    recompute the whole block) or ``"selective"`` (recompute only the MLP's 4C-wide hidden
    activations). ``every``: wrap layer ``i`` when ``i % every == 0`` (1 = every layer); it
    applies to both ``"blocks"`` and ``"selective"``.
    """

    mode: Checkpointing = "none"
    every: int = 1

    def __post_init__(self):
        check_choice("mode", self.mode, CHECKPOINTINGS)
        check_int("every", self.every, lo=1)

    def wrapped_layers(self, n_layer: int) -> list[int]:
        """Indices of the layers this config wraps in a model of ``n_layer`` blocks."""
        return [] if self.mode == "none" else list(range(0, n_layer, self.every))


# ----------------------------------------------------------------------------- wrappers

class _Transparent(nn.Module):
    """A wrapper that *is* its inner module as far as parameters and children are concerned.

    It shares the inner module's ``_parameters``, ``_buffers`` and ``_modules`` dicts instead of
    registering the inner module as a child: no ``inner.`` prefix appears in ``state_dict()`` or
    ``named_parameters()``, ``wrapper.attn`` is ``inner.attn``, and a child swapped through the
    wrapper (``wrapper.mlp = ...``) is swapped in the inner module too, so unwrapping never
    loses another technique's change. The inner module itself is kept as a plain attribute,
    so ``model.modules()`` lists the wrapper, not it: a scan by type must look through
    ``m.__dict__.get("inner")`` (as ``efflab.techniques.moe.moe_layers`` does).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.__dict__["inner"] = inner  # a plain attribute: not a child, so no key prefix
        self._parameters = inner._parameters
        self._buffers = inner._buffers
        self._non_persistent_buffers_set = inner._non_persistent_buffers_set
        self._modules = inner._modules
        self.training = inner.training

    def __getattr__(self, name: str):
        try:  # parameters, buffers and children (shared with the inner module)
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("inner")
            if inner is None:
                raise
            return getattr(inner, name)  # plain attributes of the inner module

    def train(self, mode: bool = True):
        super().train(mode)  # the wrapper and the shared children
        self.inner.training = mode  # the inner module is not a child: set its flag too
        return self


class CheckpointedBlock(_Transparent):
    """A transformer block whose activations are recomputed in backward instead of kept.

    With gradients enabled and no KV cache, forward runs the block under
    ``checkpoint(..., use_reentrant=False)``: autograd keeps only the (B, T, C) input, and the
    block's forward runs again during backward to rebuild the ~17·B·T·C values its backward
    reads. (PyTorch's early stop ends that recompute as soon as the last needed tensor exists,
    so the final ``mlp.c_proj`` matmul and the residual add are not run twice.) Otherwise it is
    the plain block.
    """

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        # x: (B, T, C) -> (B, T, C)
        if cache is None and torch.is_grad_enabled():
            return checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x, cache)

    def extra_repr(self) -> str:
        return "checkpoint=block: keeps only the (B, T, C) input, recomputes the block in backward"


class CheckpointedMLP(_Transparent):
    """The MLP with its 4C-wide hidden activations recomputed in backward (``"selective"``).

    Kept for backward: the MLP's (B, T, C) input (which ``c_fc`` would keep anyway).
    Dropped and recomputed: ``c_fc``'s output (the GELU input, (B, T, 4C)) and the GELU output
    (``c_proj``'s input, (B, T, 4C)) — 8 of the block's ~17·B·T·C values. Recompute costs one
    ``c_fc`` matmul and one GELU per wrapped layer; ``c_proj`` is not rerun (early stop).
    Attention, LayerNorms and residuals keep their activations as usual.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C) -> (B, T, C)
        if torch.is_grad_enabled():
            return checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)

    def extra_repr(self) -> str:
        return ("checkpoint=selective: keeps the (B, T, C) input, recomputes c_fc and GELU "
                "(B, T, 4C) in backward")


# ----------------------------------------------------------------------------- the verb

def _unwrap(model: nn.Module) -> None:
    """Put plain blocks and MLPs back wherever a checkpointing wrapper sits."""
    for i, block in enumerate(model.h):
        if isinstance(block, CheckpointedBlock):
            block = model.h[i] = block.inner
        if isinstance(block.mlp, CheckpointedMLP):
            block.mlp = block.mlp.inner


@register(CheckpointingConfig)
def _apply_checkpointing(model: nn.Module, config: CheckpointingConfig) -> nn.Module:
    """Make ``model`` (a GPT) checkpoint as ``config`` says, in place; returns the model.

    Any earlier checkpointing is undone first, so applying twice never double-wraps, applying
    another mode switches modes, and ``CheckpointingConfig("none")`` restores the plain blocks.
    Weights, ``state_dict()`` keys and outputs are unchanged; only what backward keeps changes.
    """
    _unwrap(model)
    for i in config.wrapped_layers(len(model.h)):
        if config.mode == "blocks":
            model.h[i] = CheckpointedBlock(model.h[i])
        else:  # selective
            model.h[i].mlp = CheckpointedMLP(model.h[i].mlp)
    return model


# ----------------------------------------------------------------------------- theory

def _kept_per_layer(n_layer: int, config: CheckpointingConfig) -> list[int]:
    """Values (in units of B·T·C) each layer keeps from forward until its backward."""
    kept = {"none": SAVED_PER_BLOCK, "blocks": SAVED_PER_CHECKPOINTED_BLOCK,
            "selective": SAVED_PER_SELECTIVE_BLOCK}[config.mode]
    wrapped = set(config.wrapped_layers(n_layer))
    return [kept if i in wrapped else SAVED_PER_BLOCK for i in range(n_layer)]


def activation_breakdown(cfg: ModelConfig, batch_size: int, seq_len: int,
                         config: CheckpointingConfig, bytes_per_el: int = 4) -> dict:
    """Bytes of activations one training step needs under ``config``, part by part.

    With n = B·T·C and layer i keeping ``kept_i``·n values (17 plain, 1 for a checkpointed
    block — its input —, 9 for a selective layer: 17 minus the GELU input and output):

    - ``saved``: Σ kept_i·n, what the blocks keep from forward until their backward.
    - ``head``: the final LayerNorm and lm_head inputs (2·n) plus the logits and their
      log-softmax (2·B·T·V, fp32 whatever the precision) — as ``predict_memory`` counts them.
    - ``recompute``: the transient of rebuilding ONE wrapped part during backward (parts are
      rebuilt one at a time and freed after their backward): 17·n for a block, 8·n for an MLP's
      hidden activations, 0 without checkpointing.
    - ``end_of_forward``: saved + head — everything is kept, nothing is freed yet.
    - ``workspace``: the backward of the rebuilt part runs while the rebuilt values are alive:
      its gradients of the MLP's 4C-wide hidden activations (before and after GELU) are the
      largest temporaries, 8·n (without them the prediction falls short of the measured peak;
      ``tests/test_checkpointing.py`` holds the formula to the measurement).
    - ``during_recompute``: while the last wrapped layer j (the first one backward reaches) is
      rebuilt, layers 0..j still hold what they kept, layers after j and the head are already
      freed: Σ_{i<=j} kept_i·n + recompute + workspace.
    - ``peak``: the larger of the two moments — what :func:`predict_activation_bytes` returns.
    - ``upper_bound``: saved + head + recompute, as if everything were alive at once.

    cpu-small (L=4, C=128), B=8, T=128, fp32, in units of n·4 bytes = 0.5 MiB:
    none 68 + 6 = 74 (37 MiB); blocks max(4 + 6, 4 + 17 + 8) = 29 (14.5 MiB, 2.6x less);
    blocks every=2 max(36 + 6, 19 + 17 + 8) = 44 (22 MiB); selective max(36 + 6, 36 + 8 + 8) = 52.
    """
    B, T, C, V = batch_size, seq_len, cfg.n_embd, cfg.vocab_size
    n = B * T * C
    e = bytes_per_el
    kept = _kept_per_layer(cfg.n_layer, config)
    wrapped = config.wrapped_layers(cfg.n_layer)
    transient = {"none": 0, "blocks": SAVED_PER_BLOCK, "selective": MLP_HIDDEN_SAVED}[config.mode]
    saved = sum(kept) * n * e
    head = 2 * n * e + 2 * B * T * V * 4  # logits are fp32 (model.py's .float())
    recompute = transient * n * e if wrapped else 0
    workspace = BACKWARD_WORKSPACE * n * e if wrapped else 0
    during = (sum(kept[: wrapped[-1] + 1]) * n * e + recompute + workspace) if wrapped else 0
    return {"saved": saved, "head": head, "recompute": recompute, "workspace": workspace,
            "end_of_forward": saved + head, "during_recompute": during,
            "peak": max(saved + head, during),
            "upper_bound": saved + head + recompute + workspace}


def predict_activation_bytes(cfg: ModelConfig, batch_size: int, seq_len: int,
                             config: CheckpointingConfig, bytes_per_el: int = 4) -> int:
    """Peak activation bytes of a training step under ``config`` (see :func:`activation_breakdown`).

    none: 17·B·T·C·L + 2·B·T·C + 2·B·T·V, exactly ``predict_memory``'s activation term.
    With checkpointing the peak is the larger of two moments: the end of forward (what every
    layer kept, plus the head) and the rebuild of the last wrapped layer during backward (what
    layers up to it kept, plus one block's 17·B·T·C — or one MLP's 8·B·T·C for "selective" —
    rebuilt; the head is freed by then). blocks with every=k: wrapped blocks keep B·T·C, the
    others 17·B·T·C. selective: wrapped layers keep 9·B·T·C.

    This is the peak, not the sum saved + head + rebuild that would count the head and the
    rebuild as alive together: they never are (``upper_bound`` in the breakdown is that sum).
    """
    return activation_breakdown(cfg, batch_size, seq_len, config, bytes_per_el)["peak"]


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict:
    """Forward FLOPs per token: one block and the head (2 FLOPs per multiply-add).

    Block: q/k/v 6·C², attention output projection 2·C², MLP up 8·C², MLP down 8·C² (24·C² in
    all) plus attention q·kᵀ and p·v, 4·T·C (counted over the full T×T, as
    :func:`efflab.measurement.flops.attention_flops` does). Head: 2·C·V. LayerNorms, GELU and
    softmax are elementwise and left out, as the FLOP counter leaves them out.
    """
    C, T = cfg.n_embd, seq_len
    return {"block": 24 * C * C + 4 * T * C, "head": 2 * C * cfg.vocab_size,
            "mlp_up": 8 * C * C, "mlp_down": 8 * C * C}


def recompute_flops_fraction(cfg: ModelConfig, config: CheckpointingConfig,
                             seq_len: int | None = None) -> float:
    """Extra forward compute in backward, as a fraction of a plain train step's FLOPs.

    A train step costs about 3× its forward (backward computes a gradient for both the input
    and the weight of every matmul: 2× forward), so recomputing *all* of the forward would add
    1/3. Per token, with F_block and F_head from :func:`forward_flops_per_token`, the step is
    3·(L·F_block + F_head) and the recompute per wrapped layer is:

    - blocks: F_block − 8·C² = 16·C² + 4·T·C. The whole block runs again except its last
      matmul (``mlp.c_proj``): non-reentrant checkpointing stops recomputing as soon as the
      last tensor backward needs (``c_proj``'s input) exists. So every block wrapped adds a bit
      under 1/3 of the blocks' own FLOPs: 0.24 of them, 0.23 of the step for cpu-small at
      T=128 (the head, never recomputed, being the rest).
    - selective: 8·C², the MLP's up projection (``c_fc``; GELU is elementwise), ≈ 9% for
      cpu-small at T=128.

    ``seq_len`` (default: the preset's ``block_size``) matters only through attention.
    The batch size cancels out.
    """
    T = cfg.block_size if seq_len is None else seq_len
    f = forward_flops_per_token(cfg, T)
    step = 3 * (cfg.n_layer * f["block"] + f["head"])
    per_layer = {"none": 0, "blocks": f["block"] - f["mlp_down"], "selective": f["mlp_up"]}
    k = len(config.wrapped_layers(cfg.n_layer))
    return k * per_layer[config.mode] / step


__all__ = ["CheckpointingConfig", "CheckpointedBlock", "CheckpointedMLP",
           "activation_breakdown",
           "forward_flops_per_token", "predict_activation_bytes", "recompute_flops_fraction"]
