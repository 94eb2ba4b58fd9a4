"""Post-training weight quantization: store the block Linears' weights in 8 or 4 bits.

Decoding one token at batch 1 multiplies a single activation row by every weight matrix, so
each weight byte is read from memory once and used for one multiply-add: the step is bound by
memory bandwidth, ``tokens/s <= bandwidth / bytes read per token``
(:func:`weight_bytes_per_token`). Storing weights in fewer bits reads fewer bytes. One verb,
torchao style::

    apply_(model, QuantizationConfig("int8-weight"))                 # per-channel int8
    apply_(model, QuantizationConfig("int4-weight", group_size=64))  # group-wise 4-bit, packed
    apply_(model, QuantizationConfig("int8-dynamic"))                # int8 weights and activations

=================  ============================  =====================  ======================
mode               weights                       activations            stored bytes / weight
=================  ============================  =====================  ======================
``none``           fp32                          fp32                   4
``int8-weight``    int8, symmetric, one bf16     fp32 in and out (bf16  1 + 2/K
                   scale per output channel      inside the kernel)
``int4-weight``    4-bit codes, asymmetric, one  same as int8-weight    0.5 + 4/group_size
                   bf16 (scale, zero) per group
                   of ``group_size`` inputs;
                   two codes per byte
``int8-dynamic``   int8, symmetric, one fp32     int8, one scale per    1 + 4/K
                   scale per output channel      token, found at run
                                                 time; int32 matmul
=================  ============================  =====================  ======================

Only the Linears inside the transformer blocks (``model.h``) are quantized. The output head
``lm_head`` stays in full precision: its weight *is* the token table ``wte`` (weight tying), and
the table is also the input embedding, so quantizing one would change the other.

**Which kernel.** PyTorch's CPU kernels ``aten._weight_int8pack_mm`` and
``aten._weight_int4pack_mm_for_cpu`` are fast with bf16 activations and take slow paths with
fp16 or fp32 ones; ``torch._int_mm`` (int8 x int8 -> int32, the honest integer matmul of
``int8-dynamic``) pays off only on hardware with int8 matrix units (GPU tensor cores, VNNI/AMX
CPUs). Whether unpacking 4-bit codes costs more than the bytes it saves, and where prefill's
many rows make the fp32 matmul win again, depends on the CPU: measure it here with
``benchmarks/quantization_decode.py`` (results, with the machine they came from, in
``benchmarks/results/quantization_decode.json`` and the README). The kernels are used at every
row count — one path, no hidden threshold — so a learner sees the trade-off in the measurements.

So the weight-only modules take fp32 input, cast it to bf16 for the fused kernel, and cast the
output back (bf16 rounds to 8 significant bits: about 0.4% per element, far below the 4-bit
rounding error and comparable to int8's). Scales are stored in bf16 because that is what the
kernels read; the codes are rounded against those bf16 scales, so the stored numbers are exactly
what the kernel and :meth:`QuantizedLinear.reference_forward` both use.

Every module has ``reference_forward(x)``: dequantize the stored weight to fp32 and do a plain
matmul — the slow reference each fast path is tested against.

**The int4 packed layout.** ``_convert_weight_to_int4pack_for_cpu`` turns (N, K) int32 codes
into (N, K/2) uint8 — two codes per byte — in a blocked order that depends on the CPU's vector
width (AVX-512, AVX2 and scalar builds differ). Only that packed tensor is kept (keeping a
second, plain copy would halve the saving), so it is a runtime format: build quantized models
fresh from the fp32 weights, do not ship their state_dict between machines. To read the codes
back, :func:`unpack_int4` *learns* the order by packing position labels, 4 bits at a time —
no assumption about the CPU. Where the kernel is missing (another device, N not a multiple of
16) the codes are packed plainly: byte ``j`` of row ``n`` holds column ``2j`` in its low nibble
and ``2j + 1`` in its high nibble, and the forward is unpack -> dequantize -> matmul.

Quantized modules are inference only: their weights are buffers, not trainable parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import (
    GROUP_SIZES,
    QUANTIZATIONS,
    ConfigError,
    GroupSize,
    ModelConfig,
    Quantization,
    check_choice,
)
from efflab.techniques.registry import register
from efflab.techniques.surgery import block_linears, swap_module

KERNEL_DTYPE = torch.bfloat16  # activation dtype the weight-only kernels are fast with here
INT4_MID = 8  # int4 codes are 0..15; code 8 sits on the group's zero point


@dataclass(frozen=True)
class QuantizationConfig:
    """How to quantize the block Linears.

    ``mode``: ``"none"`` (leave the model alone), ``"int8-weight"``, ``"int4-weight"`` or
    ``"int8-dynamic"`` (see the module docstring's table). ``group_size``: how many consecutive
    input features share one (scale, zero) pair in ``int4-weight`` — one of 32, 64, 128, 256;
    smaller groups track the weights more closely and cost more bytes of scales. The int8
    modes use one scale per output channel and ignore ``group_size``.
    """

    mode: Quantization = "none"
    group_size: GroupSize = 64

    def __post_init__(self):
        check_choice("mode", self.mode, QUANTIZATIONS)
        check_choice("group_size", self.group_size, GROUP_SIZES)

    @property
    def bits(self) -> int:
        """Bits per stored weight code (32 for ``none``)."""
        return {"none": 32, "int8-weight": 8, "int4-weight": 4, "int8-dynamic": 8}[self.mode]


# ----------------------------------------------------------------------------- what is quantized

def _in_features(model_or_cfg: nn.Module | ModelConfig) -> list[tuple[str, int]]:
    if isinstance(model_or_cfg, ModelConfig):
        C = model_or_cfg.n_embd  # c_attn, attn.c_proj and c_fc read C; mlp.c_proj reads 4C
        return [("attn.c_attn", C), ("attn.c_proj", C), ("mlp.c_fc", C), ("mlp.c_proj", 4 * C)]
    return [(name, m.in_features) for name, m in block_linears(model_or_cfg)]


def check_fits(model_or_cfg: nn.Module | ModelConfig, config: QuantizationConfig) -> None:
    """Raise ConfigError naming ``group_size`` if it does not divide every quantized Linear's
    in-features (only ``int4-weight`` groups its weights; the other modes always fit)."""
    if config.mode != "int4-weight":
        return
    layers = _in_features(model_or_cfg)
    for name, k in layers:
        if k % config.group_size:
            ok = [g for g in GROUP_SIZES if all(kk % g == 0 for _, kk in layers)]
            allowed = ("one of " + ", ".join(str(g) for g in ok)) if ok else "impossible"
            raise ConfigError("group_size", config.group_size,
                              f"{allowed}: a divisor of every quantized Linear's in_features "
                              f"({name} has {k})")


# ----------------------------------------------------------------------------- quantizers

def quantize_int8_per_channel(w: torch.Tensor, scale_dtype=torch.float32):
    """Symmetric int8, one scale per output channel.

    w: (N, K) float -> codes (N, K) int8 in [-127, 127], scales (N,) ``scale_dtype`` with
    ``w ~= codes * scales[:, None]``. The scale is rounded to ``scale_dtype`` *before* the codes
    are chosen, so the codes are the best ones for the scale actually stored.
    """
    w = w.detach().float()
    amax = w.abs().amax(dim=1)  # (N,)
    scales = (amax / 127).clamp(min=1e-12).to(scale_dtype)
    codes = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return codes, scales


def quantize_int4_groupwise(w: torch.Tensor, group_size: int, scale_dtype=torch.float32):
    """Asymmetric 4-bit, one (scale, zero) per ``group_size`` consecutive inputs of a row.

    w: (N, K) float -> codes (N, K) uint8 in [0, 15] and scales_and_zeros (K/G, N, 2)
    ``scale_dtype`` — the layout the aten kernel reads — with, for input k in group g = k // G::

        w[n, k] ~= (codes[n, k] - 8) * scale[g, n] + zero[g, n]

    Min-max ranging: scale = (max - min) / 15 and zero = min + 8 * scale, so code 0 lands on the
    group's minimum and code 15 on its maximum. Asymmetric rather than symmetric because the
    kernel applies a zero point for free, and with only 16 levels a group whose values lean to
    one side would otherwise waste some of them.
    """
    N, K = w.shape
    G = group_size
    wg = w.detach().float().view(N, K // G, G)  # (N, K/G, G)
    lo, hi = wg.amin(dim=-1), wg.amax(dim=-1)  # (N, K/G)
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(scale_dtype).float()
    zero = (lo + INT4_MID * scale).to(scale_dtype).float()
    codes = ((wg - zero[..., None]) / scale[..., None]).round() + INT4_MID
    codes = codes.clamp(0, 15).to(torch.uint8).view(N, K)
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return codes, scales_and_zeros.to(scale_dtype)  # (N, K) uint8, (K/G, N, 2)


def dequantize_int4(codes: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """codes (N, K) in [0, 15], scales_and_zeros (K/G, N, 2) -> (N, K) fp32 weight."""
    N, K = codes.shape
    n_groups = scales_and_zeros.size(0)
    sz = scales_and_zeros.float().transpose(0, 1)  # (N, K/G, 2)
    scale, zero = sz[..., 0:1], sz[..., 1:2]  # (N, K/G, 1) each
    w = (codes.view(N, n_groups, K // n_groups).float() - INT4_MID) * scale + zero
    return w.view(N, K)


def quantize_per_token_int8(x: torch.Tensor):
    """Symmetric int8 per row: x (M, K) float -> codes (M, K) int8, scales (M, 1) fp32."""
    x = x.float()
    scales = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12)  # (M, 1)
    return (x / scales).round().clamp(-127, 127).to(torch.int8), scales


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Plain packing: codes (N, K) in [0, 15] -> (N, K/2) uint8, column 2j in the low nibble
    of byte j and column 2j + 1 in its high nibble."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) uint8: each byte's low nibble, then its high nibble."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).view(packed.size(0), -1)


def _aten_int4_order(N: int, K: int) -> torch.Tensor:
    """Where ``_convert_weight_to_int4pack_for_cpu`` puts each code, learned by asking it.

    Returns (N*K,) int64: for the i-th nibble of the packed tensor (as :func:`_nibbles` reads
    it), the flat index n*K + k of the code it holds. Each pass packs one base-16 digit of
    every position's index as if it were a weight code; reading the digits back where they
    landed spells out each nibble's origin. ceil(log16(N*K)) passes, any CPU vector width.
    """
    label = torch.arange(N * K, dtype=torch.int64)  # (N*K,)
    order = torch.zeros_like(label)
    shift = 0
    while shift == 0 or (1 << shift) < N * K:
        digit = ((label >> shift) & 15).to(torch.int32).view(N, K)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1)  # (N, K/2)
        order |= _nibbles(packed).reshape(-1).long() << shift
        shift += 4
    return order


def unpack_int4(packed: torch.Tensor, layout: str) -> torch.Tensor:
    """(N, K/2) uint8 in ``layout`` ("plain" or "aten-cpu") -> (N, K) uint8 codes."""
    nib = _nibbles(packed)  # (N, K) in storage order
    if layout == "plain":
        return nib
    if layout != "aten-cpu":
        raise ValueError(f"unknown int4 layout {layout!r}")
    N, K = nib.shape
    codes = torch.empty(N * K, dtype=torch.uint8)
    codes[_aten_int4_order(N, K)] = nib.reshape(-1).cpu()
    return codes.view(N, K).to(packed.device)


# ----------------------------------------------------------------------------- kernel probes

@functools.cache
def _works(kernel: str) -> bool:
    """Does this torch have ``kernel`` on CPU, and does it compute what we think on a tiny case?"""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, generator=g)
    try:
        if kernel == "int8pack":
            q, s = quantize_int8_per_channel(torch.randn(32, 64, generator=g), KERNEL_DTYPE)
            y = torch.ops.aten._weight_int8pack_mm(x.to(KERNEL_DTYPE), q, s).float()
            ref = x.to(KERNEL_DTYPE).float() @ (q.float() * s.float()[:, None]).t()
        elif kernel == "int4pack":
            codes, sz = quantize_int4_groupwise(torch.randn(32, 64, generator=g), 32, KERNEL_DTYPE)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(KERNEL_DTYPE), packed, 32, sz)
            y = y.float()
            ref = x.to(KERNEL_DTYPE).float() @ dequantize_int4(codes, sz).t()
        elif kernel == "int_mm":
            a = torch.randint(-127, 128, (2, 64), dtype=torch.int8, generator=g)
            b = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=g)
            return bool(torch.equal(torch._int_mm(a, b.t()), a.int() @ b.int().t()))
        else:
            raise ValueError(kernel)
    except (AttributeError, NotImplementedError, RuntimeError):
        return False
    return bool((y - ref).abs().max() <= 0.02 * ref.abs().max())


def kernels_available() -> dict[str, bool]:
    """Which fused CPU kernels this torch has and computes correctly (probed once)."""
    return {k: _works(k) for k in ("int8pack", "int4pack", "int_mm")}


# ----------------------------------------------------------------------------- modules

def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _element_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class QuantizedLinear(nn.Module):
    """What every quantized Linear shares: shape, bias, byte count, the slow reference.

    Subclasses store their codes and scales as buffers and define ``dequantize_weight`` (the
    (N, K) fp32 weight the stored numbers stand for) and ``forward`` (the fast path).
    """

    mode: str = ""
    bits: int = 0
    scheme: str = ""
    group_size: int | None = None  # inputs sharing one scale; None: one scale per output channel
    kernel: str = "reference"  # which forward runs, named in print(model)

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)  # (N,) fp32 or None

    def dequantize_weight(self) -> torch.Tensor:
        """The (N, K) fp32 weight the stored codes and scales stand for (each scheme's own)."""
        raise NotImplementedError(f"{type(self).__name__} must define dequantize_weight")

    def _bias32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) -> (..., N): dequantize the stored weight to fp32, plain matmul."""
        y = F.linear(x.float(), self.dequantize_weight(), self._bias32())
        return y.to(x.dtype)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(M, N) kernel output -> (..., N) in x's dtype, bias added in fp32."""
        y = y.float()
        if self.bias is not None:
            y = y + self._bias32()
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def nbytes(self) -> int:
        """Bytes this layer stores: codes + scales (+ zeros) + bias."""
        return _nbytes(self.buffers())

    @classmethod
    def stored_bytes(cls, out_features: int, in_features: int, bias: bool = True,
                     group_size: int = 64) -> int:
        """Bytes a layer of this shape will store, from the layout alone (no weights needed):
        codes + scales (+ zeros) + an fp32 bias. Equals ``nbytes()`` of the built layer."""
        N, K = out_features, in_features
        return cls._code_bytes(N, K) + cls._scale_bytes(N, K, group_size) + (4 * N if bias else 0)

    @classmethod
    def _code_bytes(cls, N: int, K: int) -> int:
        return N * K * cls.bits // 8

    @classmethod
    def _scale_bytes(cls, N: int, K: int, group_size: int) -> int:  # one scale per channel
        return N * _element_bytes(cls._scale_dtype(N))

    @classmethod
    def _scale_dtype(cls, N: int) -> torch.dtype:
        return torch.float32

    def matches(self, config: QuantizationConfig) -> bool:
        """Was this layer made by ``config``?"""
        return self.mode == config.mode and (self.group_size is None
                                             or self.group_size == config.group_size)

    def extra_repr(self) -> str:
        group = "per-channel" if self.group_size is None else str(self.group_size)
        acts = ", activations=int8 per-token" if self.mode == "int8-dynamic" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, bits={self.bits}, "
                f"group_size={group}{acts}, bytes={self.nbytes()}, kernel={self.kernel}")


