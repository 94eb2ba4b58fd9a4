"""Memory by category, measured: what was alive at the peak of one step, and why.

:class:`MemoryTracker` is a dispatch mode that sees every tensor an operator allocates (on any
device), notes when its storage is freed, and records which storages autograd saved for the
backward pass. Replaying that timeline gives the peak of live bytes and the exact set of
storages alive at that moment; each is then put in one category:

- ``parameters``: the model's weights
- ``gradients``: tensors that ended up as ``param.grad``
- ``optimizer``: optimizer state (AdamW's two moments)
- ``activations``: tensors autograd saved for the backward pass
- ``kv_cache``: a decode/prefill workload's key/value cache
- ``other``: inputs, temporaries, logits not saved for backward ...

Tracking slows a step down (Python runs on every operator), so a step is never timed while it
is tracked. ``predict_memory`` is the same breakdown from formulas, for the theory line and for
refusing a run that would not fit before it starts.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from efflab.core.config import Knobs, ModelConfig, get_preset
from efflab.techniques import technique_configs
from efflab.techniques.attention import model_attention_bytes
from efflab.techniques.checkpointing import predict_activation_bytes
from efflab.techniques.quantization import block_linear_shapes, predicted_weight_bytes

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "kv_cache", "other")


class MemoryTracker(TorchDispatchMode):
    """Use as ``with MemoryTracker() as mt: step()``, then ``mt.report(...)``."""

    def __init__(self):
        super().__init__()
        self._ids = WeakIdKeyDictionary()  # storage -> allocation id
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self._events: list[tuple[int, int]] = []  # (+id, bytes) alloc / (-id, 0) free
        self._category: dict[int, str] = {}
        self._next = 1
        self._hooks = None

    # -- registration ---------------------------------------------------------------------
    def _register(self, t: torch.Tensor, category: str | None = None) -> int | None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return None
        st = t.untyped_storage()
        aid = self._ids.get(st)
        if aid is None:
            aid = self._next
            self._next += 1
            self._ids[st] = aid
            self._bytes[aid] = st.nbytes()
            self._refs[aid] = weakref.ref(st)
            self._events.append((aid, st.nbytes()))
            weakref.finalize(st, self._events.append, (-aid, 0))
        if category is not None and aid not in self._category:
            self._category[aid] = category
        return aid

    def track_existing(self, tensors, category: str) -> None:
        """Count tensors that already exist (weights, optimizer state) as live from the start."""
        for t in tensors:
            self._register(t, category)

    # -- the dispatch mode ------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._register(t)
        return out

    def __enter__(self):
        def pack(t):
            aid = self._ids.get(t.untyped_storage()) if isinstance(t, torch.Tensor) else None
            if aid is not None and aid not in self._category:
                self._category[aid] = "activations"
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._hooks.__exit__(*exc)
        self._n_events = len(self._events)  # later frees (after the step) are not part of it
        return out

    # -- results ------------------------------------------------------------------------------
    def report(self, model: torch.nn.Module | None = None,
               optimizer: torch.optim.Optimizer | None = None,
               tagged: dict[str, list[torch.Tensor]] | None = None) -> dict:
        """Peak live bytes and their split by category (the categories sum to the peak)."""
        if model is not None:
            self.track_existing(list(model.parameters()) + list(model.buffers()), "parameters")
        if optimizer is not None:
            for state in optimizer.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor) and v.numel() > 1:
                        self._tag(v, "optimizer")
        for cat, ts in (tagged or {}).items():
            for t in ts:
                self._tag(t, cat)
        live: set[int] = set()
        cur = peak = 0
        peak_at = 0
        cat_now = dict.fromkeys(CATEGORIES, 0)
        cat_max = dict.fromkeys(CATEGORIES, 0)
        events = self._events[: getattr(self, "_n_events", len(self._events))]
        for i, (aid, nbytes) in enumerate(events):
            if aid > 0:
                live.add(aid)
                cur += nbytes
                cat = self._category.get(aid, "other")
                cat_now[cat] += nbytes
                cat_max[cat] = max(cat_max[cat], cat_now[cat])
            elif -aid in live:
                live.discard(-aid)
                cur -= self._bytes[-aid]
                cat_now[self._category.get(-aid, "other")] -= self._bytes[-aid]
            if cur > peak:
                peak, peak_at = cur, i
        at_peak: set[int] = set()
        for aid, _ in events[: peak_at + 1]:
            if aid > 0:
                at_peak.add(aid)
            else:
                at_peak.discard(-aid)
        by_cat = dict.fromkeys(CATEGORIES, 0)
        for aid in at_peak:
            by_cat[self._category.get(aid, "other")] += self._bytes[aid]
        final = sum(self._bytes[a] for a in live)
        # by_category: what was alive at the peak moment (sums to peak_bytes);
        # max_by_category: each category's own high-water mark during the step (e.g. all
        # activations saved by the end of forward, even when the overall peak comes later)
        return {"peak_bytes": peak, "by_category": by_cat, "max_by_category": cat_max,
                "end_bytes": final}

    def _tag(self, t: torch.Tensor, category: str) -> None:
        aid = self._ids.get(t.untyped_storage())
        if aid is not None:
            self._category[aid] = category  # what a storage turned out to be wins


def measure_memory(step, model, optimizer=None, tagged=None, inputs=()) -> dict:
    """Track one call of ``step()`` (the model and optimizer already in steady state)."""
    mt = MemoryTracker()
    # weights are parameters, or buffers where a technique stores them packed (quantization)
    mt.track_existing(list(model.parameters()) + list(model.buffers()), "parameters")
    if optimizer is not None:
        mt.track_existing([v for s in optimizer.state.values() for v in s.values()
                           if isinstance(v, torch.Tensor) and v.numel() > 1], "optimizer")
    for cat, ts in (tagged or {}).items():
        mt.track_existing(ts, cat)
    mt.track_existing(inputs, "other")
    # gradients are usually freed again by zero_grad(set_to_none=True) before the step ends,
    # so they are named the moment autograd accumulates them
    hooks = [p.register_post_accumulate_grad_hook(lambda p: mt._tag(p.grad, "gradients"))
             for p in model.parameters() if p.requires_grad]
    try:
        with mt:
            step()
    finally:
        for h in hooks:
            h.remove()
    return mt.report(model, optimizer, tagged)


def predict_memory(cfg: ModelConfig, workload: str, batch_size: int, seq_len: int,
                   gen_tokens: int = 0, bytes_per_el: int = 4, *, param_bytes: int | None = None,
                   activation_bytes: int | None = None, n_params: int | None = None,
                   weight_bytes: int | None = None) -> dict:
    """Peak bytes of one step from formulas (default: fp32, SDPA attention, no checkpointing).

    Per block, training saves about 17·B·T·C values for backward (LayerNorm inputs, the qkv
    projection, attention output, MLP input, the 4C-wide GELU input and output); the head
    keeps the logits and their log-softmax (2·B·T·V). AdamW keeps two moments (2N) in the
    parameters' format. ``bytes_per_el`` sizes activations, ``param_bytes`` the weights (default:
    the same); ``activation_bytes`` replaces the activation formula (techniques that change what
    is saved — checkpointing, naive attention — pass their own); ``n_params`` replaces the dense
    parameter count (mixture-of-experts stores more); ``weight_bytes`` the stored size of the
    weights when a technique packs them (quantization).
    """
    N = cfg.n_params() if n_params is None else n_params
    B, T, C, V, L = batch_size, seq_len, cfg.n_embd, cfg.vocab_size, cfg.n_layer
    e = bytes_per_el
    w = bytes_per_el if param_bytes is None else param_bytes
    out = dict.fromkeys(CATEGORIES, 0)
    out["parameters"] = N * w if weight_bytes is None else weight_bytes
    if workload == "train":
        # two candidate peaks: the end of forward (every activation saved, no gradient yet)
        # and the end of backward (activations freed, every gradient allocated)
        acts = activation_bytes
        if acts is None:
            acts = (17 * B * T * C * L + 2 * B * T * C) * e + 2 * B * T * V * 4  # fp32 logits
        out["optimizer"] = 2 * N * w
        if acts >= N * w:
            out["activations"] = acts
        else:
            out["gradients"] = N * w
    elif workload in ("eval", "prefill"):
        out["other"] = (4 * B * T * C) * e + 2 * B * T * V * 4  # widest live intermediates
    elif workload == "decode":
        out["other"] = (4 * B * C) * e + B * V * 4
    if workload in ("prefill", "decode"):
        out["kv_cache"] = cfg.kv_cache_bytes(B, T + gen_tokens, w)  # kv heads only (GQA/MQA)
    return {"peak_bytes": sum(out.values()), "by_category": out}


def predict_for(cfg: ModelConfig, knobs: Knobs) -> dict:
    """``predict_memory`` for a configuration of knobs. Each technique supplies its own term:
    the precision its bytes per weight and activation, checkpointing and attention the bytes
    saved for backward, mixture-of-experts its extra parameters and saved tensors, quantization
    the packed size of the weights it replaces."""
    T = knobs.resolve_seq_len(cfg)
    B = knobs.batch_size
    t = technique_configs(knobs, cfg)
    e = t.precision.activation_bytes
    n_moe = len(t.moe.moe_layers(cfg.n_layer))
    acts = None
    if knobs.workload == "train":
        acts = predict_activation_bytes(cfg, B, T, t.checkpointing, bytes_per_el=e)
        acts += model_attention_bytes(t.attention.impl, cfg.n_layer, B, cfg.n_head, T,
                                      cfg.head_dim, e)
        acts += n_moe * t.moe.saved_activation_bytes(B, T, cfg.n_embd, e)
    n_params = cfg.n_params() + t.moe.param_delta(cfg.n_embd, cfg.n_layer)
    weight_bytes = None
    if t.quantization.mode != "none":
        shapes = block_linear_shapes(cfg, cfg.n_layer - n_moe)
        shapes += t.moe.linear_shapes(cfg.n_embd) * n_moe
        weight_bytes = predicted_weight_bytes(shapes, t.quantization, n_params,
                                              t.precision.param_bytes)
    return predict_memory(cfg, knobs.workload, B, T, knobs.gen_tokens, e,
                          param_bytes=t.precision.param_bytes, activation_bytes=acts,
                          n_params=n_params, weight_bytes=weight_bytes)


def largest_batch(cfg: ModelConfig | str, workload: str, budget_bytes: int,
                  seq_len: int | None = None, gen_tokens: int = 32, headroom: float = 0.9,
                  limit: int = 65536, **knobs) -> int:
    """The largest batch whose predicted peak stays under ``headroom`` × the budget (0 if none).

    ``cfg`` is a ModelConfig or a preset name; ``seq_len=None`` is the workload's default;
    further keywords are knobs (``checkpointing="blocks"``, ``precision="bf16"`` ...).
    Memory grows linearly in the batch size (parameters and optimizer state are fixed, the rest
    scales with B), so a doubling search then a bisection finds the edge in a few formula calls.
    """
    if isinstance(cfg, str):
        cfg = get_preset(cfg)
    base = Knobs(workload=workload, seq_len=seq_len, gen_tokens=gen_tokens, **knobs)
    base.resolve_seq_len(cfg)  # a bad seq_len is named before the search

    def fits(b: int) -> bool:
        need = predict_for(cfg, base.replace(batch_size=b))["peak_bytes"]
        return need <= headroom * budget_bytes

    if not fits(1):
        return 0
    lo = 1
    while lo * 2 <= limit and fits(lo * 2):
        lo *= 2
    hi = min(lo * 2, limit + 1)  # fits(lo) and not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
