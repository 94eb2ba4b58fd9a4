"""FlashAttention in Triton: causal attention that never writes the (T, S) score matrix.

What you learn here, in the order the file reads:

1. **The naive reference** (:func:`naive_attention`) builds the whole score matrix
   ``q kᵀ`` of shape (B, nh, T, S), masks it, softmaxes it and multiplies by ``v``. Every step
   reads and writes that matrix through main memory, and autograd keeps the probabilities for
   backward: memory and traffic grow as O(T·S) — O(T²) for a prompt.
2. **Tiling.** The forward kernel gives each program one block of ``BLOCK_M`` query rows of
   one head. It walks the keys in blocks of ``BLOCK_N``; a (BLOCK_M, BLOCK_N) tile of scores
   lives only in registers/SRAM and is gone after the step that used it.
3. **Online softmax.** softmax needs the row maximum and the row sum over *all* keys, but the
   kernel sees one key block at a time. It keeps a running maximum ``m`` and a running
   normaliser ``l = Σ exp(s - m)``; when a later block raises the maximum, the sums and the
   output accumulated so far are rescaled by ``exp(m_old - m_new)``. After the last block,
   ``out = acc / l`` is exactly softmax(s) v.
4. **Recomputation in backward.** Instead of keeping the (T, S) probabilities, the forward saves
   one number per query row, the logsumexp ``lse = m + log(l)``. Backward recomputes each tile
   ``P = exp(q kᵀ·scale - lse)`` from q, k and lse — extra FLOPs, which are cheap, in exchange
   for memory traffic, which is not. With ``delta = rowsum(dO ∘ O)`` (a small preprocess
   kernel) the softmax backward is ``dS = P ∘ (dO vᵀ - delta)``, and
   ``dq = dS k·scale``, ``dk = dSᵀ q·scale``, ``dv = Pᵀ dO``.
5. **Why memory is O(T), not O(T²).** What a call keeps for backward is q, k, v, out
   (O((T+S)·hs)) and the logsumexp (O(T)); the score tiles exist only inside a program.
   :func:`efflab.techniques.attention.attention_memory_bytes` gives the formulas.

Causality follows :class:`efflab.core.model.SDPACore`: queries are the *last* T of the S key
positions, so query row i sits at absolute position ``S - T + i`` and sees keys
``j <= S - T + i``. Blocks at the ragged ends (T or S not a multiple of the block size, head
sizes that are not a power of two) are handled with masked loads and stores.

On a machine without CUDA this module turns on Triton's interpreter (``TRITON_INTERPRET=1``)
before it decorates a kernel: the kernels then run in numpy, correct but slow, and
:data:`INTERPRETED` is True. Two interpreter facts shape the kernels: ``tl.dot`` on bf16 inputs
returns garbage there, and fp32 -> bf16 casts truncate. So under the interpreter bf16 tiles are
upcast to fp32 before ``tl.dot``, and results are written in fp32 and rounded to the input
dtype by torch. On a GPU, bf16 and fp16 tiles go into ``tl.dot`` as they are (the probabilities
cast to that dtype for ``P·V``, as in Triton's fused-attention tutorial), accumulating in fp32;
the interpreter runs that path for fp16, which is how the CPU tests check it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from efflab.core.config import ConfigError
from efflab.core.model import causal_mask  # the model's own mask: one definition of causality

if not torch.cuda.is_available():  # must happen before triton.jit decorates the kernels below
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
    _TRITON_IMPORT_ERROR = ""
except Exception as exc:  # not installed (ImportError) or installed but broken
    triton = None
    tl = None
    TRITON_AVAILABLE = False
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _interpret_on() -> bool:
    if not TRITON_AVAILABLE:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:  # triton >= 3.4 reads the variable through its knobs
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _interpret_triton_stdlib() -> None:
    """Make Triton's own ``@jit`` helpers (``tl.zeros``, ``tl.max``, ``tl.sum``...) runnable by
    the interpreter when triton was imported before ``TRITON_INTERPRET`` was set.

    ``triton.jit`` reads the variable when it decorates, and ``triton.language.standard``
    decorates its helpers when triton is first imported — which torch does on its own
    (``torch.utils.flop_counter`` imports triton, and ``efflab.measurement`` imports that). Those
    helpers are then compiled-mode functions, and an interpreted kernel that calls one fails
    with "Cannot call @triton.jit'd outside of the scope of a kernel". Re-executing the modules
    that define them, now that the variable is set, re-decorates them for the interpreter.
    Without CUDA a compiled-mode helper could never run anyway, so nothing is lost.
    """
    import importlib
    import sys

    from triton.runtime.jit import JITFunction

    if not isinstance(getattr(tl.standard, "sum", None), JITFunction):
        return  # triton was imported with the interpreter on: nothing to mend
    for name in ("triton.language.standard", "triton.language.random"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    importlib.reload(tl)  # rebind tl.zeros, tl.max, ... to the re-decorated helpers


INTERPRETED: bool = _interpret_on()
"""True when the kernels run in Triton's interpreter: correct, but not timed as if fast."""

