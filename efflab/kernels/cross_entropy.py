"""Cross-entropy over the vocabulary in Triton, never materialising the softmax.

What you learn here, in the order the file reads:

1. **The eager reference** (:func:`cross_entropy_reference`): ``log_softmax`` writes a full
   (N, V) table of log-probabilities, ``nll`` picks one value per row from it. Backward writes
   an (N, V) one-hot gradient, then reads it and the log-probabilities to write the (N, V)
   gradient of the logits. For a model with a large vocabulary the logits are the largest
   activation of all, and this chain moves them through memory about six times.
2. **The forward kernel**: one program per row walks the vocabulary in blocks of ``BLOCK_V``,
   keeping a running maximum ``m`` and a running sum ``l = Σ exp(x - m)`` — the online
   softmax of the attention lesson, with nothing to multiply — so the row's logsumexp
   ``lse = m + log l`` is known after one read of the row. The loss is ``lse - x[target]``.
   It writes two numbers per row (loss, lse); no (N, V) table at all.
3. **The backward kernel**: the gradient of the mean loss with respect to the logits is
   ``(softmax(x) - onehot(target)) / N``, and ``softmax(x) = exp(x - lse)``: one more read of
   the row and one write of the gradient, recomputing the probabilities from the saved lse
   instead of reading them back.
4. **Traffic**, from :func:`cross_entropy_bytes`: eager ≈ 6·N·V values, fused 3·N·V (read
   forward, read + write backward).

Interpreted on a CPU (``TRITON_INTERPRET=1``): a correctness check only, never timed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from efflab.kernels.flash_attention import INTERPRETED, TRITON_AVAILABLE, tl, triton


def _jit(fn):
    return triton.jit(fn) if TRITON_AVAILABLE else fn


# ============================================================================ eager reference

def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy as the two operations eager PyTorch runs (fp32 arithmetic).

    logits: (N, V), targets: (N,) in [0, V). Traffic (r = read, w = write, values):
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # r N·V, w N·V (the table we avoid)
    return -logp.gather(1, targets[:, None]).mean()  # r N: one value per row
    # backward: nll writes a (N, V) one-hot gradient (w N·V); log_softmax's backward reads it
    # and the table and writes the logits' gradient (r 2·N·V, w N·V): ≈ 6·N·V in all


def cross_entropy_bytes(n: int, vocab: int, fused: bool = True, bytes_per_el: int = 4) -> int:
    """Compulsory DRAM bytes of forward + backward of mean cross-entropy over (n, vocab)
    logits: eager 6·n·V values (see the reference), fused 3·n·V (read the logits in forward;
    read them again and write their gradient in backward) + the per-row lse and loss."""
    per_row = 2 * n * 4 + n * 8  # loss, lse (fp32) and the int64 targets
    return (3 if fused else 6) * n * vocab * bytes_per_el + per_row


# ============================================================================ forward kernel

@_jit
def _ce_fwd_kernel(
    LOGITS, TARGETS,  # (N, V) row-major, (N,) int64
    LOSS, LSE,  # (N,) fp32 outputs: per-row loss and logsumexp
    V,  # vocabulary size (row length)
    BLOCK_V: tl.constexpr,  # columns read per iteration
):
    row = tl.program_id(0)
    base = LOGITS + row.to(tl.int64) * V
    cols = tl.arange(0, BLOCK_V)
    # the first block starts the running maximum and sum (so both are typed fp32 scalars)
    x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    s = tl.sum(tl.exp(x - m), axis=0)
    for start in range(BLOCK_V, V, BLOCK_V):
        c = start + cols
        x = tl.load(base + c, mask=c < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)  # rescale the old sum
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(TARGETS + row)
    x_t = tl.load(base + t).to(tl.float32)
    tl.store(LOSS + row, lse - x_t)
    tl.store(LSE + row, lse)


# ============================================================================ backward kernel

@_jit
def _ce_bwd_kernel(
    LOGITS, TARGETS, LSE,  # from the forward
    DLOGITS,  # (N, V) output
    DLOSS,  # (1,) upstream gradient of the mean loss
    V, inv_n,  # vocabulary size, 1 / N (the mean)
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * V
    lse = tl.load(LSE + row)
    t = tl.load(TARGETS + row)
    g = tl.load(DLOSS).to(tl.float32) * inv_n
    for start in range(0, V, BLOCK_V):
        c = start + tl.arange(0, BLOCK_V)
        x = tl.load(LOGITS + base + c, mask=c < V, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)  # softmax, recomputed from the saved logsumexp
        d = (p - tl.where(c == t, 1.0, 0.0)) * g
        tl.store(DLOGITS + base + c, d.to(DLOGITS.dtype.element_ty), mask=c < V)


# ============================================================================ the wrapper

def _block_v(vocab: int) -> int:
    if INTERPRETED:  # numpy pays per operation: few large blocks
        return min(triton.next_power_of_2(vocab), 4096)
    return min(triton.next_power_of_2(vocab), 1024)


def _check(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError("fused cross-entropy needs triton, which is not installed; use "
                           "torch.nn.functional.cross_entropy")
    if logits.dim() != 2 or targets.dim() != 1 or targets.size(0) != logits.size(0):
        raise ValueError(f"logits must be (N, V) and targets (N,); got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be integer class ids; got {targets.dtype}")
    if logits.size(0) == 0:
        raise ValueError("no rows: the mean of an empty batch is undefined")
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= logits.size(1):
        raise ValueError(f"targets must lie in [0, {logits.size(1)}); got values in [{lo}, {hi}]")
    if logits.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(f"tensors on {logits.device} need Triton's interpreter "
                           "(TRITON_INTERPRET=1) or a CUDA device")


class CrossEntropyFunction(torch.autograd.Function):
    """Autograd glue: forward saves the logits (already alive) and one lse per row."""

    @staticmethod
    def forward(ctx, logits, targets):
        x = logits.contiguous()  # (N, V)
        N, V = x.shape
        t = targets.to(torch.int64).contiguous()  # (N,)
        loss = torch.empty(N, device=x.device, dtype=torch.float32)  # (N,)
        lse = torch.empty(N, device=x.device, dtype=torch.float32)  # (N,)
        block = _block_v(V)
        _ce_fwd_kernel[(N,)](x, t, loss, lse, V, BLOCK_V=block)
        ctx.save_for_backward(x, t, lse)
        ctx.block = block
        return loss.mean()

    @staticmethod
    def backward(ctx, dloss):
        x, t, lse = ctx.saved_tensors
        N, V = x.shape
        dx = torch.empty(x.shape, device=x.device,
                         dtype=torch.float32 if INTERPRETED else x.dtype)  # (N, V)
        g = dloss.reshape(1).to(torch.float32).contiguous()
        _ce_bwd_kernel[(N,)](x, t, lse, dx, g, V, 1.0 / N, BLOCK_V=ctx.block)
        return dx.to(x.dtype), None


def fused_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, V) ``logits`` against (N,) ``targets`` by the kernels above;
    differentiable in the logits; equal to ``F.cross_entropy`` to fp32 rounding."""
    _check(logits, targets)
    return CrossEntropyFunction.apply(logits, targets)


def torch_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PyTorch's own (log_softmax + nll in C++): the baseline a GPU benchmark times against."""
    return F.cross_entropy(logits.float(), targets)


__all__ = ["cross_entropy_reference", "cross_entropy_bytes", "fused_cross_entropy",
           "CrossEntropyFunction", "torch_cross_entropy", "INTERPRETED"]
