"""Quantization-aware training: train with the weights fake-quantized to int4, so the model
learns weights that survive the real int4 conversion.

One verb, as every technique here::

    apply_(model, QATConfig(group_size=64))   # block Linears see int4-rounded weights in forward
    ... fine-tune ...
    convert_qat_(model)                       # real int4: QuantizationConfig("int4-weight", 64)

A :class:`FakeQuantLinear` keeps its fp32 weight ``W`` and trains it, but its forward uses
``Q(W)``: ``W`` quantized to int4 and dequantized again on exactly the grid the real
``int4-weight`` layer uses (``quantization.quantize_int4_groupwise``: asymmetric, one (scale,
zero) per ``group_size`` inputs of a row). Rounding has no useful gradient (zero almost
everywhere), so backward uses the **straight-through estimator** (Bengio et al., 2013): the
gradient with respect to ``Q(W)`` is passed to ``W`` unchanged, written
``W + (Q(W) - W).detach()`` — the value of ``Q(W)``, the gradient of ``W``. Training then
moves ``W`` so that the loss *of its int4 rounding* falls, which post-training quantization
never does. The names follow torchao's QAT flow (``prepare`` = ``apply_``, then ``convert``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import check_choice
from efflab.techniques.quantization import (
    GROUP_SIZES,
    QuantizationConfig,
    check_fits,
    dequantize_int4,
    quantize_int4_groupwise,
)
from efflab.techniques.registry import apply_, register
from efflab.techniques.surgery import block_linears, swap_module

BITS = (4,)


@dataclass(frozen=True)
class QATConfig:
    """Fake-quantize every block Linear's weight to ``bits``-bit integers in ``group_size``
    groups during training (only ``bits=4``, the grid of ``QuantizationConfig("int4-weight")``)."""

    bits: int = 4
    group_size: int = 64

    def __post_init__(self):
        check_choice("bits", self.bits, BITS)
        check_choice("group_size", self.group_size, GROUP_SIZES)

    def target(self) -> QuantizationConfig:
        """The real quantization :func:`convert_qat_` applies after training."""
        return QuantizationConfig("int4-weight", self.group_size)


def fake_quantize_int4(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """``w`` rounded to the int4 grid and back (no gradient): what the int4 layer computes with."""
    with torch.no_grad():
        codes, sz = quantize_int4_groupwise(w, group_size)
        return dequantize_int4(codes, sz).to(w.dtype)


class FakeQuantLinear(nn.Module):
    """A Linear that trains its fp32 weight but computes with its int4 rounding (STE)."""

    def __init__(self, linear: nn.Linear, config: QATConfig):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # (out, in), still trained
        self.bias = linear.bias
        self.group_size = config.group_size

    def quantized_weight(self) -> torch.Tensor:
        """``Q(W)`` in value, ``W``'s gradient in backward (straight-through)."""
        w = self.weight
        return w + (fake_quantize_int4(w, self.group_size) - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)  # (B, T, out)

    def to_linear(self) -> nn.Linear:
        """The plain Linear holding the trained fp32 weight (what convert quantizes)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.weight, out.bias = self.weight, self.bias
        return out

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, fake int4 "
                f"(group_size={self.group_size}, straight-through)")


def qat_layers(model: nn.Module) -> list[tuple[str, FakeQuantLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]


@register(QATConfig)
def _prepare(model: nn.Module, config: QATConfig) -> nn.Module:
    """Swap every block Linear for a :class:`FakeQuantLinear` sharing its parameters."""
    check_fits(model, config.target())
    for name, m in block_linears(model):
        if isinstance(m, nn.Linear):
            swap_module(model, name, FakeQuantLinear(m, config))
    return model


@torch.no_grad()
def convert_qat_(model: nn.Module, config: QATConfig | None = None) -> nn.Module:
    """After training: put plain Linears back and quantize them for real to int4 (the same
    grid the fake quantization used). Returns ``model``."""
    layers = qat_layers(model)
    if config is None:
        config = QATConfig(group_size=layers[0][1].group_size) if layers else QATConfig()
    for name, m in layers:
        swap_module(model, name, m.to_linear())
    return apply_(model, config.target())


__all__ = ["QATConfig", "FakeQuantLinear", "fake_quantize_int4", "qat_layers", "convert_qat_"]