class Int8WeightOnlyLinear(QuantizedLinear):
    """Weights in int8 (one symmetric scale per output channel); activations stay float.

    Buffers: ``qweight`` (N, K) int8, ``scales`` (N,) bf16 (fp32 without the kernel), ``bias``.
    Forward: ``aten._weight_int8pack_mm`` on bf16 activations (see the module docstring for
    why bf16), else the reference.
    """

    mode, bits, scheme = "int8-weight", 8, "int8-weight symmetric"

    @classmethod
    def _scale_dtype(cls, N: int) -> torch.dtype:  # bf16 is what the fused kernel takes
        return KERNEL_DTYPE if _works("int8pack") else torch.float32

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        self.fast = _works("int8pack") and linear.weight.device.type == "cpu"
        codes, scales = quantize_int8_per_channel(
            linear.weight, KERNEL_DTYPE if self.fast else torch.float32)
        self.register_buffer("qweight", codes)  # (N, K) int8
        self.register_buffer("scales", scales)  # (N,)
        self.kernel = "aten._weight_int8pack_mm(bf16)" if self.fast else "reference"

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantizationConfig | None = None):
        return cls(linear)

    def dequantize_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]  # (N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.reference_forward(x)
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()  # (M, K) bf16
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight,
                                               self.scales.to(KERNEL_DTYPE))  # (M, N) bf16
        return self._finish(y, x)


