"""NF4: 4-bit NormalFloat weights with block-wise absmax scales and double quantization, the
frozen base of QLoRA (Dettmers et al., 2023, "QLoRA: Efficient Finetuning of Quantized LLMs").

One verb, as every technique here::

    apply_(model, NF4Config())                     # block Linears stored in NF4, frozen
    apply_(model, LoRAConfig(r=8))                 # + adapters: QLoRA

**The 16 levels.** Trained weights are roughly normal, so NF4 puts its levels at quantiles of
N(0, 1) rather than evenly: 8 levels from the quantiles of the positive half, 7 from the negative
half, and an exact zero, each side scaled so its outermost level is ±1 (:func:`nf4_levels`; the
construction bitsandbytes' ``create_normal_map`` uses, offset 0.9677). **A block** of 64
consecutive weights is divided by its absmax, then each value becomes the index (0..15) of its
nearest level, two indices packed per byte. **Double quantization**: the fp32 absmax of every
block would cost 32/64 = 0.5 bit per weight, so the absmaxes are themselves quantized: their
mean is subtracted (one fp32 offset per tensor) and they are stored in 8 bits in blocks of 256
with one fp32 scale each, on bitsandbytes' dynamic 8-bit code (:func:`dynamic_map`). Stored bytes
per tensor of n weights (:func:`nf4_bytes`), exactly::

    n/2 (codes) + n/64 (8-bit absmaxes) + 4·⌈n/(64·256)⌉ (their scales) + 4 (the offset)

about 4.127 bits per weight, the paper's figure. Without double quantization: n/2 + 4·n/64.

Dequantize: ``level[code] · absmax``, absmax = ``dyn[q] · scale2 + offset``. The forward pass
dequantizes the weight to fp32 and runs an ordinary matmul — on a CPU there is no NF4 kernel; what
NF4 buys here is memory, not speed. Biases stay fp32 (and frozen).

:func:`quantize_codebook` / :func:`dequantize_codebook` are the shared block-wise machinery: a
block's absmax, the nearest entry of a sorted code table; :mod:`efflab.techniques.lowbit_optim`
stores AdamW's moments with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import ConfigError, check_choice, check_int
from efflab.techniques.registry import register
from efflab.techniques.surgery import block_linears, swap_module

NF4_OFFSET = 0.9677083  # bitsandbytes: (1 - 1/(2·15) + 1 - 1/(2·16)) / 2, so ±1 are reachable
BLOCK_SIZES = (32, 64, 128, 256)

# bitsandbytes' published NF4 table (functional.py), to test the construction against
NF4_TABLE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NormalFloat-4 levels in [-1, 1], sorted, built from N(0, 1) quantiles.

    Positive side: the quantiles at 8 evenly spaced probabilities from ``offset`` down to 0.5
    (exclusive); negative side: 7 of them; plus an exact 0. Each side divided by its largest
    magnitude (the outermost quantile), so the levels end at -1 and +1."""
    p_pos = torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1]  # 8 probabilities
    p_neg = torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1]  # 7
    pos = torch.special.ndtri(p_pos)
    neg = -torch.special.ndtri(p_neg)
    v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)])
    return (v / pos.max()).sort().values.float()  # both sides' outermost is ndtri(offset)


