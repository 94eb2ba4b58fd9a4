"""Optimizer-side memory: AdamW with 8- and 4-bit moments (bytes as the formula, ≤ 0.27× fp32 at
8 bits, tracks fp32 AdamW, agrees with torchao where installed) and gradient accumulation
(k micro-batches give the big batch's gradients to 1e-6, with less activation memory)."""

import pytest
import torch

from efflab.core.config import ModelConfig, get_preset
from efflab.core.model import build_model
from efflab.studies.finetune_memory import accumulated_gradients, accumulation_check
from efflab.techniques.lowbit_optim import (
    AdamWLowBit,
    codebooks,
    make_lowbit_optimizer,
    optimizer_state_bytes,
    state_bytes_per_param,
)

CFG = ModelConfig("t", n_layer=2, n_head=4, n_embd=64, block_size=32)


def _x(seed=1, B=8, T=32):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def _train(model, opt, steps=8):
    losses = []
    for s in range(steps):
        _, loss = model(_x(s), _x(s + 100))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_codebooks():
    m8, v8 = codebooks(8)
    m4, v4 = codebooks(4)
    assert (m8.numel(), v8.numel(), m4.numel(), v4.numel()) == (256, 256, 16, 16)
    assert v8.min() == 0 and v4.min() > 0  # 4-bit exp_avg_sq: no zero (it is a denominator)
    with pytest.raises(ValueError, match="bits"):
        AdamWLowBit([torch.nn.Parameter(torch.zeros(4))], bits=2)


@pytest.mark.parametrize("bits", [8, 4])
def test_state_bytes_are_the_formula_and_small_params_stay_fp32(bits):
    model = build_model(CFG, 0)
    opt = make_lowbit_optimizer(model, bits=bits)
    _train(model, opt, steps=1)
    want = 0
    for p in model.parameters():
        big = opt.quantized(p)
        assert big == ("exp_avg_codes" in opt.state[p])
        want += p.numel() * (state_bytes_per_param(bits) if big else 8)
    got = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
              if isinstance(v, torch.Tensor))
    assert got == want
    assert optimizer_state_bytes(opt) == got  # no step tensors: step is a Python int


@pytest.mark.parametrize("bits,most", [(8, 0.27), (4, 0.14)])
def test_cpu_small_state_is_a_quarter_or_an_eighth_of_fp32(bits, most):
    model = build_model(get_preset("cpu-small"), 0)
    x = _x(B=2)
    opts = [torch.optim.AdamW(model.parameters()), make_lowbit_optimizer(model, bits=bits)]
    for o in opts:
        model(x, x)[1].backward()
        o.step()
        o.zero_grad(set_to_none=True)
    fp32 = sum(v.numel() * v.element_size() for st in opts[0].state.values()
               for k, v in st.items() if k != "step")
    assert fp32 == 8 * sum(p.numel() for p in model.parameters())
    assert optimizer_state_bytes(opts[1]) / fp32 <= most


@pytest.mark.parametrize("bits,tol", [(8, 0.02), (4, 0.05)])
def test_tracks_fp32_adamw(bits, tol):
    a, b = build_model(CFG, 0), build_model(CFG, 0)
    fp32 = _train(a, torch.optim.AdamW(a.parameters(), lr=3e-3, weight_decay=0.1))
    low = _train(b, AdamWLowBit(b.parameters(), lr=3e-3, weight_decay=0.1, bits=bits))
    assert low[-1] < low[0]
    assert abs(low[-1] - fp32[-1]) / fp32[-1] < tol


