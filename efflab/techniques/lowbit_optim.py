"""AdamW with 8-bit or 4-bit optimizer state: block-wise quantized moments (Dettmers et al.,
"8-bit Optimizers via Block-wise Quantization", 2021; Li et al., "Memory Efficient Optimizers
with 4-bit States", 2023).

fp32 AdamW keeps two fp32 moments per parameter: 8 bytes, twice the weights themselves. Here
each moment is stored as codes into a small table plus one fp32 absmax per block:

=====  ===============================================  ==========  ===================
bits   exp_avg (signed) / exp_avg_sq (non-negative)      block       bytes per parameter
=====  ===============================================  ==========  ===================
8      dynamic 8-bit code, signed / unsigned              256         2·(1 + 4/256) ≈ 2.03
4      dynamic 4-bit code (3 exponent bits) / linear      128         2·(½ + 4/128) ≈ 1.06
       1/16 … 1 (no zero: √v is a denominator)
=====  ===============================================  ==========  ===================

so about 0.254× and 0.133× of fp32 AdamW's 8 bytes (:func:`state_bytes_per_param`). Each step
dequantizes the moments to fp32, updates them, takes the AdamW step with the fp32 values, and
stores them quantized again. As in the reference, a parameter smaller than 4096 numbers (biases,
LayerNorms) or not a multiple of the block keeps fp32 moments: it costs little and is where a
coarse code would hurt most.

**The reference** is torchao's ``torchao.optim.AdamW8bit`` / ``AdamW4bit`` (the same tables,
block sizes, size rule and update order; bitsandbytes' ``AdamW8bit`` is the original). torchao
0.18 runs on this CPU with torch 2.13, but it is not an efflab dependency (its step goes through
``torch.compile``, ~seconds cold, and it brings its own compiled extensions), so efflab carries
this eager re-implementation, and ``tests/test_lowbit_optim.py`` compares the two where torchao
is installed.
"""

from __future__ import annotations

import math

import torch

from efflab.techniques.nf4 import (
    dequantize_codebook,
    dynamic_map,
    pack_nibbles,
    quantize_codebook,
    unpack_nibbles,
)

BITS = (8, 4)
DEFAULT_BLOCK = {8: 256, 4: 128}
MIN_NUMEL = 4096  # smaller parameters keep fp32 moments (torchao's rule)


def codebooks(bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table for exp_avg, table for exp_avg_sq) at ``bits``, as torchao builds them."""
    if bits == 8:
        return dynamic_map(True), dynamic_map(False)
    if bits == 4:
        return dynamic_map(True, 3, 4), torch.linspace(0, 1, 17)[1:]
    raise ValueError(f"bits={bits!r}: expected one of {BITS}")


def state_bytes_per_param(bits: int | None, block_size: int | None = None) -> float:
    """Bytes of AdamW state per (large) parameter: 8 in fp32 (``bits=None``), else two moments
    of ``bits/8`` bytes of codes plus a 4-byte absmax per block."""
    if bits is None:
        return 8.0
    bs = block_size or DEFAULT_BLOCK[bits]
    return 2 * (bits / 8 + 4 / bs)


class AdamWLowBit(torch.optim.Optimizer):
    """AdamW whose moments are stored in ``bits`` (8 or 4) with one absmax per ``block_size``.

    The same arguments as ``torch.optim.AdamW`` (decoupled weight decay), plus ``bits`` and
    ``block_size``. State of a quantized parameter: ``step``, ``exp_avg_codes``,
    ``exp_avg_absmax``, ``exp_avg_sq_codes``, ``exp_avg_sq_absmax`` (4-bit codes packed two per
    byte); of a small one: ``step``, ``exp_avg``, ``exp_avg_sq`` in fp32."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, bits: int = 8, block_size: int | None = None):
        if bits not in BITS:
            raise ValueError(f"bits={bits!r}: expected one of {BITS}")
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"lr={lr}, eps={eps}, betas={betas}: expected lr, eps >= 0 and "
                             "betas in [0, 1)")
        self.bits = bits
        self.block_size = block_size or DEFAULT_BLOCK[bits]
        self._tables = codebooks(bits)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    def quantized(self, p: torch.Tensor) -> bool:
        """Whether ``p``'s moments are stored in low bits (large enough, a whole number of blocks)."""
        return p.numel() >= MIN_NUMEL and p.numel() % self.block_size == 0

    def _store(self, x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes, absmax = quantize_codebook(x, table.to(x.device), self.block_size)
        return (pack_nibbles(codes) if self.bits == 4 else codes), absmax

    def _load(self, codes, absmax, table, shape) -> torch.Tensor:
        if self.bits == 4:
            codes = unpack_nibbles(codes)
        return dequantize_codebook(codes, absmax, table.to(absmax.device), shape)

    def _init_state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        st["step"] = 0
        zeros = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
        if not self.quantized(p):
            st["exp_avg"], st["exp_avg_sq"] = zeros, zeros.clone()
            return st
        m_tab, v_tab = self._tables
        st["exp_avg_codes"], st["exp_avg_absmax"] = self._store(zeros, m_tab)
        st["exp_avg_sq_codes"], st["exp_avg_sq_absmax"] = self._store(zeros, v_tab)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        m_tab, v_tab = self._tables
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p] if self.state[p] else self._init_state(p)
                st["step"] += 1
                t = st["step"]
                g = p.grad.float()
                q = "exp_avg_codes" in st
                if q:
                    m = self._load(st["exp_avg_codes"], st["exp_avg_absmax"], m_tab, p.shape)
                    v = self._load(st["exp_avg_sq_codes"], st["exp_avg_sq_absmax"], v_tab, p.shape)
                else:
                    m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.lerp_(g.square(), 1 - b2)
                if q:  # store the new moments; this step still uses their fp32 values
                    st["exp_avg_codes"], st["exp_avg_absmax"] = self._store(m, m_tab)
                    st["exp_avg_sq_codes"], st["exp_avg_sq_absmax"] = self._store(v, v_tab)
                p32 = p.float()
                p32.mul_(1 - lr * wd)
                denom = v.sqrt() / math.sqrt(1 - b2 ** t) + eps
                p32.addcdiv_(m, denom, value=-lr / (1 - b1 ** t))
                p.copy_(p32)
        return loss


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (moments, codes, scales, step counters)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if isinstance(v, torch.Tensor))


def make_lowbit_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.1,
                          bits: int = 8) -> AdamWLowBit:
    """:class:`AdamWLowBit` with efflab's training settings (``make_optimizer``'s): decay on
    matrices only, betas (0.9, 0.95)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return AdamWLowBit([{"params": decay, "weight_decay": weight_decay},
                        {"params": no_decay, "weight_decay": 0.0}],
                       lr=lr, betas=(0.9, 0.95), bits=bits)


__all__ = ["AdamWLowBit", "BITS", "DEFAULT_BLOCK", "MIN_NUMEL", "codebooks",
           "state_bytes_per_param", "optimizer_state_bytes", "make_lowbit_optimizer"]