def dynamic_map(signed: bool = True, exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' dynamic quantization code (Dettmers, "8-bit Approximations for Parallelism
    in Deep Learning", 2015): 2^total_bits sorted values in [-1, 1] (or [0, 1] unsigned).

    For each decade i = 0 .. exponent_bits-1 the interval [0.1, 1]·10^(i - exponent_bits + 1) is
    split into more and more linear steps (a dynamic exponent, a fraction with the bits left),
    so small magnitudes keep relative precision: what optimizer moments, spanning many orders of
    magnitude, need. Plus 0 and 1."""
    data: list[float] = []
    non_sign = total_bits - 1
    extra = 2 ** (non_sign - exponent_bits) - 1
    for i in range(exponent_bits):
        n = int(2 ** (i + non_sign - exponent_bits) + 1 if signed
                else 2 ** (i + non_sign - exponent_bits + 1) + 1)
        b = torch.linspace(0.1, 1, n, dtype=torch.float32)
        means = ((b[:-1] + b[1:]) / 2).tolist()
        data += [10 ** (-(exponent_bits - 1) + i) * m for m in means]
        if signed:
            data += [-(10 ** (-(exponent_bits - 1) + i)) * m for m in means]
    if extra > 0:
        b = torch.linspace(0.1, 1, extra + 1, dtype=torch.float32)
        means = ((b[:-1] + b[1:]) / 2).tolist()
        data += [10 ** (-(exponent_bits - 1) + exponent_bits - 1) * m for m in means]
        if signed:
            data += [-(10 ** (-(exponent_bits - 1) + exponent_bits - 1)) * m for m in means]
    data += [0.0, 1.0]
    if len(data) != 2 ** total_bits:
        raise ValueError(f"dynamic map with {len(data)} values, not {2 ** total_bits}")
    return torch.tensor(sorted(data), dtype=torch.float32)


# ----------------------------------------------------------------------------- block-wise codes

def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted ``codebook`` for each value of ``x`` (uint8)."""
    mid = (codebook[1:] + codebook[:-1]) / 2  # decision boundaries between neighbours
    return torch.bucketize(x.contiguous(), mid.to(x.dtype)).to(torch.uint8)


def quantize_codebook(x: torch.Tensor, codebook: torch.Tensor, block_size: int):
    """Block-wise absmax quantization onto ``codebook`` (sorted, within [-1, 1]).

    x (any shape, numel divisible by ``block_size``) -> codes (numel,) uint8 indices into the
    codebook, absmax (numel/block_size,) fp32, with ``x ≈ codebook[codes] · absmax`` per block."""
    blocks = x.detach().float().reshape(-1, block_size)  # (n/bs, bs)
    absmax = blocks.abs().amax(dim=1)  # (n/bs,)
    scaled = blocks / absmax.clamp(min=1e-12)[:, None]
    return nearest_code(scaled, codebook).reshape(-1), absmax


def dequantize_codebook(codes: torch.Tensor, absmax: torch.Tensor, codebook: torch.Tensor,
                        shape) -> torch.Tensor:
    """The inverse of :func:`quantize_codebook`: ``codebook[codes] · absmax``, reshaped."""
    vals = codebook.index_select(0, codes.long()).reshape(absmax.numel(), -1) * absmax[:, None]
    return vals.reshape(shape)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes in [0, 15] -> (n/2,) uint8: element 2j in the high nibble, 2j+1 in the low."""
    c = codes.reshape(-1, 2).to(torch.uint8)
    return (c[:, 0] << 4) | c[:, 1]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles`: (n/2,) uint8 -> (n,) uint8 codes."""
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)


# ----------------------------------------------------------------------------- NF4 tensors

@dataclass(frozen=True)
class NF4Config:
    """NF4 storage of the frozen block Linears (QLoRA's base).

    ``block_size``: weights per absmax (64 in QLoRA). ``double_quant``: quantize the absmaxes
    too (8-bit, blocks of ``double_block_size`` = 256), as QLoRA does.
    """

    block_size: int = 64
    double_quant: bool = True
    double_block_size: int = 256

    def __post_init__(self):
        check_choice("block_size", self.block_size, BLOCK_SIZES)
        if not isinstance(self.double_quant, bool):
            raise ConfigError("double_quant", self.double_quant, "True or False")
        check_int("double_block_size", self.double_block_size, lo=2)


def nf4_bytes(n: int, config: NF4Config | None = None) -> int:
    """Stored bytes of an NF4 tensor of ``n`` weights (``n`` a multiple of the block size)."""
    c = config or NF4Config()
    blocks = n // c.block_size
    if not c.double_quant:
        return n // 2 + 4 * blocks
    return n // 2 + blocks + 4 * math.ceil(blocks / c.double_block_size) + 4


