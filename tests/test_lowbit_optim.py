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


def test_accumulation_verdict_reads_the_measured_peaks():
    import pandas as pd

    from efflab.studies.finetune_memory import accumulation_verdict

    mib = 2**20
    mem = pd.DataFrame({"k": [1, 2, 4], "micro_batch": [8, 4, 2],
                        "peak_bytes": [42 * mib, 26 * mib, 18 * mib], "activations": [0] * 3})
    chk = pd.DataFrame({"k": [1, 2, 4], "rel_diff": [0.0, 1e-7, 2e-7]})
    said = accumulation_verdict(chk, mem)  # peak = 10 MiB + 4 MiB per sequence; budget 30 MiB
    assert "(within 1e-6)" in said and "does not fit" in said
    assert "as 2 micro-batches of 4 it fits" in said and "largest batch under this budget is 5" in said
    worse = accumulation_verdict(chk.assign(rel_diff=[0.0, 1e-3, 1e-3]), mem)
    assert "OUTSIDE 1e-6" in worse
