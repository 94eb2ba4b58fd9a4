"""Precision: the number format a run computes and stores in. A run setting, not a model change —
except ``bf16-pure``, which stores the weights themselves in bfloat16.

| choice      | weights | matmuls             | loss scaling |
|-------------|---------|---------------------|--------------|
| fp32        | fp32    | fp32                | —            |
| bf16        | fp32    | bf16 (autocast)     | —            |
| fp16        | fp32    | fp16 (autocast)     | GradScaler   |
| bf16-pure   | bf16    | bf16                | —            |

Hardware decides what is worth running. A CPU without native bf16/fp16 matmuls runs them at a
fraction of a GFLOP/s; ``refusal`` predicts a step's time from this machine's calibrated peak for
the format and refuses, with the measured reason, a run that would take far too long — the same
check serves every later toggle that can be catastrophically slow on some hardware.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from efflab.core.config import PRECISIONS, Precision, check_choice
from efflab.techniques.registry import register

COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "bf16-pure": "bfloat16"}
MAX_PREDICTED_STEP_S = 1.0  # a step predicted slower than this is refused: a lab point
SLOW_FRACTION = 0.25  # ... if its format runs under this share of fp32's measured peak
#                            times ~7 steps, so 1 s a step keeps a point within seconds


@dataclass(frozen=True)
class PrecisionConfig:
    """The number format a run computes and stores in (see the module table). Applied to a
    model it casts the weights for ``bf16-pure``; the rest act through :func:`autocast` and
    :func:`grad_scaler` in the training loop."""

    precision: Precision = "fp32"

    def __post_init__(self):
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def compute_dtype(self) -> torch.dtype:
        return getattr(torch, COMPUTE_DTYPE[self.precision])

    @property
    def param_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16-pure" else torch.float32

    @property
    def param_bytes(self) -> int:
        return 2 if self.precision == "bf16-pure" else 4

    @property
    def activation_bytes(self) -> int:
        """Bytes per saved activation: autocast saves most matmul inputs in the low format."""
        return 4 if self.precision == "fp32" else 2


@register(PrecisionConfig)
def _apply_precision(model: torch.nn.Module, config: PrecisionConfig) -> torch.nn.Module:
    """Cast the weights for ``bf16-pure``; the other choices leave the model in fp32."""
    model.to(config.param_dtype)
    return model


def autocast(config: PrecisionConfig, device) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: autocast to the compute format, or nothing."""
    if config.precision in ("bf16", "fp16"):
        return torch.autocast(device_type=str(device).split(":")[0], dtype=config.compute_dtype)
    return contextlib.nullcontext()


def grad_scaler(config: PrecisionConfig, device):
    """fp16 gradients underflow without loss scaling: a GradScaler for fp16, else None."""
    if config.precision != "fp16":
        return None
    return torch.amp.GradScaler(str(device).split(":")[0])


def refusal(config: PrecisionConfig, flops_per_step: float, calibration: dict,
            limit_s: float = MAX_PREDICTED_STEP_S) -> str | None:
    """Why this machine should not run a step of ``flops_per_step`` in this format (else None).

    The prediction is FLOPs / (this machine's measured matmul peak for the compute format). Only
    a format that crawls beside fp32 here (under ``SLOW_FRACTION`` of fp32's measured peak: bf16
    and fp16 on an AVX2 CPU) is refused; fp32 itself, and a format about as fast, never are — on
    a busy or slow machine the baseline is merely slow, and refusing it would leave nothing to
    run.
    """
    name = COMPUTE_DTYPE[config.precision]
    peak = calibration["matmul"][name]["flops_per_s"]
    fp32 = calibration["matmul"]["float32"]["flops_per_s"]
    predicted = flops_per_step / peak
    if name == "float32" or peak >= SLOW_FRACTION * fp32 or predicted <= limit_s:
        return None
    return (f"precision={config.precision!r} refused on this machine: its {name} matmul was "
            f"measured at {peak / 1e9:.2f} GFLOP/s ({peak / fp32:.1%} of fp32's "
            f"{fp32 / 1e9:.1f} GFLOP/s), so one step of {flops_per_step / 1e9:.1f} GFLOP would "
            f"take about {predicted:.0f} s (limit {limit_s:.0f} s). This hardware has no fast "
            f"{name} path; on a GPU (or a CPU with AVX-512 BF16 / AMX) it would be fast.")
