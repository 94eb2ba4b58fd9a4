"""What theory predicts: every formula the lessons draw beside a measurement, in one index.

Each formula lives next to the code it describes — a technique owns its bytes and FLOPs, the
roofline lives with the measurement — and is listed here so a learner finds them in one place
and every chart takes its prediction from the same function the library uses.

| formula | what it says | owner |
|---|---|---|
| :func:`estimate_6n` | training FLOPs ≈ 6·N·tokens (2·N forward) | measurement.flops |
| :func:`attention_flops` | attention adds 4·B·nh·T·S·hs per layer forward, ×3 with backward | measurement.flops |
| :func:`step_flops_estimate` | a step's FLOPs from shapes alone | measurement.flops |
| :func:`predict_memory` | a step's peak bytes by category | measurement.memory |
| :func:`predict_for` | the same for a configuration of knobs (each technique adds its term) | measurement.memory |
| :func:`predict_activation_bytes` | activation bytes per checkpointing policy | techniques.checkpointing |
| :func:`recompute_flops_fraction` | checkpointing's extra compute | techniques.checkpointing |
| :func:`attention_memory_bytes` | one attention call's bytes beyond q, k, v (T² for naive) | techniques.attention |
| :func:`model_attention_bytes` | a model's naive-attention bytes in a training step | techniques.attention |
| :meth:`PrecisionConfig.param_bytes` / ``activation_bytes`` | bytes per weight / activation per format | techniques.precision |
| :func:`predicted_weight_bytes` | a quantized model's stored bytes | techniques.quantization |
| :func:`bytes_moved` | a step's DRAM traffic (lower estimate) | measurement.roofline |
| :func:`roofline` | time ≥ max(FLOPs / peak, bytes / bandwidth) | measurement.roofline |
| :func:`decode_bound_tokens_per_s` | decode tokens/s ≤ B · bandwidth / bytes per step | measurement.roofline |
| :func:`throughput` | throughput = B · T / L(B) | measurement.roofline |
| :func:`alpha_beta_time` | one collective on n bytes: t = α + n/β | distributed.comm |
| :func:`ring_allreduce_time` | ring all-reduce: 2(N−1)·α + 2(N−1)/N · n/β per link | distributed.comm |
| :func:`predicted_step_time` | data-parallel step ≈ compute + Σ buckets (α + bytes/β) | distributed.ddp |
| :func:`step_time_at` | the same at N ranks, same global batch (compute ÷ N, ring scaling) | distributed.ddp |
| :func:`memory_per_rank` | per-rank bytes: 4P + 4P + 8P, each ÷ N where ZeRO-1 / FSDP shards it | distributed.zero |

Formulas of later lessons (profiling, KV cache, serving, compression, scaling, distribution)
are added to this index by the module that owns them.
"""

from __future__ import annotations

from efflab.measurement.flops import attention_flops, estimate_6n, step_flops_estimate
from efflab.measurement.memory import predict_for, predict_memory
from efflab.measurement.roofline import (
    bytes_moved,
    decode_bound_tokens_per_s,
    roofline,
    throughput,
)
from efflab.techniques.attention import attention_memory_bytes, model_attention_bytes
from efflab.techniques.checkpointing import predict_activation_bytes, recompute_flops_fraction
from efflab.techniques.precision import PrecisionConfig
from efflab.techniques.quantization import predicted_weight_bytes

__all__ = ["estimate_6n", "attention_flops", "step_flops_estimate", "predict_memory",
           "predict_for", "predict_activation_bytes", "recompute_flops_fraction",
           "attention_memory_bytes", "model_attention_bytes", "PrecisionConfig",
           "predicted_weight_bytes", "bytes_moved", "roofline", "decode_bound_tokens_per_s",
           "throughput"]

# lesson 14 (distributed): the α–β model, the data-parallel step, per-rank memory under ZeRO
from efflab.systems.distributed.comm import alpha_beta_time, ring_allreduce_time  # noqa: E402
from efflab.systems.distributed.ddp import predicted_step_time, step_time_at  # noqa: E402
from efflab.systems.distributed.zero import memory_per_rank  # noqa: E402

__all__ += ["alpha_beta_time", "ring_allreduce_time", "predicted_step_time", "step_time_at",
            "memory_per_rank"]

# lessons 08-09 (inside a step, fusion): an operator's FLOPs and bytes from its shapes, the roof
# that bounds it, and the traffic fusion removes
from efflab.kernels.cross_entropy import cross_entropy_bytes  # noqa: E402
from efflab.kernels.layernorm import layernorm_bytes  # noqa: E402
from efflab.measurement.profiling import (  # noqa: E402
    adamw_cost,
    attention_cost,
    intensity,
    matmul_cost,
    op_cost,
    roof_bound,
)
from efflab.techniques.compile import elementwise_chain_bytes, fused_bytes_saved  # noqa: E402

__all__ += ["matmul_cost", "attention_cost", "adamw_cost", "op_cost", "intensity", "roof_bound",
            "elementwise_chain_bytes", "fused_bytes_saved", "layernorm_bytes",
            "cross_entropy_bytes"]

# lessons 12-13 (compression, scaling laws): FLOPs a pruned MLP / attention keeps, the
# soft-target loss, and compute-optimal training (C = 6·N·D, D = C / 6N, the 20-tokens rule)
from efflab.studies.distill import soft_target_loss  # noqa: E402
from efflab.studies.scaling import (  # noqa: E402
    attention_share,
    chinchilla_optimum,
    compute_params,
    tokens_for_budget,
    training_flops,
)
from efflab.techniques.pruning import (  # noqa: E402
    attention_flops_per_token,
    kept_channels,
    mlp_flops_per_token,
)

__all__ += ["mlp_flops_per_token", "attention_flops_per_token", "kept_channels",
            "soft_target_loss", "compute_params", "training_flops", "tokens_for_budget",
            "attention_share", "chinchilla_optimum"]

# lessons 10-11 (KV cache, speculative decoding): the cache's bytes (ModelConfig.kv_cache_bytes),
# the FLOPs of a new token with/without the cache, the speculative speed-up and its break-even
from efflab.studies.kv_cache import matmul_params, new_token_flops  # noqa: E402
from efflab.systems.speculative import (  # noqa: E402
    best_k,
    break_even_alpha,
    expected_speedup,
    expected_tokens_per_round,
)

__all__ += ["matmul_params", "new_token_flops", "expected_tokens_per_round", "expected_speedup",
            "break_even_alpha", "best_k"]
