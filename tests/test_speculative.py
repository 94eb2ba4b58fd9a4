"""Speculative decoding: greedy output identical to the target's, sampling keeps the target's
distribution (chi-square p-values), the speed-up formula's properties."""

import numpy as np
import pytest
import torch

from efflab.core.config import ModelConfig
from efflab.core.model import build_model
from efflab.systems.speculative import (
    CachedLM,
    accept_or_resample,
    best_k,
    break_even_alpha,
    chi_square_pvalue,
    expected_speedup,
    expected_tokens_per_round,
    second_token_distribution,
    speculative_generate,
)


class BigramLM:
    """A toy LM with CachedLM's interface: next-token logits depend on the last token only.
    Its exact sequence distribution is known, which the statistical test needs."""

    def __init__(self, table: torch.Tensor, max_len: int = 64):
        self.table = table  # (V, V) logits: row = previous token
        self.max_len = max_len
        self.ids: list[int] = []
        self.calls = 0

    @property
    def length(self):
        return len(self.ids)

    def start(self, ids):
        self.ids = []
        return self.extend(ids)[-1]

    def extend(self, ids):
        self.ids += list(ids)
        self.calls += 1
        return self.table[torch.tensor(self.ids[-len(ids):])]  # (T, V)

    def rewind(self, n):
        assert 0 <= n <= len(self.ids)
        self.ids = self.ids[:n]


def _tables(V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(V, V, generator=g) * 1.5
    q = p + torch.randn(V, V, generator=g)  # a draft that is close but not equal
    return p, q


# ---------------------------------------------------------------- the formula

def test_expected_tokens_limits():
    assert expected_tokens_per_round(0.0, 4) == 1.0  # every draft rejected: one target token
    assert expected_tokens_per_round(1.0, 4) == 5.0  # every draft kept: k + the bonus
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_speedup_and_break_even():
    assert expected_speedup(0.8, 3, 0.0) > expected_speedup(0.6, 3, 0.0)
    assert expected_speedup(0.8, 3, 0.1) > expected_speedup(0.8, 3, 0.5)
    a = break_even_alpha(2, 0.5)
    assert expected_speedup(a, 2, 0.5) == pytest.approx(1.0, abs=1e-9)
    assert expected_speedup(a - 0.05, 2, 0.5) < 1.0 < expected_speedup(a + 0.05, 2, 0.5)
    assert break_even_alpha(2, 1.0) == 1.0 or expected_speedup(1.0, 2, 1.0) >= 1  # c=1 cannot pay
    assert break_even_alpha(4, 2.0) == 1.0
    assert best_k(0.2, 0.5) == 0  # a bad draft: do not speculate
    assert best_k(0.95, 0.02) >= 5
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_round(1.5, 2)


# ---------------------------------------------------------------- the rule

def test_accept_or_resample_keeps_p():
    """One step of the rule, many times: token counts match p (draft tokens drawn from q)."""
    V, n = 5, 4000
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(V, generator=g), 0)
    q = torch.softmax(torch.randn(V, generator=g) * 2, 0)
    counts = np.zeros(V)
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=g))
        counts[accept_or_resample(p, q, d, g)[1]] += 1
    assert chi_square_pvalue(counts, p.numpy())["p_value"] > 1e-3
    # and the test has power: the draft's own distribution is rejected
    assert chi_square_pvalue(counts, q.numpy())["p_value"] < 1e-6


def test_chi_square_pvalue_calibrated():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    ps = [chi_square_pvalue(np.bincount(rng.choice(4, 2000, p=probs), minlength=4), probs)["p_value"]
          for _ in range(200)]
    assert 0.3 < np.mean(ps) < 0.7  # uniform under the null
    assert np.mean(np.array(ps) < 0.05) < 0.12


# ---------------------------------------------------------------- whole decoding on the toy

def test_sampled_speculation_keeps_the_joint_distribution():
    """Three tokens from a bigram target with a different bigram draft: the joint counts of
    (x1, x2, x3) fit the target's exact joint distribution, not the draft's."""
    V, n, k = 3, 1500, 2
    p_tab, q_tab = _tables(V)
    target, draft = BigramLM(p_tab), BigramLM(q_tab)
    g = torch.Generator().manual_seed(0)
    counts = np.zeros((V, V, V))
    for _ in range(n):
        t = speculative_generate(target, draft, [0], 3, k, temperature=1.0, generator=g).tokens
        counts[t[0], t[1], t[2]] += 1
    P = torch.softmax(p_tab, -1).numpy()
    Q = torch.softmax(q_tab, -1).numpy()
    joint_p = P[0][:, None, None] * P[:, :, None] * P[None, :, :]  # p(a|0) p(b|a) p(c|b)
    joint_q = Q[0][:, None, None] * Q[:, :, None] * Q[None, :, :]
    assert chi_square_pvalue(counts, joint_p)["p_value"] > 1e-3
    assert chi_square_pvalue(counts, joint_q)["p_value"] < 1e-6