if INTERPRETED:
    _interpret_triton_stdlib()

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_SIZE = 256  # a (BLOCK, head size) fp32 tile per operand must fit on chip


def _jit(fn):
    """``triton.jit`` where Triton is importable; otherwise leave the function undecorated
    (it is never called: :func:`flash_attention` refuses first)."""
    return triton.jit(fn) if TRITON_AVAILABLE else fn


# ============================================================================ naive reference

def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q kᵀ / √hs) v, materialising the whole (T, S) score matrix.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs) with S >= T; queries aligned to the end of the keys.
    Returns (B, nh, T, hs). The reference the kernel must match, and the baseline it beats.

    Memory traffic, with e bytes per element and every op a separate pass through memory
    (no fusion), per call:
      reads  B·nh·(T + 2S)·hs·e  (q, k, v)  +  ~4·B·nh·T·S·e  (the score matrix, 4 times)
      writes B·nh·T·hs·e         (out)      +  ~4·B·nh·T·S·e
    so for T = S the O(T²) terms dominate as soon as T > hs. FlashAttention's forward reads
    q once and k, v once per query block, writes out and the logsumexp: no T·S term at all.
    """
    T, S, hs = q.size(-2), k.size(-2), q.size(-1)
    scale = 1.0 / math.sqrt(hs)
    # read q, k: B·nh·(T+S)·hs·e; write scores: B·nh·T·S·e
    att = q @ k.transpose(-2, -1)  # (B, nh, T, S)
    # read + write B·nh·T·S·e (a separate elementwise pass)
    att = att * scale  # (B, nh, T, S)
    # read + write B·nh·T·S·e; the (T, S) bool mask is shared by every batch row and head
    att = att.masked_fill(~causal_mask(T, S, q.device), float("-inf"))  # (B, nh, T, S)
    # read (at least once; max and sum are extra passes) + write B·nh·T·S·e.
    # autograd keeps this (B, nh, T, S) tensor alive until backward: the O(T·S) memory
    att = torch.softmax(att, dim=-1)  # (B, nh, T, S)
    # read probabilities B·nh·T·S·e and v B·nh·S·hs·e; write out B·nh·T·hs·e
    return att @ v  # (B, nh, T, hs)


# ============================================================================ forward kernel

@_jit
def _load_tile(ptrs, mask, DOT_F32: tl.constexpr):
    """A masked tile (masked entries 0), upcast to fp32 when the kernel's dots run in fp32
    (see the module docstring), else in the input dtype for the tensor cores."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if DOT_F32:
        x = x.to(tl.float32)
    return x


