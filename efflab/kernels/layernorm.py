"""LayerNorm in Triton, forward and backward: one pass over each row instead of many.

What you learn here, in the order the file reads:

1. **The eager reference** (:func:`layernorm_reference`) written as the separate operations a
   framework without fusion runs: mean, subtract, square, mean, rsqrt, multiply, scale, shift.
   Each reads a (M, N) tensor from memory and writes one back: about eight round trips of the
   activations for what is, mathematically, one pass. (PyTorch's own ``F.layer_norm`` is
   already a fused C++ kernel; the reference shows what fusion saves over the unfused chain.)
2. **The forward kernel**: one program per row. The row is loaded once into registers, its
   mean and variance reduced there, and ``y = (x - mean)·rstd·w + b`` written once. It also
   writes ``mean`` and ``rstd`` (one number each per row): backward needs them, and keeping
   two numbers per row is far cheaper than keeping the normalised row.
3. **The backward kernel**: with x̂ = (x - mean)·rstd and g = w ∘ dy, the input gradient of a
   row is ``dx = (g - (x̂·mean(x̂ ∘ g) + mean(g)))·rstd`` — two row reductions, then one
   elementwise pass, all from registers. The weight and bias gradients are sums over *all*
   rows (dw = Σ dy ∘ x̂, db = Σ dy): each program accumulates the rows it owns into one
   partial row, and a second small kernel adds the partial rows column by column (the
   Triton tutorial's two-stage reduction, without locks).
4. **Traffic**, from :func:`layernorm_bytes`: the fused forward reads x and writes y (2·M·N
   values, plus w, b and 2·M statistics); backward reads x and dy and writes dx (3·M·N).

Kernels run compiled on a CUDA GPU and, on a machine without one, in Triton's interpreter
(``TRITON_INTERPRET=1``, set by :mod:`efflab.kernels.flash_attention` before any kernel is
decorated): correct there, but far too slow to time — a correctness check only.
"""

from __future__ import annotations

import torch

from efflab.kernels.flash_attention import INTERPRETED, TRITON_AVAILABLE, tl, triton

MAX_ROW = 1 << 14  # a row lives in registers: 16K fp32 values per program at most


def _jit(fn):
    return triton.jit(fn) if TRITON_AVAILABLE else fn


# ============================================================================ eager reference

