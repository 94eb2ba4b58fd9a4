"""Speculative decoding: a small draft model guesses k tokens, the target checks them in one pass.

Decoding one token at a time leaves a small model's forward pass mostly overhead and weight
reads: checking k + 1 tokens at once costs about what checking one does. A draft model (cheap,
worse) proposes ``d_1 .. d_k``; the target runs once over them and keeps the longest prefix it
agrees with, plus one token of its own. Every round therefore yields between 1 and k + 1 tokens
for one target forward.

- **Greedy** (temperature 0): keep ``d_i`` while it is the target's own argmax. The output is the
  target's greedy output exactly (``tests/test_speculative.py`` checks 100 prompts).
- **Sampled** (Leviathan et al. 2023; Chen et al. 2023): keep ``d_i ~ q`` with probability
  ``min(1, p(d_i) / q(d_i))``; at the first rejection draw from ``norm(max(0, p - q))``; if all k
  are kept, draw a bonus token from the target's next distribution. Every emitted token is then
  distributed exactly as the target's (tested with a chi-square p-value).

The expected speed-up (Leviathan et al., eq. 1 and Thm. 3.8) follows from the per-token
acceptance rate α, the draft length k and the cost ratio c = draft step / target step:
``E[tokens per round] = (1 - α^(k+1)) / (1 - α)`` and
``speed-up = E[tokens per round] / (k·c + v)``, with v the cost of the verify pass in target
decode steps (1 in the paper's idealisation; measured here).

Shapes: T tokens in a call, V vocabulary size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from efflab.core.model import GPT, KVCache
from efflab.measurement.timing import summarize

# ----------------------------------------------------------------------------- formulas

def expected_tokens_per_round(alpha: float, k: int) -> float:
    """Tokens one draft-then-verify round yields on average: (1 - α^(k+1)) / (1 - α).

    Draft token i is kept only if the i - 1 before it were (each with probability α), and the
    round always ends with one token of the target's own (a correction or a bonus).
    """
    _check_alpha(alpha)
    if k < 0:
        raise ValueError(f"k={k!r} is not allowed; k must be an integer >= 0")
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float, verify_cost: float = 1.0) -> float:
    """Speed-up over plain decoding: E[tokens per round] / (k·c + v).

    ``cost_ratio`` c = one draft step / one target step; ``verify_cost`` v = the target's pass
    over k + 1 tokens / one target step (1 when the pass is bound by reading weights, as on a
    GPU at batch 1; more when compute grows with the tokens checked).
    """
    if cost_ratio < 0 or verify_cost <= 0:
        raise ValueError(f"cost_ratio={cost_ratio!r}, verify_cost={verify_cost!r}: need "
                         "cost_ratio >= 0 and verify_cost > 0")
    return expected_tokens_per_round(alpha, k) / (k * cost_ratio + verify_cost)


def break_even_alpha(k: int, cost_ratio: float, verify_cost: float = 1.0) -> float:
    """The acceptance rate at which speculation with k drafts is exactly as fast as plain
    decoding (speed-up 1); below it speculation is a slow-down. 1.0 if even α = 1 cannot pay.

    The speed-up grows monotonically with α, so a bisection finds the crossing.
    """
    if k < 1:
        raise ValueError(f"k={k!r} is not allowed; k must be an integer >= 1")
    if expected_speedup(1.0, k, cost_ratio, verify_cost) < 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_speedup(mid, k, cost_ratio, verify_cost) < 1.0:
            lo = mid
        else:
            hi = mid
    return hi


def best_k(alpha: float, cost_ratio: float, verify_cost: float = 1.0, k_max: int = 16) -> int:
    """The draft length with the highest expected speed-up (0 = do not speculate)."""
    best, best_s = 0, 1.0 / verify_cost if verify_cost else 1.0
    best_s = 1.0  # k = 0 is plain decoding: speed-up 1 by definition
    for k in range(1, k_max + 1):
        s = expected_speedup(alpha, k, cost_ratio, verify_cost)
        if s > best_s:
            best, best_s = k, s
    return best


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha={alpha!r} is not allowed; alpha must be a number in [0, 1]")


# ----------------------------------------------------------------------------- a cached LM

class CachedLM:
    """A GPT behind the three calls speculative decoding needs, with one KV cache (batch 1).

    ``start(ids)`` prefills and returns the (V,) logits for the next position; ``extend(ids)``
    appends tokens and returns (T, V) logits, row i predicting the token after ``ids[i]``;
    ``rewind(n)`` forgets everything after the first n positions (a rejected draft). Rewinding
    is free: the cache is preallocated and later writes overwrite the forgotten slots.
    """

    def __init__(self, model: GPT, max_len: int | None = None):
        self.model = model.eval()
        p = next(model.parameters())
        self.max_len = max_len or model.cfg.block_size
        self.cache = KVCache(model.cfg, 1, self.max_len, p.device, p.dtype)
        self.device = p.device
        self.calls = 0  # forward passes so far (the cost a round pays)

    @property
    def length(self) -> int:
        return self.cache.pos

    @torch.no_grad()
    def start(self, ids: list[int]) -> torch.Tensor:
        self.cache.pos = 0
        return self.extend(ids)[-1]

    @torch.no_grad()
    def extend(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        logits, _ = self.model(x, cache=self.cache)  # (1, T, V)
        self.calls += 1
        return logits[0].float()  # (T, V)

    def rewind(self, length: int) -> None:
        if not 0 <= length <= self.cache.pos:
            raise ValueError(f"rewind to {length} positions; the cache holds {self.cache.pos}")
        self.cache.pos = length


# ----------------------------------------------------------------------------- decoding

@dataclass
class SpecResult:
    """What one speculative generation produced and what it cost."""

    tokens: list[int]          # the generated tokens (prompt excluded)
    k: int
    rounds: int = 0            # target verify passes
    proposed: int = 0          # draft tokens proposed
    accepted: int = 0          # draft tokens kept
    rejections: int = 0        # rounds that ended on a rejected draft token
    target_calls: int = 0
    draft_calls: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Per-token acceptance probability α: kept / (kept + rejected). Each draft token the
        target looks at is kept or rejected; tokens after a rejection are never looked at."""
        seen = self.accepted + self.rejections
        return self.accepted / seen if seen else float("nan")

    @property
    def tokens_per_round(self) -> float:
        return len(self.tokens) / self.rounds if self.rounds else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("tokens")
        d.update(n_tokens=len(self.tokens), acceptance_rate=self.acceptance_rate,
                 tokens_per_round=self.tokens_per_round)
        return d