@_jit
def _attn_fwd_kernel(
    Q,  # pointer to q, (B, nh, T, hs) contiguous: head bh starts at bh·T·HS, row stride HS
    K,  # pointer to k, (B, nh, S, hs) contiguous: head bh starts at bh·S·HS
    V,  # pointer to v, same layout as k
    Out,  # pointer to the output, (B, nh, T, hs) contiguous; fp32 or the input dtype
    LSE,  # pointer to the logsumexp saved for backward, (B·nh, T) fp32
    sm_scale,  # softmax scale 1/√hs (a float)
    T,  # number of queries (rows of q)
    S,  # number of keys (rows of k and v), S >= T; query i sits at absolute position S - T + i
    HS,  # head size: the row stride of every tensor and the true width of a row
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key rows per step of the inner loop
    BLOCK_D: tl.constexpr,  # HS rounded up to a power of two >= 16 (tl.arange and tl.dot need it)
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" (exact fp32) or "tf32"
    DOT_F32: tl.constexpr,  # upcast every tile to fp32 before tl.dot (else dot in the input dtype)
):
    pid_m = tl.program_id(0)  # which block of BLOCK_M query rows
    bh = tl.program_id(1).to(tl.int64)  # which (batch row, head): b·nh + h; int64 so big tensors index safely
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query rows of this program
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key rows within a key block
    offs_d = tl.arange(0, BLOCK_D)  # (BLOCK_D,) columns within a head
    d_ok = offs_d < HS  # (BLOCK_D,) False on the padding columns of a non-power-of-two head
    q_base = Q + bh * T * HS
    k_base = K + bh * S * HS
    v_base = V + bh * S * HS

    # this program's queries, read once; masked rows/columns read as 0
    q_mask = (offs_m[:, None] < T) & d_ok[None, :]
    q = _load_tile(q_base + offs_m[:, None] * HS + offs_d[None, :], q_mask, DOT_F32)  # (BLOCK_M, BLOCK_D)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running row maximum of the scores
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running Σ exp(score - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)  # running Σ exp(score - m_i) · v

    offset = S - T  # absolute position of query row 0
    # causal skip: the last query of this block sees keys up to offset + (pid_m+1)·BLOCK_M - 1
    hi = tl.minimum(S, offset + (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n  # (BLOCK_N,) absolute key positions of this block
        kv_mask = (cols[:, None] < S) & d_ok[None, :]
        k = _load_tile(k_base + cols[:, None] * HS + offs_d[None, :], kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base + cols[:, None] * HS + offs_d[None, :], kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)

        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_N) fp32
        visible = (cols[None, :] <= offs_m[:, None] + offset) & (cols[None, :] < S)
        s = tl.where(visible, s, float("-inf"))

        # online softmax: raise the running max, rescale what was summed under the old one.
        # Every row sees key 0 in the first block, so m_new is finite from the first step on.
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        alpha = tl.exp(m_i - m_new)  # (BLOCK_M,) exp(-inf) = 0 on the first step
        p = tl.exp(s - m_new[:, None])  # (BLOCK_M, BLOCK_N) masked entries -> 0
        l_i = l_i * alpha + tl.sum(p, 1)
        # p in v's dtype for the dot (bf16/fp16 on a GPU, as the tensor cores take it)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D)
        m_i = m_new

    acc = acc / l_i[:, None]  # normalise: this is softmax(s) v for every row
    o_ptrs = Out + bh * T * HS + offs_m[:, None] * HS + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=q_mask)
    # one fp32 per query row is all backward needs to rebuild the probabilities
    tl.store(LSE + bh * T + offs_m, m_i + tl.log(l_i), mask=offs_m < T)


# ============================================================================ backward kernels