def quantize_nf4(w: torch.Tensor, config: NF4Config | None = None) -> dict[str, torch.Tensor]:
    """NF4 storage of ``w``: ``{"codes": (n/2,) uint8 packed, and either "absmax": fp32 per
    block, or (double quantization) "absmax_codes": uint8, "absmax_scale": fp32 per 256 blocks,
    "absmax_offset": fp32 scalar}``."""
    c = config or NF4Config()
    if w.numel() % c.block_size:
        raise ValueError(f"NF4 needs a multiple of block_size={c.block_size} weights, "
                         f"got {w.numel()}")
    codes, absmax = quantize_codebook(w, nf4_levels().to(w.device), c.block_size)
    out = {"codes": pack_nibbles(codes)}
    if not c.double_quant:
        out["absmax"] = absmax
        return out
    offset = absmax.mean()
    centred = absmax - offset
    pad = (-centred.numel()) % c.double_block_size  # the last block of scales may be short
    padded = torch.cat([centred, centred.new_zeros(pad)])
    q, scale2 = quantize_codebook(padded, dynamic_map(True).to(w.device), c.double_block_size)
    out.update(absmax_codes=q[: centred.numel()], absmax_scale=scale2,
               absmax_offset=offset.reshape(()))
    return out


def dequantize_nf4(q: dict[str, torch.Tensor], shape, config: NF4Config | None = None
                   ) -> torch.Tensor:
    """fp32 weights of ``shape`` from :func:`quantize_nf4`'s storage."""
    c = config or NF4Config()
    if "absmax" in q:
        absmax = q["absmax"]
    else:
        codes = q["absmax_codes"]
        pad = (-codes.numel()) % c.double_block_size
        padded = torch.cat([codes, codes.new_zeros(pad)])
        dyn = dynamic_map(True).to(codes.device)
        absmax = dequantize_codebook(padded, q["absmax_scale"], dyn, (-1,))[: codes.numel()]
        absmax = absmax + q["absmax_offset"]
    return dequantize_codebook(unpack_nibbles(q["codes"]), absmax, nf4_levels().to(absmax.device),
                               shape)


def nf4_roundtrip(w: torch.Tensor, config: NF4Config | None = None) -> torch.Tensor:
    """``w`` quantized to NF4 and back (fp32, same shape)."""
    return dequantize_nf4(quantize_nf4(w, config), w.shape, config)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 (buffers), dequantized to fp32 each forward."""

    def __init__(self, linear: nn.Linear, config: NF4Config):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.config = config
        for k, v in quantize_nf4(linear.weight, config).items():
            self.register_buffer(k, v)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                 requires_grad=False)

    def storage(self) -> dict[str, torch.Tensor]:
        return {k: b for k, b in self.named_buffers(recurse=False)}

    def dequantize(self) -> torch.Tensor:
        """The weight (out × in) in fp32."""
        return dequantize_nf4(self.storage(), (self.out_features, self.in_features), self.config)

    def weight_bytes(self) -> int:
        """Stored bytes of the weight (codes and scales; not the bias)."""
        return sum(b.numel() * b.element_size() for b in self.storage().values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        dq = ", double-quant" if self.config.double_quant else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"NF4 block={self.config.block_size}{dq}")


@register(NF4Config)
def _nf4(model: nn.Module, config: NF4Config) -> nn.Module:
    """Store every block Linear in NF4 (frozen) and return ``model``."""
    for name, m in block_linears(model):
        swap_module(model, name, NF4Linear(m, config))
    return model


def nf4_layers(model: nn.Module) -> list[tuple[str, NF4Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, NF4Linear)]


__all__ = ["NF4Config", "NF4Linear", "NF4_TABLE", "nf4_levels", "dynamic_map", "nearest_code",
           "quantize_codebook", "dequantize_codebook", "pack_nibbles", "unpack_nibbles",
           "nf4_bytes", "quantize_nf4", "dequantize_nf4", "nf4_roundtrip", "nf4_layers"]