def test_a_wrong_rule_is_caught():
    """Keeping every draft token (no rejection) gives the draft's joint distribution: the same
    test must reject it, or it could not catch a broken implementation."""
    V, n = 3, 1500
    p_tab, q_tab = _tables(V)
    g = torch.Generator().manual_seed(0)
    P = torch.softmax(p_tab, -1).numpy()
    Q = torch.softmax(q_tab, -1)
    counts = np.zeros((V, V, V))
    for _ in range(n):  # "always accept": every token straight from the draft
        a = int(torch.multinomial(Q[0], 1, generator=g))
        b = int(torch.multinomial(Q[a], 1, generator=g))
        c = int(torch.multinomial(Q[b], 1, generator=g))
        counts[a, b, c] += 1
    joint_p = P[0][:, None, None] * P[:, :, None] * P[None, :, :]
    assert chi_square_pvalue(counts, joint_p)["p_value"] < 1e-6


def test_greedy_on_the_toy_matches_target_and_counts_add_up():
    p_tab, q_tab = _tables(7, seed=3)
    target, draft = BigramLM(p_tab), BigramLM(q_tab)
    ref = [3]
    for _ in range(20):
        ref.append(int(p_tab[ref[-1]].argmax()))
    for k in (0, 1, 3, 8):
        r = speculative_generate(target, draft, [3], 20, k)
        assert r.tokens == ref[1:], k
        assert len(r.tokens) == 20
        assert r.accepted <= r.proposed and r.rounds == r.target_calls
        assert len(r.tokens) == r.accepted + r.rounds  # each round: kept drafts + one own token


# ---------------------------------------------------------------- real GPTs

@pytest.fixture(scope="module")
def gpts():
    target = build_model(ModelConfig("t", 2, 2, 32, 48), seed=1)
    draft = build_model(ModelConfig("d", 1, 2, 32, 48), seed=2)
    # sharpen the random target so greedy decoding is not near-uniform noise
    with torch.no_grad():
        target.wte.weight.mul_(8)
    return target.eval(), draft.eval()


def test_greedy_speculation_is_the_targets_greedy_output(gpts):
    """30 prompts (the benchmark checks 100 on the shipped models), every k from 1 to 5; the
    reference is the target's own greedy generation, batched per prompt length."""
    target, draft = gpts
    tl, dl = CachedLM(target), CachedLM(draft)
    g = torch.Generator().manual_seed(0)
    for n in (1, 4, 7):  # prompt lengths
        prompts = torch.randint(0, 256, (10, n), generator=g)  # (10, n)
        ref = target.generate(prompts, 12, temperature=0)[:, n:]  # (10, 12)
        for i in range(10):
            k = 1 + (i + n) % 5
            got = speculative_generate(tl, dl, prompts[i].tolist(), 12, k).tokens
            assert got == ref[i].tolist(), (n, i, k)


def test_a_draft_equal_to_the_target_is_always_accepted(gpts):
    target, _ = gpts
    r = speculative_generate(CachedLM(target), CachedLM(target), [1, 2, 3], 30, 4,
                             temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert r.acceptance_rate == 1.0 and r.rejections == 0
    assert r.rounds == 6  # 30 tokens, 5 per round (4 drafts + bonus)


def test_second_token_distribution_sums_to_one_and_matches_sampling(gpts):
    target, _ = gpts
    p2 = second_token_distribution(target, [5, 6], 1.0)
    assert float(p2.sum()) == pytest.approx(1.0, abs=1e-5)
    g = torch.Generator().manual_seed(0)
    out = target.generate(torch.tensor([[5, 6]]).expand(2000, -1), 2, temperature=1.0,
                          generator=g)  # (2000, 4): 2000 independent samples in one batch
    counts = np.bincount(out[:, -1].numpy(), minlength=256)
    test = chi_square_pvalue(counts, p2.numpy())
    assert test["df"] >= 5 and test["p_value"] > 1e-3
    # the first token's distribution is a different one: the test tells them apart
    p1 = torch.softmax(target(torch.tensor([[5, 6]]))[0][0, -1], -1)
    assert chi_square_pvalue(counts, p1.detach().numpy())["p_value"] < 1e-3


def test_bad_arguments_are_named(gpts):
    target, draft = gpts
    with pytest.raises(ValueError, match="k="):
        speculative_generate(CachedLM(target), CachedLM(draft), [1], 5, -1)
    with pytest.raises(ValueError, match="exceeds the context"):
        speculative_generate(CachedLM(target), CachedLM(draft), [1] * 40, 20, 2)