@_jit
def _attn_bwd_preprocess_kernel(
    Out,  # pointer to the forward output, (B, nh, T, hs) contiguous
    DO,  # pointer to the output gradient dO, same layout
    DELTA,  # pointer to the result, (B·nh, T) fp32: delta_i = Σ_d dO[i, d] · Out[i, d]
    T,  # number of queries
    HS,  # head size (row stride)
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # HS rounded up to a power of two >= 16
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < T) & (offs_d[None, :] < HS)
    ptrs = bh * T * HS + offs_m[:, None] * HS + offs_d[None, :]
    o = tl.load(Out + ptrs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_D)
    do = tl.load(DO + ptrs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK_D)
    # rowsum(dO ∘ O) equals rowsum(P ∘ dP): the term softmax's backward subtracts
    tl.store(DELTA + bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@_jit
def _attn_bwd_dkdv_kernel(
    Q,  # pointer to q, (B, nh, T, hs) contiguous
    K,  # pointer to k, (B, nh, S, hs) contiguous
    V,  # pointer to v, same layout as k
    DO,  # pointer to dO, (B, nh, T, hs) contiguous
    DK,  # pointer to the result dk, (B, nh, S, hs) contiguous; fp32 or the input dtype
    DV,  # pointer to the result dv, same layout as dk
    LSE,  # pointer to the forward's logsumexp, (B·nh, T) fp32
    DELTA,  # pointer to rowsum(dO ∘ O), (B·nh, T) fp32
    sm_scale,  # softmax scale 1/√hs
    T,  # number of queries
    S,  # number of keys; query i sits at absolute position S - T + i
    HS,  # head size (row stride)
    BLOCK_M: tl.constexpr,  # query rows per step of the inner loop
    BLOCK_N: tl.constexpr,  # key rows per program
    BLOCK_D: tl.constexpr,  # HS rounded up to a power of two >= 16
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    DOT_F32: tl.constexpr,  # upcast every tile to fp32 before tl.dot (else dot in the input dtype)
):
    """One program owns BLOCK_N keys and accumulates their dk, dv over every query that
    sees them, so no two programs write the same rows: no atomics needed."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) this program's keys
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HS
    kv_mask = (cols[:, None] < S) & d_ok[None, :]
    kv_off = bh * S * HS + cols[:, None] * HS + offs_d[None, :]
    k = _load_tile(K + kv_off, kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)
    v = _load_tile(V + kv_off, kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)

    offset = S - T
    # causal skip: key j is first seen by query row j - offset; start at that row's block
    lo = (tl.maximum(pid_n * BLOCK_N - offset, 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, T, BLOCK_M):
        rows = start_m + offs_m  # (BLOCK_M,) query rows of this step
        row_ok = rows < T
        q_mask = row_ok[:, None] & d_ok[None, :]
        q_off = bh * T * HS + rows[:, None] * HS + offs_d[None, :]
        q = _load_tile(Q + q_off, q_mask, DOT_F32)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(DO + q_off, q_mask, DOT_F32)  # (BLOCK_M, BLOCK_D)
        lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
        delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)

        # recompute the probabilities of this tile from q, k and the saved logsumexp
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_N)
        visible = (cols[None, :] <= rows[:, None] + offset) & row_ok[:, None] & (cols[None, :] < S)
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)

        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D) Pᵀ dO
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N) dO vᵀ
        ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N) softmax backward
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)  # (BLOCK_N, BLOCK_D) dSᵀ q

    dk = dk * sm_scale  # the scale multiplied the scores, so it multiplies their gradient
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


@_jit
def _attn_bwd_dq_kernel(
    Q,  # pointer to q, (B, nh, T, hs) contiguous
    K,  # pointer to k, (B, nh, S, hs) contiguous
    V,  # pointer to v, same layout as k
    DO,  # pointer to dO, (B, nh, T, hs) contiguous
    DQ,  # pointer to the result dq, (B, nh, T, hs) contiguous; fp32 or the input dtype
    LSE,  # pointer to the forward's logsumexp, (B·nh, T) fp32
    DELTA,  # pointer to rowsum(dO ∘ O), (B·nh, T) fp32
    sm_scale,  # softmax scale 1/√hs
    T,  # number of queries
    S,  # number of keys; query i sits at absolute position S - T + i
    HS,  # head size (row stride)
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # key rows per step of the inner loop
    BLOCK_D: tl.constexpr,  # HS rounded up to a power of two >= 16
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    DOT_F32: tl.constexpr,  # upcast every tile to fp32 before tl.dot (else dot in the input dtype)
):
    """One program owns BLOCK_M query rows and walks the keys they see, like the forward."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HS
    row_ok = rows < T
    q_mask = row_ok[:, None] & d_ok[None, :]
    q_off = bh * T * HS + rows[:, None] * HS + offs_d[None, :]
    q = _load_tile(Q + q_off, q_mask, DOT_F32)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + q_off, q_mask, DOT_F32)  # (BLOCK_M, BLOCK_D)
    lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
    delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)

    offset = S - T
    hi = tl.minimum(S, offset + (pid_m + 1) * BLOCK_M)  # same causal skip as the forward
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n  # (BLOCK_N,)
        kv_mask = (cols[:, None] < S) & d_ok[None, :]
        kv_off = bh * S * HS + cols[:, None] * HS + offs_d[None, :]
        k = _load_tile(K + kv_off, kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(V + kv_off, kv_mask, DOT_F32)  # (BLOCK_N, BLOCK_D)

        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale  # (BLOCK_M, BLOCK_N)
        visible = (cols[None, :] <= rows[:, None] + offset) & row_ok[:, None] & (cols[None, :] < S)
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # (BLOCK_M, BLOCK_D) dS k

    dq = dq * sm_scale
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=q_mask)