class Int4WeightOnlyLinear(QuantizedLinear):
    """Weights in 4 bits, packed two per byte, one (scale, zero) per group of inputs.

    Buffers: ``qweight`` (N, K/2) uint8 (``layout`` "aten-cpu" for the kernel, else "plain"),
    ``scales_and_zeros`` (K/G, N, 2) bf16 (fp32 without the kernel), ``bias``.
    Forward: ``aten._weight_int4pack_mm_for_cpu`` on bf16 activations, else
    unpack -> dequantize -> matmul (the reference).
    """

    mode, bits, scheme = "int4-weight", 4, "int4-weight asymmetric"

    @classmethod
    def _scale_dtype(cls, N: int) -> torch.dtype:
        return KERNEL_DTYPE if _works("int4pack") and N % 16 == 0 else torch.float32

    @classmethod
    def _scale_bytes(cls, N: int, K: int, group_size: int) -> int:  # (K/G, N, 2): scale, zero
        return (K // group_size) * N * 2 * _element_bytes(cls._scale_dtype(N))

    def __init__(self, linear: nn.Linear, group_size: int = 64):
        super().__init__(linear)
        N, K = self.out_features, self.in_features
        if K % group_size:
            raise ConfigError("group_size", group_size, f"a divisor of in_features={K}")
        self.group_size = group_size
        self.fast = (_works("int4pack") and linear.weight.device.type == "cpu" and N % 16 == 0)
        codes, sz = quantize_int4_groupwise(
            linear.weight, group_size, KERNEL_DTYPE if self.fast else torch.float32)
        if self.fast:  # the kernel's own blocked order: built once here, never per call
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int().cpu(), 1)
            self.layout = "aten-cpu"
        else:
            packed = pack_int4(codes)
            self.layout = "plain"
        self.register_buffer("qweight", packed.to(linear.weight.device))  # (N, K/2) uint8
        self.register_buffer("scales_and_zeros", sz)  # (K/G, N, 2)
        self.kernel = ("aten._weight_int4pack_mm_for_cpu(bf16)" if self.fast
                       else "reference (unpack, dequantize, matmul)")

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantizationConfig):
        return cls(linear, config.group_size)

    def codes(self) -> torch.Tensor:
        """(N, K) uint8 codes in [0, 15], unpacked from whichever layout is stored."""
        return unpack_int4(self.qweight, self.layout)

    def dequantize_weight(self) -> torch.Tensor:
        return dequantize_int4(self.codes(), self.scales_and_zeros)  # (N, K) fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.reference_forward(x)
        x2 = x.reshape(-1, self.in_features).to(KERNEL_DTYPE).contiguous()  # (M, K) bf16
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.qweight, self.group_size, self.scales_and_zeros.to(KERNEL_DTYPE))  # (M, N)
        return self._finish(y, x)