def _probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(logits.float() / temperature, dim=-1)  # (..., V)


def _draw(p: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(p, 1, generator=generator))


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int,
                       generator: torch.Generator | None = None) -> tuple[bool, int]:
    """The speculative sampling rule for one draft token ``token`` drawn from ``q``.

    Keep it with probability min(1, p[token] / q[token]); otherwise return a token drawn from
    the residual norm(max(0, p - q)). Either way the returned token is distributed as p.
    p, q: (V,) probabilities of target and draft. Returns (kept, token).
    """
    u = float(torch.rand((), generator=generator))
    if u * float(q[token]) <= float(p[token]):  # u < p/q without dividing by a tiny q
        return True, token
    residual = (p - q).clamp_min(0.0)
    total = float(residual.sum())
    if total <= 0.0:  # p == q up to rounding: any rejection was rounding noise
        return False, _draw(p, generator)
    return False, _draw(residual / total, generator)


def speculative_generate(target: CachedLM, draft: CachedLM, prompt: list[int],
                         new_tokens: int, k: int, temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> SpecResult:
    """Generate ``new_tokens`` after ``prompt`` with the draft proposing ``k`` tokens a round.

    ``temperature`` 0 is greedy (identical to the target's greedy output); above 0 tokens are
    sampled and distributed exactly as the target's at that temperature. ``k = 0`` is plain
    decoding with the target (the baseline, through the same code path).
    """
    if k < 0:
        raise ValueError(f"k={k!r} is not allowed; k must be an integer >= 0")
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if len(prompt) + new_tokens > min(target.max_len, draft.max_len if k else target.max_len):
        raise ValueError(f"prompt ({len(prompt)}) + new_tokens ({new_tokens}) exceeds the "
                         f"context ({target.max_len} target, {draft.max_len} draft)")
    greedy = temperature <= 0
    res = SpecResult(tokens=[], k=k)
    t0 = time.perf_counter()
    t_calls, d_calls = target.calls, draft.calls
    seq = list(prompt)
    # both caches hold seq[:-1]; the last token is fed at the start of the next round
    target.start(seq[:-1]) if len(seq) > 1 else target.rewind(0)
    if k:
        draft.start(seq[:-1]) if len(seq) > 1 else draft.rewind(0)
    while len(seq) - len(prompt) < new_tokens:
        left = new_tokens - (len(seq) - len(prompt))
        kk = min(k, left - 1)  # a round yields up to kk + 1 tokens: never overshoot
        # 1. the draft proposes kk tokens, one forward each (first catching up on seq)
        drafts: list[int] = []
        qs: list[torch.Tensor] = []
        if kk:
            logits = draft.extend(seq[draft.length:])[-1]  # (V,)
            for i in range(kk):
                if greedy:
                    d = int(logits.argmax())
                else:
                    q = _probs(logits, temperature)
                    qs.append(q)
                    d = _draw(q, generator)
                drafts.append(d)
                if i + 1 < kk:
                    logits = draft.extend([d])[-1]
        # 2. the target scores the last committed token and every draft in one pass
        base = len(seq) - 1  # the target cache holds seq[:-1]
        target.rewind(base)
        t_logits = target.extend([seq[-1]] + drafts)  # (kk + 1, V)
        res.rounds += 1
        res.proposed += kk
        # 3. keep the agreed prefix, then one token of the target's own
        kept = 0
        nxt = None
        for i, d in enumerate(drafts):
            if greedy:
                want = int(t_logits[i].argmax())
                ok, tok = want == d, want
            else:
                ok, tok = accept_or_resample(_probs(t_logits[i], temperature), qs[i], d,
                                             generator)
            if not ok:
                nxt = tok
                res.rejections += 1
                break
            kept += 1
        if nxt is None:  # every draft kept: the bonus token comes free with the same pass
            last = t_logits[kk]
            nxt = int(last.argmax()) if greedy else _draw(_probs(last, temperature), generator)
        res.accepted += kept
        seq.extend(drafts[:kept] + [nxt])
        # both caches must hold seq[:-1] again: drop what the rejected drafts wrote
        target.rewind(len(seq) - 1)
        if kk:
            draft.rewind(min(draft.length, len(seq) - 1))
    res.tokens = seq[len(prompt):]
    res.target_calls = target.calls - t_calls
    res.draft_calls = draft.calls - d_calls
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- measuring

def step_costs(target: GPT, draft: GPT, context: int, k_max: int, repeats: int = 30) -> dict:
    """Seconds for one decode step of each model and for the target's pass over k + 1 tokens,
    at ``context`` cached positions: the c and v of :func:`expected_speedup`, measured.
    The calls are interleaved (one of each per repeat), so a change in the machine's load
    shifts every number alike instead of biasing their ratios."""
    tl, dl = CachedLM(target), CachedLM(draft)
    prompt = list(range(32, 32 + context))
    tl.start(prompt)
    dl.start(prompt)
    calls = [("target", tl, 1), ("draft", dl, 1)] + [(k, tl, k + 1) for k in range(1, k_max + 1)]
    samples: dict = {name: [] for name, _, _ in calls}
    for r in range(repeats + 2):
        for name, lm, n in calls:
            lm.rewind(context)
            t0 = time.perf_counter()
            lm.extend([65] * n)
            if r >= 2:  # two warm-up rounds
                samples[name].append(time.perf_counter() - t0)
    out = {"target_step_ms": summarize(samples["target"]),
           "draft_step_ms": summarize(samples["draft"]),
           "verify_ms": {k: summarize(samples[k]) for k in range(1, k_max + 1)}}
    t = out["target_step_ms"]["median"]
    out["cost_ratio"] = out["draft_step_ms"]["median"] / t
    out["verify_cost"] = {k: v["median"] / t for k, v in out["verify_ms"].items()}
    return out


def speculation_sweep(target: GPT, draft: GPT, prompts: list[list[int]], ks, new_tokens: int,
                      temperature: float = 0.0, seed: int = 0, on_row=None) -> list[dict]:
    """Tokens/s and acceptance for each draft length k over the same prompts (k = 0: the
    target alone), interleaved. One row per (k, prompt) with time, tokens and acceptance."""
    tl = CachedLM(target)
    dl = CachedLM(draft)
    rows = []
    ks = list(ks)
    for i, prompt in enumerate(prompts):  # every k on one prompt before the next prompt, the
        for j in range(len(ks)):          # order rotated: load changes hit every k alike
            k = ks[(i + j) % len(ks)]
            g = torch.Generator().manual_seed(seed + i)
            r = speculative_generate(tl, dl, prompt, new_tokens, k, temperature, g)
            row = {"k": k, "prompt": i, **r.to_dict(),
                   "tokens_per_s": len(r.tokens) / r.seconds if r.seconds else float("nan")}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def summarize_sweep(rows: list[dict], costs: dict | None = None) -> list[dict]:
    """Per k: tokens/s (median, p25, p75, n over prompts), pooled acceptance rate α, speed-up
    over k = 0, and — given measured ``costs`` — the formula's predicted speed-up at that α."""
    ks = sorted({r["k"] for r in rows})
    base = None
    out = []
    for k in ks:
        rs = [r for r in rows if r["k"] == k]
        tps = np.array([r["tokens_per_s"] for r in rs])
        acc = sum(r["accepted"] for r in rs)
        rej = sum(r["rejections"] for r in rs)
        alpha = acc / (acc + rej) if acc + rej else float("nan")
        med = float(np.median(tps))
        if k == 0:
            base = med
        row = {"k": k, "tokens_per_s": med, "tokens_per_s_p25": float(np.percentile(tps, 25)),
               "tokens_per_s_p75": float(np.percentile(tps, 75)), "n": len(rs),
               "acceptance_rate": alpha,
               "tokens_per_round": sum(r["n_tokens"] for r in rs) / sum(r["rounds"] for r in rs)}
        row["speedup"] = med / base if base else float("nan")
        if costs is not None and k > 0 and not math.isnan(alpha):
            v = costs["verify_cost"].get(k, costs["verify_cost"][max(costs["verify_cost"])])
            row["predicted_speedup"] = expected_speedup(alpha, k, costs["cost_ratio"], v)
            row["predicted_speedup_ideal"] = expected_speedup(alpha, k, costs["cost_ratio"], 1.0)
        elif k == 0:
            row["predicted_speedup"] = row["predicted_speedup_ideal"] = 1.0
        out.append(row)
    return out


# ----------------------------------------------------------------------------- statistics

def chi_square_pvalue(counts, probs, min_expected: float = 5.0) -> dict:
    """Pearson's goodness-of-fit test of observed ``counts`` against ``probs``.

    Cells expected to hold fewer than ``min_expected`` are pooled into one, as the χ²
    approximation needs. p = Q(df/2, χ²/2), the regularised upper incomplete gamma function.
    A small p (say < 0.001) means the samples are unlikely to come from ``probs``.
    """
    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    probs = probs / probs.sum()
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = list(counts[big])
    exp = list(expected[big])
    if (~big).any():
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
    obs, exp = np.array(obs), np.array(exp)
    keep = exp > 0
    stat = float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
    df = int(keep.sum()) - 1
    if df < 1:
        return {"chi2": stat, "df": df, "p_value": 1.0, "n": int(n)}
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    return {"chi2": stat, "df": df, "p_value": p, "n": int(n)}


@torch.no_grad()
def second_token_distribution(target: GPT, prompt: list[int], temperature: float) -> torch.Tensor:
    """The exact (V,) distribution of the 2nd sampled token after ``prompt``:
    P(x₂) = Σ_x₁ p(x₁ | prompt) · p(x₂ | prompt, x₁), one batched forward over every x₁."""
    V = target.cfg.vocab_size
    dev = next(target.parameters()).device
    x = torch.tensor([prompt], device=dev)  # (1, T)
    p1 = _probs(target(x)[0][0, -1], temperature)  # (V,)
    both = torch.cat([x.expand(V, -1), torch.arange(V, device=dev)[:, None]], dim=1)  # (V, T+1)
    p2 = _probs(target(both)[0][:, -1], temperature)  # (V, V): row x₁
    return (p1[:, None] * p2).sum(0)


def sampling_test(target: GPT, draft: GPT, prompt: list[int], k: int, trials: int,
                  temperature: float = 1.0, seed: int = 0) -> dict:
    """Run sampled speculative decoding ``trials`` times for 2 tokens and test the 2nd token's
    counts against the target's exact distribution (the 1st is tested too). Returns both
    p-values; under a correct implementation they are uniform on [0, 1]."""
    tl, dl = CachedLM(target), CachedLM(draft)
    g = torch.Generator().manual_seed(seed)
    V = target.cfg.vocab_size
    first, second = np.zeros(V), np.zeros(V)
    for _ in range(trials):
        r = speculative_generate(tl, dl, prompt, 2, k, temperature, g)
        first[r.tokens[0]] += 1
        second[r.tokens[1]] += 1
    with torch.no_grad():
        x = torch.tensor([prompt], device=next(target.parameters()).device)
        p1 = _probs(target(x)[0][0, -1], temperature).cpu().numpy()
    p2 = second_token_distribution(target, prompt, temperature).cpu().numpy()
    return {"first": chi_square_pvalue(first, p1), "second": chi_square_pvalue(second, p2),
            "trials": trials, "k": k, "temperature": temperature}