# ============================================================================ the wrapper

def _check_block(name: str, value: int) -> None:
    if not (isinstance(value, int) and value >= 16 and value & (value - 1) == 0):
        raise ValueError(f"{name}={value!r}: block sizes must be powers of two >= 16 (tl.dot needs it)")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Refuse, with a message that says why, anything the kernels cannot take."""
    if not TRITON_AVAILABLE:
        raise RuntimeError(
            "flash_attention needs triton, which is not installed (or failed to import: "
            f"{_TRITON_IMPORT_ERROR}). Install it (pip install triton, Linux only) or use the "
            "'sdpa' or 'naive' attention.")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, nh, L, hs); got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.size(-1) != k.size(-1):
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on B, nh and hs")
    T, S, hs = q.size(-2), k.size(-2), q.size(-1)
    if T < 1 or S < T:
        raise ValueError(f"need 1 <= T <= S (queries are the last T of S positions); got T={T}, S={S}")
    if q.size(0) * q.size(1) == 0:
        raise ValueError(f"empty batch or no heads: q has shape {tuple(q.shape)}")
    if hs > MAX_HEAD_SIZE:
        raise ValueError(f"head size {hs} is larger than the {MAX_HEAD_SIZE} these kernels support")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use one of "
                         + ", ".join(str(d) for d in SUPPORTED_DTYPES))
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"tensors on {q.device} need Triton's interpreter, which is off: set TRITON_INTERPRET=1 "
            "before efflab.kernels.flash_attention is first imported, or move the tensors to CUDA")


def _block_d(hs: int) -> int:
    """The head size rounded up to a power of two >= 16: the kernels mask the padding columns."""
    return max(16, triton.next_power_of_2(hs))


def _default_blocks(block_d: int) -> tuple[int, int]:
    if INTERPRETED:  # numpy pays per operation, not per element: few big tiles run fastest
        return 64, 64
    return (64, 64) if block_d <= 64 else (32, 32)  # keep fp32 tiles within registers


def _launch_opts() -> dict:
    return {} if INTERPRETED else {"num_warps": 4, "num_stages": 2}


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels write: under the interpreter fp32 (its fp32->bf16 cast truncates;
    torch rounds correctly afterwards), on a GPU the input dtype itself."""
    return torch.float32 if INTERPRETED else dtype


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs: exact fp32 products, so the kernel matches the reference to ~1e-6.
    # bf16/fp16 inputs: "tf32" is Triton's default and only matters where their tiles were
    # upcast (see _dot_f32); they carry <= 10 mantissa bits, so tf32 loses nothing on them.
    return "ieee" if dtype == torch.float32 else "tf32"