class Int8DynamicLinear(QuantizedLinear):
    """int8 weights (per channel) times int8 activations (per token, scaled at run time).

    Buffers: ``qweight`` (N, K) int8, ``scales`` (N,) fp32, ``bias``. Forward::

        x_q, s_x = quantize_per_token_int8(x)        # (M, K) int8, (M, 1)
        acc = x_q @ qweight.T                        # (M, N) int32, exact
        y = acc * s_x * scales + bias                # back to float

    The integer matmul is ``torch._int_mm`` where it works, else an int32 matmul (CPU) or an
    exact fp64 one (other devices). Because the
    scheme rounds activations too, ``reference_forward`` rounds them the same way (per token,
    in fp32) before its plain fp32 matmul: it is the scheme's exact arithmetic, done slowly.
    """

    mode, bits, scheme = "int8-dynamic", 8, "int8-dynamic symmetric"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear)
        codes, scales = quantize_int8_per_channel(linear.weight, torch.float32)
        self.register_buffer("qweight", codes)  # (N, K) int8
        self.register_buffer("scales", scales)  # (N,) fp32
        self.use_int_mm = _works("int_mm") and linear.weight.device.type == "cpu"
        self.kernel = "torch._int_mm" if self.use_int_mm else "exact integer matmul"

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantizationConfig | None = None):
        return cls(linear)

    def dequantize_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]  # (N, K)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = quantize_per_token_int8(x.reshape(-1, self.in_features))  # (M, K), (M, 1)
        x_fake = (xq.float() * sx).view(*x.shape[:-1], self.in_features)  # activations as the integer path sees them
        return F.linear(x_fake, self.dequantize_weight(), self._bias32()).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = quantize_per_token_int8(x.reshape(-1, self.in_features))  # (M, K), (M, 1)
        if self.use_int_mm:
            acc = torch._int_mm(xq, self.qweight.t())  # (M, N) int32
        elif xq.device.type == "cpu":
            acc = xq.int() @ self.qweight.int().t()  # (M, N) int32 accumulation
        else:  # torch has no int32 matmul off the CPU; fp64 is exact for |acc| < 2**53
            acc = (xq.double() @ self.qweight.double().t()).to(torch.int32)
        return self._finish(acc.float() * sx * self.scales, x)


