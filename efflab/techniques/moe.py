"""Mixture of experts: many MLPs per layer, each token uses only ``top_k`` of them.

A dense block sends every token through one MLP (C -> 4C -> C). A mixture-of-experts (MoE)
layer holds E smaller-or-equal MLPs, the *experts*, and a *router*, a Linear(C -> E) that scores
the experts for each token. Each token goes to its ``top_k`` best-scoring experts and the layer
returns their outputs weighted by the router's gates. Parameters grow E-fold-ish; the work per
token does not — that is the trade this lesson measures::

    apply_(model, MoEConfig(experts=4))                  # every block, top-1 (Switch style)
    apply_(model, MoEConfig(experts=8, top_k=2, every=2))  # blocks 0, 2, 4, ... top-2
    loss = lm_loss + auxiliary_loss(model)                  # in the training loop
    count_params(model)   # {"total": ..., "active": ...}
    expert_load(model)    # tokens each expert was asked to take, per MoE layer

**Equal active parameters.** By default each expert's hidden size is ``H = 4C // top_k``, so
the ``top_k`` experts a token visits hold as many weights as the dense MLP (8C² weights; the
biases differ by (top_k - 1)·C), and a token costs about the same FLOPs as in the dense model.
Only the router (C·E weights, no bias) is extra. ``expert_hidden`` overrides H.

**Routing** (token choice): softmax over the E router logits gives ``probs`` (N, E); each token
picks its ``top_k`` largest. The gates are those probabilities renormalised over the chosen k
— except for top-1, where the gate is the raw probability (as in the Switch Transformer):
renormalising a single number always gives 1, and the router would then receive no gradient
from the language-model loss at all, only from the balancing loss.

**Capacity.** Each expert takes at most ``ceil(capacity · N · top_k / E)`` (its slots)
of the N tokens in a forward call (fixed buffers are what make MoE fast on accelerators).
Assignments beyond an expert's capacity are *dropped*: that expert adds nothing for that token,
and the residual connection carries the token past the layer unchanged. Priority goes in token
order (batch row, then position), so a token is never dropped because of a later token of its
own sequence. With top_k > 1 a token may lose one expert and keep another; its kept gates are
not renormalised. The same capacity applies in training and evaluation, and it is computed
per call, so a token's output can depend on the other tokens in its batch (and decoding one
token at a time with a KV cache can differ slightly from a full forward).

**What the layer records** after each forward, for the lesson:

- ``last_load``: (E,) int64 CPU tensor, how many assignments the router *sent* to each expert,
  counted **before** capacity is applied; it sums to N · top_k.
- ``last_dropped``: how many of those assignments were over capacity (for top-1: tokens).
- ``last_capacity``: the capacity used.
- ``aux_loss``: the Switch-Transformer load-balancing loss ``balance · E · Σ_i f_i·P_i``,
  with f_i the fraction of assignments sent to expert i (no gradient) and P_i the mean router
  probability of expert i (differentiable). Perfectly balanced routing gives 1·balance;
  everything on one expert gives up to E·balance. It is a 0-dim tensor in the autograd
  graph (a constant zero when ``balance == 0``); :func:`auxiliary_loss` sums it over
  layers, and the training loop adds that to the loss.

**MoE is a model transform, and one-way.** ``state_dict()`` keys change (``h.0.mlp.router.weight``,
``h.0.mlp.experts.3.c_fc.weight``, ...): a dense checkpoint does not load into an MoE model
(build the model, apply the same MoEConfig, then load an MoE checkpoint). The dense MLP's
weights are discarded, so ``MoEConfig(experts=0)`` (off) leaves a model as it is and cannot
turn an MoE model back into a dense one — build a fresh model instead. Apply MoE before
activation checkpointing (the checkpoint wrappers are transparent and wrap an MoEMLP fine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import ConfigError, check_int, check_real
from efflab.core.model import MLP, gelu_tanh
from efflab.techniques.registry import register


@dataclass(frozen=True)
class MoEConfig:
    """Which blocks become mixtures of experts, and how tokens are routed.

    ``experts``: experts per MoE layer; 0 means off (the model stays dense).
    ``top_k``: experts each token visits, 1 <= top_k <= experts.
    ``capacity``: slack on each expert's share; each expert's slots = ceil(capacity · N · top_k / E).
    ``balance``: weight of the load-balancing loss (0 disables it).
    ``every``: layer ``i`` becomes MoE when ``i % every == 0`` (1 = every layer).
    ``expert_hidden``: each expert's hidden width; None = 4·n_embd // top_k (equal active
    parameters to the dense MLP).
    ``seed``: the new experts' and routers' weights are drawn from it (the global RNG is not
    touched); ``technique_configs`` sets it to the knobs' seed.
    """

    experts: int = 0
    top_k: int = 1
    capacity: float = 1.25
    balance: float = 0.01
    every: int = 1
    expert_hidden: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_int("experts", self.experts, lo=0, note="0 = dense, off")
        check_int("top_k", self.top_k, lo=1)
        if self.experts and self.top_k > self.experts:
            raise ConfigError("top_k", self.top_k,
                              f"an integer in [1, experts] = [1, {self.experts}] "
                              f"(top_k={self.top_k} > experts={self.experts})")
        check_real("capacity", self.capacity, lo=0, lo_open=True)
        check_real("balance", self.balance, lo=0)
        check_int("every", self.every, lo=1)
        check_int("expert_hidden", self.expert_hidden, lo=1, optional=True)
        check_int("seed", self.seed, lo=0, hi=2**63 - 1)

    @property
    def enabled(self) -> bool:
        return self.experts > 0

    def hidden(self, n_embd: int) -> int:
        """Each expert's hidden width: ``expert_hidden``, or 4·n_embd // top_k."""
        return self.expert_hidden if self.expert_hidden is not None else 4 * n_embd // self.top_k

    def linear_shapes(self, n_embd: int) -> list[tuple[int, int, bool]]:
        """(out_features, in_features, has_bias) of one MoE layer's Linears: the router (E, C)
        without bias, then per expert up (H, C) and down (C, H)."""
        H = self.hidden(n_embd)
        return [(self.experts, n_embd, False)] + [(H, n_embd, True), (n_embd, H, True)] * self.experts

    def saved_activation_bytes(self, batch_size: int, seq_len: int, n_embd: int,
                               bytes_per_el: int) -> int:
        """Extra bytes one MoE layer keeps for backward beyond a dense MLP's: the gathered
        inputs, expert outputs and weighted outputs (3·top_k·B·T·C) and the router's fp32
        probabilities (B·T·E)."""
        B, T = batch_size, seq_len
        return 3 * self.top_k * B * T * n_embd * bytes_per_el + B * T * self.experts * 4

    def moe_layers(self, n_layer: int) -> list[int]:
        """Indices of the blocks this config turns into MoE in a model of ``n_layer`` blocks."""
        return list(range(0, n_layer, self.every)) if self.enabled else []

    def param_delta(self, n_embd: int, n_layer: int) -> int:
        """Parameters this config adds to a dense model of that shape (0 when off): per MoE
        layer, E experts (C→H→C with biases) and a router (C·E) replace one dense MLP."""
        C, H, E = n_embd, self.hidden(n_embd), self.experts
        dense = 2 * 4 * C * C + 4 * C + C
        moe = E * (2 * C * H + H + C) + C * E
        return len(self.moe_layers(n_layer)) * (moe - dense)

    def slots(self, n_tokens: int) -> int:
        """Most assignments one expert takes from ``n_tokens`` tokens: ceil(capacity · N · k / E)."""
        return math.ceil(self.capacity * n_tokens * self.top_k / self.experts)