def _dot_f32(dtype: torch.dtype) -> bool:
    """Whether the kernels upcast tiles to fp32 before ``tl.dot``: for fp32 inputs, and for bf16
    under the interpreter (its bf16 dot is wrong). On a GPU bf16/fp16 tiles go to the tensor
    cores as they are, the products accumulated in fp32, as FlashAttention and Triton's own
    fused-attention tutorial do; so do fp16 tiles under the interpreter, which tests that path."""
    return dtype == torch.float32 or (INTERPRETED and dtype == torch.bfloat16)


def _flash_fwd(q, k, v, block_m: int, block_n: int):
    """Launch the forward kernel. q: (B, nh, T, hs), k, v: (B, nh, S, hs), all contiguous.
    Returns out (B, nh, T, hs) in the work dtype and lse (B·nh, T) fp32."""
    B, nh, T, hs = q.shape
    S = k.size(2)
    block_d = _block_d(hs)
    o = torch.empty(q.shape, device=q.device, dtype=_work_dtype(q.dtype))  # (B, nh, T, hs)
    lse = torch.empty((B * nh, T), device=q.device, dtype=torch.float32)  # (B·nh, T)
    grid = (triton.cdiv(T, block_m), B * nh)  # one program per (query block, head)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, 1.0 / math.sqrt(hs), T, S, hs,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=_precision(q.dtype),
        DOT_F32=_dot_f32(q.dtype), **_launch_opts(),
    )
    return o, lse