MODULES: dict[str, type[QuantizedLinear]] = {
    "int8-weight": Int8WeightOnlyLinear,
    "int4-weight": Int4WeightOnlyLinear,
    "int8-dynamic": Int8DynamicLinear,
}


def block_linear_shapes(cfg: ModelConfig, n_layers: int | None = None) -> list[tuple[int, int, bool]]:
    """(out_features, in_features, has_bias) of every Linear quantization replaces in
    ``n_layers`` dense blocks (default: all): qkv (3C, C), attention out (C, C), MLP up (4C, C),
    MLP down (C, 4C). A mixture-of-experts block lists its own (``MoEConfig.linear_shapes``)."""
    C = cfg.n_embd
    n = cfg.n_layer if n_layers is None else n_layers
    return [(3 * C, C, True), (C, C, True), (4 * C, C, True), (C, 4 * C, True)] * n


def predicted_weight_bytes(shapes: list[tuple[int, int, bool]], config: QuantizationConfig,
                           n_params: int, param_bytes: int = 4) -> int:
    """Bytes of a model of ``n_params`` parameters once ``config`` has replaced its block Linears
    of ``shapes``: those in the scheme's layout (:meth:`QuantizedLinear.stored_bytes`), every other
    parameter (embeddings, LayerNorms) at ``param_bytes``. Equals the built model's bytes."""
    if config.mode == "none":
        return n_params * param_bytes
    layer = MODULES[config.mode]
    replaced = sum(N * K + (N if bias else 0) for N, K, bias in shapes)
    packed = sum(layer.stored_bytes(N, K, bias, config.group_size) for N, K, bias in shapes)
    return (n_params - replaced) * param_bytes + packed


