"""The KV cache, measured: its size against the formula, the cost of a new token with and
without it, and multi-head vs grouped-query vs multi-query attention.

Without a cache, generating token t+1 reruns the model over all t + 1 tokens: the work per new
token grows with the context, so a whole generation costs O(T²) token-passes. With the cache,
each layer's keys and values of earlier tokens are kept, and a new token costs one token's pass
plus attention over the cached keys: O(T) for the generation, paid for in memory,
``ModelConfig.kv_cache_bytes`` = 2 · layers · kv heads · head size · bytes · positions · batch.

Grouped-query (GQA) and multi-query (MQA) attention store fewer key/value heads than query
heads (``ModelConfig.n_kv_head``): the cache shrinks by n_head / n_kv_head. Whether quality
suffers is measured on models trained at equal steps (``efflab.studies.shapes.KV_VARIANTS``).
"""

from __future__ import annotations

import time

import torch

from efflab.core.config import Knobs, ModelConfig
from efflab.core.data import Corpus
from efflab.core.model import GPT, KVCache
from efflab.measurement.flops import attention_flops, matmul_weights
from efflab.measurement.timing import summarize, time_steps
from efflab.measurement.workloads import eval_loss, prepare


def new_token_flops(cfg: ModelConfig, context: int, cached: bool) -> int:
    """FLOPs to produce the token after ``context`` tokens.

    Cached: one token through every matmul (2 · ``matmul_weights``) plus attention over
    context + 1 keys (``attention_flops`` of one query: 4 · layers · keys · C). Recomputed:
    context + 1 tokens through every matmul, and causal attention over all of them
    (Σ keys = (T)(T+1)/2 with T = context + 1).
    """
    T = context + 1
    per_token = 2 * matmul_weights(cfg)
    attn = attention_flops(cfg, 1, 1, 1, backward=False)  # one query against one key
    if cached:
        return per_token + attn * T
    return T * per_token + attn * T * (T + 1) // 2


def cache_size_rows(variants: dict[str, ModelConfig], contexts, batch_size: int = 1) -> list[dict]:
    """Measured bytes of a KVCache (the tensors allocated) next to the formula, per variant."""
    rows = []
    for label, cfg in variants.items():
        for T in contexts:
            cache = KVCache(cfg, batch_size, T, "cpu", torch.float32)
            rows.append({"variant": label, "positions": T * batch_size, "context": T,
                         "batch_size": batch_size, "measured_bytes": cache.nbytes(),
                         "formula_bytes": cfg.kv_cache_bytes(batch_size, T, 4)})
    return rows


@torch.no_grad()
def decode_cost_rows(model: GPT, contexts, repeats: int = 5, target_s: float = 0.2,
                     on_row=None) -> list[dict]:
    """Milliseconds for one new token after each context length, with the KV cache (one token
    against the filled cache) and without (the whole prefix recomputed). Each point: median,
    p25, p75 and n; ``flops`` from :func:`new_token_flops`; ``theory_ms`` scales the FLOP
    formula to each mode's first point (the shape theory predicts, anchored once)."""
    model.eval()
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    rows = []
    for ctx in contexts:
        if ctx + 1 > cfg.block_size:
            raise ValueError(f"context {ctx} + 1 exceeds block_size {cfg.block_size}")
        ids = torch.randint(0, cfg.vocab_size, (1, ctx + 1), generator=g)  # (1, ctx+1)
        cache = KVCache(cfg, 1, ctx + 1, "cpu", torch.float32)
        model(ids[:, :ctx], cache=cache)

        def cached(cache=cache, ctx=ctx, ids=ids):  # this context's tensors, bound now
            cache.pos = ctx
            model(ids[:, ctx:], cache=cache)  # (1, 1): one token against ctx cached

        def recompute(ids=ids):
            model(ids)  # (1, ctx+1): everything again

        for mode, fn in (("with KV cache", cached), ("recompute prefix", recompute)):
            s = summarize(time_steps(fn, min_repeats=repeats, target_s=target_s))
            row = {"mode": mode, "context": ctx, "ms": s["median"], "ms_p25": s["p25"],
                   "ms_p75": s["p75"], "n": s["n"],
                   "flops": new_token_flops(cfg, ctx, mode == "with KV cache")}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    for mode in {r["mode"] for r in rows}:
        mine = [r for r in rows if r["mode"] == mode]
        scale = mine[0]["ms"] / mine[0]["flops"]
        for r in mine:
            r["theory_ms"] = r["flops"] * scale
    return rows


def variant_rows(models: dict[str, GPT], corpus: Corpus, batch_size: int = 8,
                 gen_tokens: int = 16, eval_batches: int = 4, target_s: float = 0.3,
                 records: dict[str, dict] | None = None) -> list[dict]:
    """Per attention variant: KV cache bytes at full context (formula), decode ms per step at
    ``batch_size`` (median, p25, p75, n through the decode workload), held-out bits/byte, and
    the training steps behind the weights when ``records`` gives them."""
    rows = []
    for label, model in models.items():
        cfg = model.cfg
        knobs = Knobs(workload="decode", batch_size=batch_size, gen_tokens=gen_tokens)
        T = knobs.resolve_seq_len(cfg)
        prep = prepare("decode", model, corpus, knobs)
        s = summarize(time_steps(prep.step, target_s=target_s))
        q = eval_loss(model, corpus, batch_size=8, n_batches=eval_batches)
        rec = (records or {}).get(label) or {}
        rows.append({"variant": label, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads,
                     "params": model.num_params(),
                     "kv_bytes": cfg.kv_cache_bytes(batch_size, T + gen_tokens, 4),
                     "measured_kv_bytes": prep.cache.nbytes(),
                     "decode_ms": s["median"], "decode_ms_p25": s["p25"],
                     "decode_ms_p75": s["p75"], "n": s["n"],
                     "bits_per_byte": q["bits_per_byte"], "eval_tokens": q["eval_tokens"],
                     "bits_per_byte_ci95": q.get("bits_per_byte_ci95", float("nan")),
                     "trained_steps": rec.get("steps", 0)})
    return rows


def generation_seconds(model: GPT, prompt_len: int, new_tokens: int, cached: bool) -> float:
    """Wall seconds to generate ``new_tokens`` greedily, with or without the cache (one run)."""
    ids = torch.zeros(1, prompt_len, dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        if cached:
            model.generate(ids, new_tokens, temperature=0)
        else:
            x = ids
            for _ in range(new_tokens):
                nxt = model(x)[0][:, -1:].argmax(-1)  # (1, 1)
                x = torch.cat([x, nxt], dim=1)
    return time.perf_counter() - t0


def ratio_summary(rows: list[dict]) -> dict:
    """Recompute / cached time per token at the shortest and the longest context."""
    by = {(r["mode"], r["context"]): r["ms"] for r in rows}
    ctxs = sorted({r["context"] for r in rows})
    return {c: by[("recompute prefix", c)] / by[("with KV cache", c)] for c in (ctxs[0], ctxs[-1])}


__all__ = ["new_token_flops", "cache_size_rows", "decode_cost_rows",
           "variant_rows", "generation_seconds", "ratio_summary"]
