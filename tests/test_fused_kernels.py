"""Our fused Triton kernels (LayerNorm, cross-entropy) against their eager references.

On a CPU they run in Triton's interpreter: these are correctness checks, never timings.
"""

import pytest
import torch
import torch.nn.functional as F

from efflab.kernels.cross_entropy import (
    cross_entropy_bytes,
    cross_entropy_reference,
    fused_cross_entropy,
)
from efflab.kernels.layernorm import (
    FusedLayerNorm,
    fused_layernorm,
    layernorm_bytes,
    layernorm_reference,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _ln_inputs(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(shape, generator=g) * 3 + 1.5).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(n, generator=g) * 0.5 + 1).to(DEVICE, dtype).requires_grad_()
    b = torch.randn(n, generator=g).to(DEVICE, dtype).requires_grad_()
    return x, w, b


@pytest.mark.parametrize("shape", [(2, 5, 64), (7, 100), (3, 33)])  # ragged rows and row counts
def test_layernorm_forward_and_backward_match_torch(shape):
    x, w, b = _ln_inputs(shape)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    y = fused_layernorm(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ref = F.layer_norm(x2, (shape[-1],), w2, b2, 1e-5)
    rx, rw, rb = torch.autograd.grad(ref, (x2, w2, b2), dy)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, rx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)  # summed over every row
    torch.testing.assert_close(gb, rb, atol=1e-4, rtol=1e-4)


def test_layernorm_output_is_normalised_and_reference_agrees():
    x, w, b = _ln_inputs((4, 96), seed=3)
    ones, zeros = torch.ones_like(w), torch.zeros_like(b)
    y = fused_layernorm(x.detach(), ones, zeros)
    # invariant: each row has mean 0 and variance 1 when w = 1, b = 0
    assert y.mean(-1).abs().max() < 1e-5
    assert (y.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    torch.testing.assert_close(layernorm_reference(x.detach(), w.detach(), b.detach()),
                               F.layer_norm(x.detach(), (96,), w.detach(), b.detach()),
                               atol=1e-5, rtol=1e-5)


def test_fused_layernorm_module_swaps_into_the_model_without_changing_the_loss():
    from efflab.core.config import get_preset
    from efflab.core.model import build_model

    model = build_model(get_preset("cpu-tiny"), seed=0, device=DEVICE)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    _, want = model(idx, idx)
    for block in model.h:
        block.ln_1, block.ln_2 = FusedLayerNorm(block.ln_1), FusedLayerNorm(block.ln_2)
    assert "triton" in repr(model.h[0].ln_1)
    _, got = model(idx, idx)
    assert abs(got.item() - want.item()) < 1e-5


def test_layernorm_refuses_mismatched_weights():
    x, w, b = _ln_inputs((2, 8))
    with pytest.raises(ValueError, match="weight and bias must have shape"):
        fused_layernorm(x, w[:4], b)


def test_layernorm_traffic_formula_fused_moves_less():
    assert layernorm_bytes(1024, 128, fused=True) < layernorm_bytes(1024, 128, fused=False)
    # fused forward: x read, y written (2 values per element) plus the small vectors
    assert layernorm_bytes(1024, 128, fused=True) == (2 * 1024 * 128 + 2 * 128 + 2 * 1024) * 4


@pytest.mark.parametrize("n,vocab", [(8, 256), (5, 1000), (3, 5000)])  # 5000: several blocks
def test_cross_entropy_forward_and_backward_match_torch(n, vocab):
    g = torch.Generator().manual_seed(n)
    logits = (torch.randn(n, vocab, generator=g) * 4).to(DEVICE).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g).to(DEVICE)
    loss = fused_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    x2 = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(x2, targets)
    (rgrad,) = torch.autograd.grad(ref, x2)
    assert abs(loss.item() - ref.item()) < 1e-5
    torch.testing.assert_close(grad, rgrad, atol=1e-6, rtol=1e-4)
    # invariant: each row of the gradient sums to zero (softmax sums to one, minus the one-hot)
    assert grad.sum(-1).abs().max() < 1e-6
    assert abs(cross_entropy_reference(logits.detach(), targets).item() - ref.item()) < 1e-5


def test_cross_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1e4, 0.0]], device=DEVICE)
    targets = torch.tensor([0, 2], device=DEVICE)
    got = fused_cross_entropy(logits, targets)
    want = F.cross_entropy(logits, targets)
    assert torch.isfinite(got) and abs(got.item() - want.item()) < 1e-3


def test_cross_entropy_refuses_out_of_range_targets():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        fused_cross_entropy(torch.zeros(2, 4, device=DEVICE), torch.tensor([0, 4], device=DEVICE))


def test_cross_entropy_traffic_halves():
    assert cross_entropy_bytes(1024, 256, fused=False) - cross_entropy_bytes(1024, 256) \
        == 3 * 1024 * 256 * 4


@pytest.mark.gpu
def test_kernels_compiled_on_gpu_in_bf16():
    x, w, b = _ln_inputs((64, 768), dtype=torch.bfloat16)
    y = fused_layernorm(x, w, b)
    ref = F.layer_norm(x.float(), (768,), w.float(), b.float())
    assert (y.float() - ref).abs().max() < 0.05
    logits = torch.randn(256, 50257, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, 50257, (256,), device="cuda")
    assert abs(fused_cross_entropy(logits, t).item() - F.cross_entropy(logits.float(), t).item()) < 1e-2