# ----------------------------------------------------------------------------- the verb

def _quantized_layers(model: nn.Module) -> list[QuantizedLinear]:
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


@register(QuantizationConfig)
@torch.no_grad()
def _quantize(model: nn.Module, config: QuantizationConfig) -> nn.Module:
    """Replace every Linear in the blocks of ``model`` with its quantized form, in place.

    ``lm_head`` (tied to the token table ``wte``), the embeddings and the LayerNorms stay in
    full precision. ``mode="none"`` leaves the model untouched. Quantizing an already-quantized
    model with the same config does nothing (idempotent); with a different config it raises
    ConfigError — re-quantizing rounded weights would compound the error, so quantize a fresh
    fp32 model instead. A ``group_size`` that does not fit raises ConfigError before any layer
    changes. Move the model to its device *before* quantizing: each layer picks its kernel
    (and, for int4, its packed layout) for the device its weights are on. Returns ``model``.
    """
    if config.mode == "none":
        return model
    done = _quantized_layers(model)
    if done:
        if all(m.matches(config) for m in done):
            return model
        have = sorted({f"{m.mode}" + (f" (group_size={m.group_size})" if m.group_size else "")
                       for m in done})
        raise ConfigError("mode", config.mode,
                          f"'none' or the config this model was already quantized with "
                          f"({', '.join(have)}); for another, quantize a fresh fp32 model")
    check_fits(model, config)
    cls = MODULES[config.mode]
    for name, linear in block_linears(model):
        swap_module(model, name, cls.from_linear(linear, config))
    return model