def test_one_param_equals_fp32_adamw_when_kept_in_fp32():
    p = torch.nn.Parameter(torch.randn(100))  # < 4096: fp32 moments, the same algorithm
    q = torch.nn.Parameter(p.detach().clone())
    o1 = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1)
    o2 = AdamWLowBit([q], lr=1e-2, weight_decay=0.1)
    for s in range(5):
        g = torch.randn(100, generator=torch.Generator().manual_seed(s))
        p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_agrees_with_torchao(bits):
    ao = pytest.importorskip("torchao.optim")
    Ref = ao.AdamW8bit if bits == 8 else ao.AdamW4bit
    w0 = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    ps = [torch.nn.Parameter(w0.clone()) for _ in range(3)]
    opts = (AdamWLowBit([ps[0]], lr=1e-2, bits=bits), Ref([ps[1]], lr=1e-2),
            torch.optim.AdamW([ps[2]], lr=1e-2))
    for s in range(10):
        g = torch.randn(256, 256, generator=torch.Generator().manual_seed(s)) * 0.01 * (s + 1)
        for p, o in zip(ps, opts):
            p.grad = g.clone()
            o.step()
    ours_ref = (ps[0] - ps[1]).abs().max().item()
    ref_fp32 = (ps[1] - ps[2]).abs().max().item()
    assert ours_ref < 0.2 * ref_fp32  # the same quantized algorithm, not just near fp32


def test_accumulated_gradients_equal_the_big_batch():
    model = build_model(CFG, 0)
    x, y = _x(B=8), _x(2, B=8)
    df = accumulation_check(model, x, y, ks=(1, 2, 4, 8))
    assert df.rel_diff.iloc[0] == 0
    assert (df.rel_diff <= 1e-6).all()
    # the slip: summing k micro-batch means without scaling is k times the gradient
    g1 = accumulated_gradients(model, x, y, 1)
    model.zero_grad()
    for xs, ys in zip(x.chunk(4), y.chunk(4)):
        model(xs, ys)[1].backward()
    n = "h.0.mlp.c_fc.weight"
    assert torch.allclose(dict(model.named_parameters())[n].grad, 4 * g1[n], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="divisor"):
        accumulated_gradients(model, x, y, 3)


def test_accumulation_verdict_reads_the_measured_peaks(monkeypatch):
    import pandas as pd

    import efflab.studies.finetune_memory as fm

    mib = 2**20
    mem = pd.DataFrame({"k": [1, 2, 4], "micro_batch": [8, 4, 2],
                        "peak_bytes": [42 * mib, 26 * mib, 18 * mib], "activations": [0] * 3})
    chk = pd.DataFrame({"k": [1, 2, 4], "rel_diff": [0.0, 1e-7, 2e-7]})
    assert fm.accumulation_budget(mem) == 30 * mib
    said = fm.accumulation_verdict(chk, mem)  # budget 30 MiB, halfway between 42 and 18
    assert "(within 1e-6)" in said and "does not fit" in said
    assert "as 2 micro-batches of 4 it fits" in said
    # no largest batch is stated before one is measured (a line through these peaks says 5)
    assert "largest_batch_under_budget" in said and "is 5" not in said
    worse = fm.accumulation_verdict(chk.assign(rel_diff=[0.0, 1e-3, 1e-3]), mem)
    assert "OUTSIDE 1e-6" in worse
    _fake_peaks(monkeypatch)
    lb = fm.largest_batch_under_budget("cpu-tiny", 400, ks=(1, 2, 8))
    assert fm.largest_batch_verdict(lb) in fm.accumulation_verdict(chk, mem, lb)


# ---- the largest batch under a budget, measured ------------------------------------------------

def _fake_peaks(monkeypatch, calls=None):
    """A step whose peak is piecewise linear, as the tracked one is: the optimizer step peaks at
    small batches (100 + 10·b), the end of forward at larger ones (60 + 30·b); k ≥ 2 micro-batches
    keep 50 bytes of gradients alive during the next forward (110 + 30·b), plus k input bytes."""
    import efflab.studies.finetune_memory as fm

    def peak(preset, b, seq_len, k=1, **_):
        if calls is not None:
            calls.append((b, k))
        p = max(100 + 10 * b, 60 + 30 * b) if k == 1 else max(100 + 10 * b + k, 110 + 30 * b)
        return {"peak_bytes": p}

    monkeypatch.setattr(fm, "step_peak", peak)