def layernorm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension as separate operations (fp32 arithmetic).

    x: (..., N). Memory traffic per line for x of M·N values (r = read, w = write):
    """
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)  # r M·N, w M
    xc = xf - mean  # r M·N, w M·N
    var = (xc * xc).mean(-1, keepdim=True)  # r 2·M·N, w M·N (the square), r M·N, w M
    rstd = torch.rsqrt(var + eps)  # tiny: M values
    y = xc * rstd  # r M·N, w M·N
    y = y * weight.float() + bias.float()  # r 2·M·N, w 2·M·N
    return y.to(x.dtype)  # total ≈ 11·M·N values moved, against 2·M·N fused


def layernorm_bytes(rows: int, n: int, fused: bool = True, backward: bool = False,
                    bytes_per_el: int = 4) -> int:
    """Compulsory DRAM bytes of LayerNorm over ``rows`` rows of ``n`` values.

    Fused forward: read x, write y (2·rows·n) + w, b + mean, rstd. Fused backward: read x, dy,
    write dx (3·rows·n) + w, the two statistics and dw, db. The unfused chain of
    :func:`layernorm_reference` moves ≈ 11·rows·n forward; its backward (autograd over those
    eight operations) ≈ 20·rows·n."""
    small = (2 * n + 2 * rows) * bytes_per_el
    if fused:
        return (3 if backward else 2) * rows * n * bytes_per_el + small + \
            (2 * n * bytes_per_el if backward else 0)
    return (20 if backward else 11) * rows * n * bytes_per_el + small


# ============================================================================ forward kernel

@_jit
def _ln_fwd_kernel(
    X, W, B, Y,  # X, Y: (M, N) row-major; W, B: (N,)
    MEAN, RSTD,  # (M,) fp32: saved for backward
    N, eps,  # row length, the epsilon inside the square root
    BLOCK_N: tl.constexpr,  # N rounded up to a power of two: one row per program
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)  # padding columns must not count in the variance
    var = tl.sum(xc * xc, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(Y + row * N + cols, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


# ============================================================================ backward kernels

@_jit
def _ln_bwd_kernel(
    X, W, DY, DX,  # X, DY, DX: (M, N); W: (N,)
    MEAN, RSTD,  # (M,) fp32 from the forward
    DW_PART, DB_PART,  # (P, N) fp32: one partial sum of dw, db per program
    M, N, ROWS_PER_PROG,  # rows, row length, rows each program owns
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, ROWS_PER_PROG):
        row = pid * ROWS_PER_PROG + i
        ok = mask & (row < M)  # the last program may own fewer rows
        x = tl.load(X + row * N + cols, mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * N + cols, mask=ok, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row, mask=row < M, other=0.0)
        rstd = tl.load(RSTD + row, mask=row < M, other=0.0)
        xhat = tl.where(ok, (x - mean) * rstd, 0.0)
        g = tl.where(ok, w * dy, 0.0)
        c1 = tl.sum(xhat * g, axis=0) / N  # mean(x̂ ∘ g)
        c2 = tl.sum(g, axis=0) / N  # mean(g)
        dx = (g - (xhat * c1 + c2)) * rstd
        tl.store(DX + row * N + cols, dx.to(DX.dtype.element_ty), mask=ok)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(DW_PART + pid * N + cols, dw_acc, mask=mask)
    tl.store(DB_PART + pid * N + cols, db_acc, mask=mask)


@_jit
def _ln_bwd_dwdb_kernel(
    DW_PART, DB_PART,  # (P, N) fp32 partial sums
    DW, DB,  # (N,) outputs in the weight's dtype
    P, N,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,  # a (BLOCK_P, BLOCK_C) tile per iteration
):
    pid = tl.program_id(0)  # one program per block of BLOCK_C columns
    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        m = (rows[:, None] < P) & (cols[None, :] < N)
        offs = rows[:, None] * N + cols[None, :]
        dw += tl.sum(tl.load(DW_PART + offs, mask=m, other=0.0), axis=0)
        db += tl.sum(tl.load(DB_PART + offs, mask=m, other=0.0), axis=0)
    tl.store(DW + cols, dw.to(DW.dtype.element_ty), mask=cols < N)
    tl.store(DB + cols, db.to(DB.dtype.element_ty), mask=cols < N)


# ============================================================================ the wrapper

def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError("fused layernorm needs triton, which is not installed; use "
                           "torch.nn.functional.layer_norm")
    n = x.size(-1)
    if weight.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"weight and bias must have shape ({n},) to match x's last dimension; "
                         f"got {tuple(weight.shape)} and {tuple(bias.shape)}")
    if n > MAX_ROW:
        raise ValueError(f"rows of {n} values exceed the {MAX_ROW} one program holds")
    if x.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(f"tensors on {x.device} need Triton's interpreter (TRITON_INTERPRET=1 "
                           "before efflab.kernels is imported) or a CUDA device")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # the interpreter truncates fp32 -> bf16 casts: write fp32 there and let torch round
    return torch.float32 if INTERPRETED else dtype


class LayerNormFunction(torch.autograd.Function):
    """Autograd glue: forward saves x, w, b, mean and rstd (2·M numbers, not the normalised x)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # (M, N)
        M, N = x2.shape
        y = torch.empty(x2.shape, device=x.device, dtype=_work_dtype(x.dtype))  # (M, N)
        mean = torch.empty(M, device=x.device, dtype=torch.float32)  # (M,)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)  # (M,)
        _ln_fwd_kernel[(M,)](x2, weight.contiguous(), bias.contiguous(), y, mean, rstd, N, eps,
                             BLOCK_N=triton.next_power_of_2(N))
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape = shape
        return y.to(x.dtype).reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = dy.reshape(M, N).contiguous()  # (M, N)
        # enough programs to fill the device, each summing its rows' dw/db in registers
        n_prog = min(M, 64 if INTERPRETED else 512)
        rows_per = triton.cdiv(M, n_prog)
        n_prog = triton.cdiv(M, rows_per)
        dx = torch.empty(x2.shape, device=x2.device, dtype=_work_dtype(x2.dtype))  # (M, N)
        dw_part = torch.empty((n_prog, N), device=x2.device, dtype=torch.float32)  # (P, N)
        db_part = torch.empty((n_prog, N), device=x2.device, dtype=torch.float32)  # (P, N)
        block_n = triton.next_power_of_2(N)
        _ln_bwd_kernel[(n_prog,)](x2, weight.contiguous(), dy2, dx, mean, rstd, dw_part, db_part,
                                  M, N, rows_per, BLOCK_N=block_n)
        dw = torch.empty(N, device=x2.device, dtype=_work_dtype(weight.dtype))  # (N,)
        db = torch.empty(N, device=x2.device, dtype=_work_dtype(bias.dtype))  # (N,)
        block_c = min(block_n, 128)
        _ln_bwd_dwdb_kernel[(triton.cdiv(N, block_c),)](dw_part, db_part, dw, db, n_prog, N,
                                                         BLOCK_P=32, BLOCK_C=block_c)
        return (dx.to(x2.dtype).reshape(ctx.shape), dw.to(weight.dtype), db.to(bias.dtype),
                None)


def fused_layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dimension of ``x`` (..., N) by the Triton kernels above,
    differentiable in x, weight and bias; the same result as ``F.layer_norm`` to fp32 rounding.

    Raises RuntimeError without triton (or, on CPU, without its interpreter) and ValueError for
    shapes the kernels cannot take."""
    _check(x, weight, bias)
    return LayerNormFunction.apply(x, weight, bias, eps)


class FusedLayerNorm(torch.nn.Module):
    """A drop-in for ``nn.LayerNorm`` (same parameters, same state dict) using the kernels."""

    def __init__(self, ln: torch.nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_layernorm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, triton" + \
            (" (interpreted: correctness only)" if INTERPRETED else "")


__all__ = ["layernorm_reference", "layernorm_bytes", "fused_layernorm", "FusedLayerNorm",
           "LayerNormFunction", "INTERPRETED"]