# ----------------------------------------------------------------------------- measuring

def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as stored (packed int4 counts as packed; the tied
    lm_head/wte table counts once)."""
    seen: dict[int, torch.Tensor] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(id(t), t)
    return _nbytes(seen.values())


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes read from memory to decode one token at batch 1: every matmul weight (with its
    scales and bias), the LayerNorms, and one row of each embedding table that is only looked
    up. The tied token table counts in full, because ``lm_head`` multiplies by all of it.
    The KV cache is not a weight and is not counted (it grows with the position)."""
    matmul_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        own = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        for _, t in own:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            if isinstance(m, nn.Embedding) and id(t) not in matmul_weights:
                total += m.embedding_dim * t.element_size()  # one row per token
            else:
                total += t.numel() * t.element_size()
    return total


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(Σ ref² / Σ (ref - approx)²), in dB.

    +6 dB per extra bit, roughly: int8 weights land near 40 dB, 4-bit groups near 20 dB.
    Identical tensors give ``inf``.
    """
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise)


@torch.no_grad()
def layer_sqnr(model_fp32: nn.Module, config: QuantizationConfig) -> list[dict]:
    """Per quantizable Linear of an fp32 model: how well ``config`` keeps its weight.

    Returns ``[{"name", "out_features", "in_features", "sqnr_db"}, ...]``; the model itself is
    not changed (each layer is quantized into a throwaway copy).
    """
    check_fits(model_fp32, config)
    rows = []
    for name, linear in block_linears(model_fp32):
        if config.mode == "none":
            db = math.inf
        else:
            q = MODULES[config.mode].from_linear(linear, config)
            db = sqnr_db(linear.weight, q.dequantize_weight())
        rows.append({"name": name, "out_features": linear.out_features,
                     "in_features": linear.in_features, "sqnr_db": db})
    return rows


__all__ = [
    "QuantizationConfig", "check_fits",
    "QuantizedLinear", "Int8WeightOnlyLinear", "Int4WeightOnlyLinear", "Int8DynamicLinear",
    "quantize_int8_per_channel", "quantize_int4_groupwise", "dequantize_int4",
    "quantize_per_token_int8", "pack_int4", "unpack_int4", "kernels_available",
    "model_bytes", "weight_bytes_per_token", "sqnr_db", "layer_sqnr", "block_linear_shapes",
    "predicted_weight_bytes",
]