# ----------------------------------------------------------------------------- modules

class ExpertMLP(nn.Module):
    """One expert: the dense MLP's shape with hidden width H (C -> H -> C, GELU tanh)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden)
        self.c_proj = nn.Linear(hidden, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_tanh(self.c_fc(x)))  # (n, H) -> (n, C)


class MoEMLP(nn.Module):
    """A drop-in for ``block.mlp``: a router and ``config.experts`` expert MLPs.

    ``forward(x)`` takes and returns (..., C) — (B, T, C) in the GPT. Dispatch has no loop over
    tokens: assignments are sorted by expert (one ``argsort``), each expert gathers its kept
    tokens, runs once on them as a batch, and scatter-adds its gate-weighted outputs back
    (``index_add_``). Only the E experts are looped over. See the module docstring for the
    routing, capacity and the statistics each forward leaves on the module.

    Weights start as PyTorch's Linear defaults; applying a :class:`MoEConfig` re-initialises
    them the GPT way. To compare with a dense MLP, copy its ``c_fc``/``c_proj`` into ``experts[0]`` of a
    one-expert layer with ``expert_hidden = 4C``.
    """

    def __init__(self, n_embd: int, config: MoEConfig):
        super().__init__()
        if not config.enabled:
            raise ConfigError("experts", config.experts, "an integer >= 1 for an MoEMLP")
        self.config = config
        self.n_embd = n_embd
        self.n_experts = config.experts
        self.top_k = config.top_k
        self.hidden = config.hidden(n_embd)
        self.router = nn.Linear(n_embd, config.experts, bias=False)  # scores each expert
        self.experts = nn.ModuleList(ExpertMLP(n_embd, self.hidden) for _ in range(config.experts))
        self.last_load = torch.zeros(config.experts, dtype=torch.long)
        self.last_dropped = 0
        self.last_capacity = 0
        self.aux_loss = torch.zeros(())

    def reset_parameters(self, n_layer: int, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and the residual projections
        (``c_proj``) at 0.02 / sqrt(2·n_layer), as :class:`efflab.core.model.GPT` does."""
        with torch.no_grad():
            nn.init.normal_(self.router.weight, 0.0, 0.02, generator=generator)
            for expert in self.experts:
                nn.init.normal_(expert.c_fc.weight, 0.0, 0.02, generator=generator)
                nn.init.normal_(expert.c_proj.weight, 0.0, 0.02 / math.sqrt(2 * n_layer),
                                generator=generator)
                nn.init.zeros_(expert.c_fc.bias)
                nn.init.zeros_(expert.c_proj.bias)

    def __getstate__(self):
        # aux_loss is usually a non-leaf tensor of the last forward's graph, which deepcopy and
        # pickle refuse: copies get its value, detached.
        state = super().__getstate__()
        state["aux_loss"] = state["aux_loss"].detach()
        return state

    def params_per_expert(self) -> int:
        return sum(p.numel() for p in self.experts[0].parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        E, k = self.n_experts, self.top_k
        xf = x.reshape(-1, self.n_embd)  # (N, C): every token of the batch in one list
        N = xf.size(0)

        # --- route: each token scores the experts and keeps its top k
        probs = F.softmax(self.router(xf).float(), dim=-1)  # (N, E), fp32 for a stable softmax
        top_p, top_e = probs.topk(k, dim=-1)  # (N, k) each: chosen probabilities, expert ids
        gates = top_p if k == 1 else top_p / top_p.sum(dim=-1, keepdim=True)  # (N, k)

        # --- group: assignment a = n·k + r (token n's r-th choice); sort them by expert.
        # A stable sort keeps token order inside each expert's group, which sets who is dropped.
        flat_e = top_e.reshape(-1)  # (N·k,) expert of each assignment
        flat_g = gates.reshape(-1)  # (N·k,) its gate
        order = torch.argsort(flat_e, stable=True)  # (N·k,) assignments grouped by expert
        counts = torch.bincount(flat_e, minlength=E)  # (E,) routed, before capacity
        capacity = self.config.slots(N)
        load = counts.tolist()  # one device sync for the whole layer

        # --- dispatch: each expert runs once on its kept tokens; outputs scatter-add back
        out = xf.new_zeros(N, self.n_embd)  # (N, C): dropped tokens stay exactly zero here
        start = 0
        for e, n_e in enumerate(load):
            kept = min(n_e, capacity)
            if kept:
                a = order[start:start + kept]  # (n,) this expert's first `kept` assignments
                tok = a // k  # (n,) which token each one is
                y = self.experts[e](xf[tok])  # (n, C)
                out.index_add_(0, tok, (y * flat_g[a, None]).to(out.dtype))
            start += n_e

        # --- statistics and the load-balancing loss (Switch Transformer, eq. 4)
        self.last_load = counts.cpu()
        self.last_dropped = sum(max(0, n_e - capacity) for n_e in load)
        self.last_capacity = capacity
        if self.config.balance > 0:
            f = counts.to(probs.dtype) / max(1, N * k)  # (E,) fraction of assignments: no gradient
            P = probs.mean(dim=0)  # (E,) mean router probability: the gradient path
            self.aux_loss = self.config.balance * E * (f * P).sum()
        else:
            self.aux_loss = probs.new_zeros(())
        return out.view(shape)

    def extra_repr(self) -> str:
        c = self.config
        return (f"experts={self.n_experts}, top_k={self.top_k}, "
                f"capacity={c.capacity} (slots=ceil(capacity·N·k/E)), "
                f"hidden={self.hidden}, balance={c.balance}")


# ----------------------------------------------------------------------------- the verb

def moe_layers(model: nn.Module) -> list[MoEMLP]:
    """Every MoEMLP in ``model``, in module order, including ones inside checkpoint wrappers.

    (A checkpoint wrapper shares its inner module's children but keeps the inner module itself
    as a plain ``inner`` attribute, so ``model.modules()`` alone would not list it.)
    """
    found: list[MoEMLP] = []
    for m in model.modules():
        while True:
            if isinstance(m, MoEMLP) and all(m is not f for f in found):
                found.append(m)
            inner = m.__dict__.get("inner")
            if inner is None:
                break
            m = inner
    return found


@register(MoEConfig)
def _apply_moe(model: nn.Module, config: MoEConfig) -> nn.Module:
    """Replace ``block.mlp`` of the blocks ``config.moe_layers`` picks with fresh MoEMLPs.

    In place; returns the model. The new weights are drawn from ``config.seed`` (the global RNG
    is not touched), initialised the GPT-2 way, on the replaced MLP's device and dtype. The dense
    MLP's weights are discarded. ``MoEConfig()`` (experts=0) changes nothing. Applying MoE to a
    block that already has one raises ValueError: rebuild the model to change the MoE settings.
    """
    n_layer = len(model.h)
    generator = torch.Generator().manual_seed(config.seed)
    for i in config.moe_layers(n_layer):
        block = model.h[i]
        old = block.mlp
        if isinstance(old, MoEMLP) or isinstance(old.__dict__.get("inner"), MoEMLP):
            raise ValueError(f"block {i} already has a mixture of experts; build a fresh model "
                             "to change MoE settings")
        if not isinstance(old, MLP):
            raise ValueError(f"block {i}'s mlp is a {type(old).__name__}, not a plain MLP: "
                             "apply MoE before other techniques that wrap the MLP")
        with torch.random.fork_rng(devices=[]):  # Linear's default init draws globally
            moe = MoEMLP(old.c_fc.in_features, config)
        moe.reset_parameters(n_layer, generator)
        block.mlp = moe.to(device=old.c_fc.weight.device, dtype=old.c_fc.weight.dtype)
    return model


def auxiliary_loss(model: nn.Module) -> torch.Tensor:
    """Sum of every MoE layer's load-balancing loss from its last forward (0-dim).

    A zero tensor on the model's device when the model has no MoE layers, so a training loop
    can always write ``loss = lm_loss + auxiliary_loss(model)``.
    """
    layers = moe_layers(model)
    if not layers:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    total = layers[0].aux_loss
    for layer in layers[1:]:
        total = total + layer.aux_loss
    return total


def expert_load(model: nn.Module) -> list[list[int]]:
    """Per MoE layer, the assignments each expert was sent in the last forward (pre-capacity)."""
    return [layer.last_load.tolist() for layer in moe_layers(model)]


def dropped_tokens(model: nn.Module) -> list[int]:
    """Per MoE layer, the assignments dropped for capacity in the last forward."""
    return [layer.last_dropped for layer in moe_layers(model)]


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters stored (``total``) and used by one token (``active``).

    Active = everything dense (embeddings, attention, LayerNorms, dense MLPs) + each MoE
    layer's router + ``top_k`` of its experts. With the default expert width and top-1 this
    equals the dense model's count plus the routers (C·E per MoE layer).
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
    idle = sum((layer.n_experts - layer.top_k) * layer.params_per_expert()
               for layer in moe_layers(model))
    return {"total": total, "active": total - idle}


__all__ = ["MoEConfig", "MoEMLP", "ExpertMLP", "auxiliary_loss", "expert_load",
           "dropped_tokens", "count_params", "moe_layers"]