def _flash_bwd(q, k, v, o, lse, do, block_m: int, block_n: int):
    """Launch the three backward kernels; returns dq, dk, dv in the work dtype."""
    B, nh, T, hs = q.shape
    S = k.size(2)
    block_d = _block_d(hs)
    scale = 1.0 / math.sqrt(hs)
    prec = _precision(q.dtype)
    wd = _work_dtype(q.dtype)
    delta = torch.empty((B * nh, T), device=q.device, dtype=torch.float32)  # (B·nh, T)
    dq = torch.empty(q.shape, device=q.device, dtype=wd)  # (B, nh, T, hs)
    dk = torch.empty(k.shape, device=q.device, dtype=wd)  # (B, nh, S, hs)
    dv = torch.empty(v.shape, device=q.device, dtype=wd)  # (B, nh, S, hs)
    opts = _launch_opts()
    rows_grid = (triton.cdiv(T, block_m), B * nh)
    _attn_bwd_preprocess_kernel[rows_grid](o, do, delta, T, hs, BLOCK_M=block_m, BLOCK_D=block_d,
                                           **opts)
    _attn_bwd_dkdv_kernel[(triton.cdiv(S, block_n), B * nh)](
        q, k, v, do, dk, dv, lse, delta, scale, T, S, hs,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=prec,
        DOT_F32=_dot_f32(q.dtype), **opts,
    )
    _attn_bwd_dq_kernel[rows_grid](
        q, k, v, do, dq, lse, delta, scale, T, S, hs,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=prec,
        DOT_F32=_dot_f32(q.dtype), **opts,
    )
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd glue: forward saves q, k, v, out and the logsumexp — no (T, S) tensor."""

    @staticmethod
    def forward(ctx, q, k, v, block_m: int, block_n: int):
        o, lse = _flash_fwd(q, k, v, block_m, block_n)
        o = o.to(q.dtype)  # a no-op on GPU; rounds (not truncates) under the interpreter
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.blocks = (block_m, block_n)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        do = do.to(q.dtype).contiguous()  # (B, nh, T, hs), same layout as o
        dq, dk, dv = _flash_bwd(q, k, v, o, lse, do, *ctx.blocks)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    block_m: int | None = None, block_n: int | None = None) -> torch.Tensor:
    """Causal attention by the Triton kernels above, differentiable in q, k and v.

    q: (B, nh, T, hs); k, v: (B, nh, S, hs) with S >= T, queries aligned to the end of the keys
    (as :class:`efflab.core.model.SDPACore`). Returns (B, nh, T, hs) in the input dtype.

    - dtype: float32, bfloat16 or float16; tiles are computed in fp32 inside the kernel.
    - layout: any strides; inputs are made contiguous (a copy only when they are not).
    - head size: any size up to 256; sizes that are not a power of two >= 16 are padded inside
      the kernel by masked loads, never by copying.
    - ``block_m``/``block_n``: tile sizes (powers of two >= 16); defaults suit the device.

    Raises RuntimeError when triton is not installed or (on CPU) its interpreter is off, and
    ValueError naming the problem for shapes, dtypes or devices the kernels cannot take.
    """
    _check_inputs(q, k, v)
    dm, dn = _default_blocks(_block_d(q.size(-1)))
    block_m = dm if block_m is None else block_m
    block_n = dn if block_n is None else block_n
    _check_block("block_m", block_m)
    _check_block("block_n", block_n)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return FlashAttentionFunction.apply(q, k, v, block_m, block_n)


# ============================================================================ the benchmark

PROVIDERS: tuple[str, ...] = ("naive", "sdpa", "triton")
INTERPRETED_NOTE = "correctness only (interpreted)"
_X_NAMES = ("seq_len", "batch_size", "n_head", "head_dim")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class AttentionBenchmark:
    """A benchmark declared as data, in the manner of ``triton.testing.Benchmark``.

    One x-axis (``x_name`` over ``x_vals``; the other shape fields stay fixed), one line per
    provider in ``line_vals``, and the metric: median milliseconds per call of ``mode`` —
    ``"fwd"`` (forward) or ``"fwd_bwd"`` (forward + backward). Causal, T = S.
    """

    x_name: str = "seq_len"
    x_vals: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    line_vals: tuple[str, ...] = PROVIDERS
    metric: str = "ms"
    mode: Literal["fwd", "fwd_bwd"] = "fwd_bwd"
    batch_size: int = 4
    n_head: int = 8
    seq_len: int = 1024
    head_dim: int = 64
    dtype: str = "float32"

    def __post_init__(self):
        if self.x_name not in _X_NAMES:
            raise ConfigError("x_name", self.x_name, "one of " + ", ".join(map(repr, _X_NAMES)))
        if not self.x_vals or not all(isinstance(x, int) and x >= 1 for x in self.x_vals):
            raise ConfigError("x_vals", self.x_vals, "a non-empty tuple of integers >= 1")
        bad = [p for p in self.line_vals if p not in PROVIDERS]
        if bad or not self.line_vals:
            raise ConfigError("line_vals", self.line_vals,
                              "a non-empty tuple drawn from " + ", ".join(map(repr, PROVIDERS)))
        if self.metric != "ms":
            raise ConfigError("metric", self.metric, "'ms'")
        if self.mode not in ("fwd", "fwd_bwd"):
            raise ConfigError("mode", self.mode, "one of 'fwd', 'fwd_bwd'")
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", self.dtype, "one of " + ", ".join(map(repr, DTYPES)))

    def shape(self, x: int) -> tuple[int, int, int, int]:
        """(B, nh, T, hs) at x-axis value ``x``."""
        dims = {"batch_size": self.batch_size, "n_head": self.n_head, "seq_len": self.seq_len,
                "head_dim": self.head_dim, self.x_name: x}
        return dims["batch_size"], dims["n_head"], dims["seq_len"], dims["head_dim"]


BENCHMARK = AttentionBenchmark()
"""The attention lesson's benchmark: causal fwd+bwd over seq_len 128..4096, three providers."""


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention, causal (queries are the last T of S positions)."""
    T, S = q.shape[-2], k.shape[-2]
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, S, q.device))


def provider(name: str):
    """The attention function a benchmark line ``name`` runs: naive, sdpa or triton."""
    return {"naive": naive_attention, "sdpa": _sdpa, "triton": flash_attention}[name]


__all__ = ["TRITON_AVAILABLE", "INTERPRETED", "INTERPRETED_NOTE", "PROVIDERS", "naive_attention",
           "flash_attention", "FlashAttentionFunction", "AttentionBenchmark", "BENCHMARK",
           "provider", "causal_mask", "SUPPORTED_DTYPES", "MAX_HEAD_SIZE"]