def test_largest_batch_is_the_measured_edge_not_the_lines_prediction(monkeypatch):
    from efflab.studies.finetune_memory import largest_batch_under_budget, largest_batch_verdict

    calls = []
    _fake_peaks(monkeypatch, calls)
    df = largest_batch_under_budget("cpu-tiny", 400, ks=(1, 2, 4, 8))
    a = df.attrs
    # the line through batches 1 and 2 (100 + 10·b) predicts 30; the measured edge is 11
    assert a["prediction"] == 30 and (30, 1) in calls
    assert a["largest"] == 11 and a["confirmed"] and not a["bound_hit"]
    assert {(11, 1), (12, 1)} <= set(calls)
    one = df[df.method == "one batch"].set_index("micro_batch")
    assert one.loc[11, "role"] == "largest" and one.loc[11, "fits"]
    assert one.loc[12, "role"] == "over budget" and not one.loc[12, "fits"]
    assert df[df.method == "line"].source.tolist() == ["predicted"]
    # accumulation keeps the gradients alive: at k = 8 micro-batches of 9 fit, of 10 do not
    assert a["largest_accumulated"] == 9 and a["confirmed_accumulated"]
    assert {(9, 8), (10, 8)} <= set(calls) and not any(k in (2, 4) for _, k in calls)
    acc = df[(df.method == "accumulation") & (df.role == "largest")].set_index("k")
    assert (acc.effective_batch == acc.index * acc.micro_batch).all()
    assert acc.effective_batch.to_dict() == {2: 18, 4: 36, 8: 72}
    assert acc.source.to_dict() == {2: "predicted", 4: "predicted", 8: "measured"}
    assert a["measurements"] == len(calls) <= 16
    said = largest_batch_verdict(df)
    assert "predicted a largest batch of 30" in said and "largest batch in one piece is 11" in said
    assert "19 too high" in said and "8 micro-batches of 9" in said and "72 for k = 8" in said
    assert "micro-batches of 10 measured over it" in said


def test_the_measurement_bound_is_kept_and_said(monkeypatch):
    from efflab.studies.finetune_memory import largest_batch_under_budget, largest_batch_verdict

    calls = []
    _fake_peaks(monkeypatch, calls)
    df = largest_batch_under_budget("cpu-tiny", 400, ks=(1,), max_measurements=3)
    assert len(calls) == 3 and df.attrs["bound_hit"] and not df.attrs["confirmed"]
    assert "NOT confirmed" in largest_batch_verdict(df)
    with pytest.raises(ValueError, match="max_measurements"):
        largest_batch_under_budget("cpu-tiny", 400, max_measurements=2)


def test_largest_batch_on_cpu_tiny_fits_and_the_next_is_over_measured_again():
    """Real tracked steps: every claim of the frame is measured again, independently."""
    from efflab.studies.finetune_memory import (
        held_apart_corpus,
        largest_batch_under_budget,
        step_peak,
    )

    corpus = held_apart_corpus()

    def peak(b, k=1):
        return step_peak("cpu-tiny", b, 16, k, corpus=corpus)["peak_bytes"]

    budget = (peak(6) + peak(7)) // 2  # past the optimizer-step regime: the line is wrong here
    df = largest_batch_under_budget("cpu-tiny", budget, seq_len=16, ks=(1, 2, 4))
    a = df.attrs
    lo, b_acc = a["largest"], a["largest_accumulated"]
    assert a["confirmed"] and a["confirmed_accumulated"] and lo >= 1 and b_acc >= 1
    assert peak(lo) <= budget < peak(lo + 1)
    assert lo == 6 and a["prediction"] != lo  # the unconfirmed prediction would be wrong
    assert peak(b_acc, 4) <= budget < peak(b_acc + 1, 4)
    rows = df[df.method == "accumulation"]
    assert (rows.effective_batch == rows.k * rows.micro_batch).all()
    measured = df[df.source == "measured"]
    assert all(int(r.peak_bytes) == peak(int(r.micro_batch), int(r.k))
               for r in measured.itertuples())


def test_a_budget_below_the_smallest_step_is_refused_with_its_need():
    from efflab.studies.finetune_memory import largest_batch_under_budget, step_peak

    need = step_peak("cpu-tiny", 1, 16)["peak_bytes"]
    with pytest.raises(ValueError, match=rf"budget_bytes={need - 1:,} .*below the smallest step"
                                         rf".*expected budget_bytes >= {need:,}"):
        largest_batch_under_budget("cpu-tiny", need - 1, seq_len=16)
    with pytest.raises(ValueError, match="budget_bytes=0"):
        largest_batch_under_budget("cpu-tiny", 0, seq_len=16)
