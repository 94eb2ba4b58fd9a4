"""Checks for lesson 10 (KV cache and speculative decoding): the cache size of a given model
and context, and the break-even acceptance rate of a draft of a given cost."""

from __future__ import annotations

import random

from efflab.check.core import (
    Verdict,
    exercise,
    first_slip,
    judge_number,
    judge_probed_numbers,
    number,
    probe_outputs,
)
from efflab.core.config import ModelConfig
from efflab.systems.speculative import break_even_alpha, expected_speedup


def _cfg(ev: dict) -> ModelConfig:
    return ModelConfig("exercise", n_layer=int(ev["n_layer"]), n_head=int(ev["n_head"]),
                       n_embd=int(ev["n_embd"]), block_size=max(1, int(ev["context"])),
                       n_kv_head=int(ev["n_kv_head"]))


@exercise("kv_cache_bytes", points=1, topic="kv_cache")
def kv_cache_bytes(answer, *, n_layer, n_head, n_kv_head, n_embd, context, batch_size,
                   bytes_per_el=4):
    """Bytes of the KV cache of a model with these shapes holding ``context`` positions for
    ``batch_size`` sequences, ``bytes_per_el`` bytes per number."""
    return {"answer": number(answer), "n_layer": int(n_layer), "n_head": int(n_head),
            "n_kv_head": int(n_kv_head), "n_embd": int(n_embd), "context": int(context),
            "batch_size": int(batch_size), "bytes_per_el": int(bytes_per_el)}


@kv_cache_bytes.judge_with
def _judge_kv_cache_bytes(ev: dict) -> Verdict:
    cfg = _cfg(ev)
    B, T, e = ev["batch_size"], ev["context"], ev["bytes_per_el"]
    truth = cfg.kv_cache_bytes(B, T, e)
    L, nh, nkv = cfg.n_layer, cfg.n_head, cfg.kv_heads
    return judge_number(
        number(ev["answer"]), truth, rel=0.005, unit="bytes",
        expected=f"the bytes this model's KV cache holds for {T} positions of each of {B} "
                 f"sequences, at {e} bytes per number",
        slips=[(truth / 2, "a cache holds keys AND values"),
               (truth * nh / nkv, "only the key/value heads are cached, not every query head"),
               (truth / L, "every layer keeps its own keys and values"),
               (truth / B, "each sequence of the batch has its own cache"),
               (truth * 8, "that is bits; give bytes"),
               (truth / e, "that counts numbers; multiply by the bytes per number"),
               (truth / 2**20, "give bytes, not MiB")],
        hint="the cache keeps, for every position of every sequence, what each layer's "
             "attention reads again at the next token; count how many heads that is under "
             "grouped-query attention, and how wide each one is")


@exercise("break_even_acceptance", points=2, topic="speculative", measured=("cost_ratio",))
def break_even_acceptance(answer, *, k, cost_ratio, verify_cost=1.0):
    """The per-token acceptance rate α at which speculative decoding with ``k`` draft tokens,
    a draft step costing ``cost_ratio`` target steps and a verify pass costing ``verify_cost``
    target steps, is exactly as fast as the target alone."""
    return {"answer": number(answer), "k": int(k), "cost_ratio": number(cost_ratio),
            "verify_cost": number(verify_cost)}


def _solve(f, lo=0.0, hi=1.0) -> float:
    """The α in [0, 1] where the increasing f crosses 0 (1.0 if it never does)."""
    if f(hi) < 0:
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return hi


@break_even_acceptance.judge_with
def _judge_break_even(ev: dict) -> Verdict:
    k, c, v = ev["k"], number(ev["cost_ratio"]), number(ev["verify_cost"])
    truth = break_even_alpha(k, c, v)
    cost = k * c + v
    no_bonus = _solve(lambda a: sum(a ** i for i in range(1, k + 1)) - cost)  # forgot the bonus
    free_draft = _solve(lambda a: expected_speedup(a, k, 0.0, v) - 1.0)  # forgot the draft cost
    one_draft = _solve(lambda a: expected_speedup(a, k, c / k, v) - 1.0)  # paid the draft once
    got = number(ev["answer"])
    if not 0.0 <= got <= 1.0:
        return Verdict(False, expected="an acceptance rate between 0 and 1",
                       got=f"{got:g}", hint="α is a probability: give a number in [0, 1]")
    return judge_number(
        got, truth, abs_=0.01, rel=0.0,
        expected=f"α where (1 − α^(k+1)) / (1 − α) = k·c + v for k = {k}, c = {c:g}, v = {v:g} "
                 "(within 0.01)",
        slips=[(no_bonus, "every round also yields one token of the target's own (the "
                "correction or the bonus): the expected tokens start at 1"),
               (free_draft, "each of the k draft steps costs c target steps"),
               (one_draft, "the draft runs once per draft token: k steps of cost c each"),
               (c, "the break-even is not α = c: solve E[tokens per round] = cost per round")],
        hint="find the α at which the tokens a round yields on average equal what the round "
             "costs in target steps (bisection works)")


