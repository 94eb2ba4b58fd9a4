"""What this machine should not run, and why: a step's predicted time at this machine's
measured speeds, before any work.

A toggle that would be catastrophically slow on the hardware at hand (bf16 matmuls on a CPU
without native support, the Triton interpreter on a large shape) is refused with the measured
reason instead of hanging the notebook. Each technique owns its rule (``precision.refusal``,
``attention.interpreted_refusal``); this module feeds them this machine's numbers.
"""

from __future__ import annotations

from efflab.core.config import Knobs, ModelConfig
from efflab.measurement.flops import step_flops_estimate
from efflab.measurement.hardware import interpreter_seconds_per_program
from efflab.techniques.attention import interpreted_refusal
from efflab.techniques.precision import PrecisionConfig, refusal


def refusal_reason(cfg: ModelConfig, knobs: Knobs, device: str, calibration: dict) -> str | None:
    """Why ``knobs`` on preset ``cfg`` should not run on this machine (else None)."""
    why = refusal(PrecisionConfig(knobs.precision), step_flops_estimate(cfg, knobs), calibration)
    if why is None and knobs.attention == "triton" and device == "cpu":
        why = interpreted_refusal(cfg, knobs.batch_size, knobs.resolve_seq_len(cfg),
                                  knobs.workload == "train", interpreter_seconds_per_program())
    return why