KV_PROBE_SEED = 10


def kv_probes(seed: int = KV_PROBE_SEED) -> list[dict]:
    """Seeded model shapes and workloads: multi-head, grouped-query and multi-query attention
    (``n_kv_head`` None = one key/value head per query head), 1-, 2- and 4-byte numbers."""
    rng = random.Random(seed)
    out = []
    for i in range(10):
        n_head = rng.choice((4, 8, 12, 16, 32))
        head_dim = rng.choice((32, 64, 128))
        kv = [None, n_head, 1, *(d for d in (2, 4, 8) if n_head % d == 0 and d < n_head)]
        out.append({"n_layer": rng.choice((3, 6, 12, 24, 32)), "n_head": n_head,
                    "n_kv_head": kv[i % 3] if i < 3 else rng.choice(kv),
                    "n_embd": n_head * head_dim, "context": rng.choice((100, 512, 1000, 2048, 4096)),
                    "batch_size": rng.choice((1, 3, 8, 16, 64)),
                    "bytes_per_el": (4, 2, 1)[i % 3]})
    return out


def reference_kv_bytes(n_layer: int, n_head: int, n_kv_head: int | None, n_embd: int,
                       context: int, batch_size: int, bytes_per_el: int) -> int:
    """The library's own count (``ModelConfig.kv_cache_bytes``)."""
    cfg = ModelConfig("probe", n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                      block_size=max(1, context), n_kv_head=n_kv_head)
    return cfg.kv_cache_bytes(batch_size, context, bytes_per_el)


@exercise("kv_bytes", points=2, topic="kv_cache", function=True)
def kv_bytes(fn, seed: int = KV_PROBE_SEED):
    """``fn(n_layer, n_head, n_kv_head, n_embd, context, batch_size, bytes_per_el) -> bytes``
    of the KV cache; ``n_kv_head`` None means one key/value head per query head."""
    return {"seed": int(seed), "outputs": probe_outputs(fn, kv_probes(seed))}


def _kv_slip_hint(got: float, p: dict) -> str:
    want = reference_kv_bytes(**p)
    kv = p["n_head"] if p["n_kv_head"] is None else p["n_kv_head"]
    return first_slip(got, [
            (want / 2, "a cache holds keys AND values"),
            (want * p["n_head"] / kv, "only the key/value heads are cached, not every query head"),
            (want * p["n_embd"] / kv, "each key/value head is one head wide, not the model's "
             "whole width"),
            (want / p["n_layer"], "every layer keeps its own keys and values"),
            (want / p["batch_size"], "each sequence of the batch has its own cache"),
            (want / p["context"], "the cache grows with every position it holds"),
            (want * 8, "that is bits; give bytes"),
            (want / p["bytes_per_el"], "that counts numbers; multiply by the bytes per number")],
        "the cache keeps, for every position of every sequence, what each layer's attention "
        "reads again at the next token", want=want)


@kv_bytes.judge_with
def _judge_kv_bytes(ev: dict) -> Verdict:
    return judge_probed_numbers(
        ev, kv_probes, KV_PROBE_SEED, reference_kv_bytes,
        expected="the KV cache's bytes for unseen model shapes and workloads",
        case=lambda i, p: ", ".join(f"{k}={v}" for k, v in p.items()),
        takes=lambda p: ("n_kv_head=None means multi-head attention: one key/value head per "
                         "query head") if p["n_kv_head"] is None else
        "it takes n_layer, n_head, n_kv_head, n_embd, context, batch_size, bytes_per_el",
        slip_hint=_kv_slip_hint, unit="bytes")


__all__ = ["kv_cache_bytes", "break_even_acceptance", "kv_bytes"]
