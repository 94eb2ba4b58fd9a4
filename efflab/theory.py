"""What theory predicts: every formula the lessons draw beside a measurement, in one index.

Each formula lives next to the code it describes — a technique owns its bytes and FLOPs, the
roofline lives with the measurement, a lesson's study owns what only that lesson computes — and
is listed here, once, so a learner finds them in one place and every chart takes its prediction
from the same function the library uses. This module defines nothing.

| lesson | formula | what it says | owner |
|---|---|---|---|
| every | :func:`compute_params` | N of 6·N·D: block weights, biases and norms plus the output head | measurement.flops |
| every | :func:`estimate_6n` | training FLOPs C ≈ 6·N·tokens (2·N forward) | measurement.flops |
| every | :func:`attention_flops` | attention adds 4·B·nh·T·S·hs per layer forward, ×3 with backward | measurement.flops |
| every | :func:`step_flops_estimate` | a step's FLOPs from shapes alone | measurement.flops |
| every | :func:`predict_memory` | a step's peak bytes by category | measurement.memory |
| every | :func:`predict_for` | the same for a configuration of knobs (each technique adds its term) | measurement.memory |
| 01 batching | :func:`bytes_moved` | a step's DRAM traffic (lower estimate) | measurement.roofline |
| 01 batching | :func:`roofline` | time ≥ max(FLOPs / peak, bytes / bandwidth) | measurement.roofline |
| 01 batching | :func:`decode_bound_tokens_per_s` | decode tokens/s ≤ B · bandwidth / bytes per step | measurement.roofline |
| 01 batching | :func:`throughput` | throughput = B · T / L(B) | measurement.roofline |
| 02 precision | :class:`PrecisionConfig` (``param_bytes`` / ``activation_bytes``) | bytes per weight / activation per format | techniques.precision |
| 03 checkpointing | :func:`predict_activation_bytes` | activation bytes per checkpointing policy | techniques.checkpointing |
| 03 checkpointing | :func:`recompute_flops_fraction` | checkpointing's extra compute | techniques.checkpointing |
| 04 attention | :func:`attention_memory_bytes` | one attention call's bytes beyond q, k, v (T² for naive) | techniques.attention |
| 04 attention | :func:`model_attention_bytes` | a model's naive-attention bytes in a training step | techniques.attention |
| 05 quantization | :func:`predicted_weight_bytes` | a quantized model's stored bytes | techniques.quantization |
| 08 inside a step | :func:`matmul_cost` | (FLOPs, bytes) of a matmul: 2·m·k·n, (mk + kn + mn) elements | measurement.profiling |
| 08 inside a step | :func:`attention_cost` | (FLOPs, bytes) of fused attention | measurement.profiling |
| 08 inside a step | :func:`adamw_cost` | (FLOPs, bytes) of one AdamW update, foreach or fused | measurement.profiling |
| 08 inside a step | :func:`op_cost` | (FLOPs, bytes) of one operator call from its shapes | measurement.profiling |
| 08 inside a step | :func:`intensity` | arithmetic intensity = FLOPs / bytes | measurement.profiling |
| 08 inside a step | :func:`roof_bound` | which roof bounds an operator: min(peak, intensity × bandwidth) | measurement.profiling |
| 09 fusion | :func:`elementwise_chain_bytes` | bytes of a chain of elementwise operators, fused or not | techniques.compile |
| 09 fusion | :func:`fused_bytes_saved` | the traffic fusing that chain removes | techniques.compile |
| 09 fusion | :func:`layernorm_bytes` | LayerNorm's bytes, fused or not | kernels.layernorm |
| 09 fusion | :func:`cross_entropy_bytes` | cross-entropy's bytes, fused or not | kernels.cross_entropy |
| 10 KV cache | :func:`matmul_weights` | matrix entries a token is multiplied by (no biases, norms) | measurement.flops |
| 10 KV cache | :func:`new_token_flops` | a new token's FLOPs with and without the cache | studies.kv_cache |
| 10 speculation | :func:`expected_tokens_per_round` | tokens per round: (1 − α^(k+1)) / (1 − α) | systems.speculative |
| 10 speculation | :func:`expected_speedup` | tokens per round ÷ the round's cost in target steps | systems.speculative |
| 10 speculation | :func:`break_even_alpha` | the acceptance rate at which speculation pays | systems.speculative |
| 10 speculation | :func:`best_k` | the draft length that maximises the speed-up | systems.speculative |
| 12 compression | :func:`mlp_flops_per_token` | an MLP's forward FLOPs per token: 4·C·H | techniques.pruning |
| 12 compression | :func:`attention_flops_per_token` | an attention layer's forward FLOPs per token, heads kept | techniques.pruning |
| 12 compression | :func:`kept_channels` | MLP channels a structured pruning keeps | techniques.pruning |
| 12 compression | :func:`soft_target_loss` | distillation's τ² · KL(p_t ‖ p_s) | studies.distill |
| 13 scaling laws | :func:`tokens_for_budget` | D = C / 6N | studies.scaling |
| 13 scaling laws | :func:`attention_share` | attention-score FLOPs as a fraction of 6N | studies.scaling |
| 13 scaling laws | :func:`chinchilla_optimum` | the 20-tokens-per-parameter rule: N = √(C/120) | studies.scaling |
| 14 distributed | :func:`alpha_beta_time` | one collective on n bytes: t = α + n/β | systems.distributed.comm |
| 14 distributed | :func:`ring_allreduce_time` | ring all-reduce: 2(N−1)·α + 2(N−1)/N · n/β per link | systems.distributed.comm |
| 14 distributed | :func:`predicted_step_time` | data-parallel step ≈ compute + Σ buckets (α + bytes/β) | systems.distributed.ddp |
| 14 distributed | :func:`step_time_at` | the same at N ranks, same global batch (compute ÷ N, ring scaling) | systems.distributed.ddp |
| 14 distributed | :func:`memory_per_rank` | per-rank bytes: 4P + 4P + 8P, each ÷ N where ZeRO-1 / FSDP shards it | systems.distributed.zero |
| 15 model parallel | :func:`tp_param_counts` | a TP rank's parameters: 12C² + 7C per layer ÷ t, the rest whole | systems.parallel.tensor |
| 15 model parallel | :func:`tp_allreduces_per_step` | Megatron TP: one all-reduce per split block forward, one backward (4 per layer) | systems.parallel.tensor |
| 15 model parallel | :func:`tp_comm_values` | values a TP step all-reduces: 4·L·B·T·C | systems.parallel.tensor |
| 15 model parallel | :func:`bubble_fraction` | a pipeline stage's idle share: (p − 1)/(m + p − 1) | systems.parallel.pipeline |
| 15 model parallel | :func:`peak_in_flight` | micro-batches a stage holds: m (GPipe), min(p − s, m) (1F1B) | systems.parallel.pipeline |
| 15 model parallel | :func:`score_bytes_per_rank` | ring attention's largest score block: B·nh·(T/N)² values | systems.parallel.ring |
| 15 model parallel | :func:`ring_sent_values` | values a ring rank sends per forward: L·(N−1)·2·B·nh·(T/N)·hs | systems.parallel.ring |
| 16 fine-tuning | :func:`lora_param_count` | LoRA's trainable numbers: Σ r·(in + out) over the adapted Linears | techniques.lora |
| 16 fine-tuning | :func:`training_state_bytes` | weights, gradients and AdamW state when k of N numbers train | techniques.lora |
| 16 fine-tuning | :func:`nf4_bytes` | NF4's stored bytes: n/2 + n/64 + 4·⌈n/16384⌉ + 4 (double-quantized scales) | techniques.nf4 |
| 16 fine-tuning | :func:`state_bytes_per_param` | AdamW state per parameter: 8 in fp32, 2·(bits/8 + 4/block) quantized | techniques.lowbit_optim |
"""

# ruff: noqa: I001 -- the imports are grouped by lesson, in lesson order, not alphabetically

from __future__ import annotations

# every lesson: FLOPs and memory of a step
from efflab.measurement.flops import (
    attention_flops,
    compute_params,
    estimate_6n,
    matmul_weights,
    step_flops_estimate,
)
from efflab.measurement.memory import predict_for, predict_memory

# 01 batching: the roofline
from efflab.measurement.roofline import bytes_moved, decode_bound_tokens_per_s, roofline, throughput

# 02-05: the techniques' bytes and compute
from efflab.techniques.precision import PrecisionConfig
from efflab.techniques.checkpointing import predict_activation_bytes, recompute_flops_fraction
from efflab.techniques.attention import attention_memory_bytes, model_attention_bytes
from efflab.techniques.quantization import predicted_weight_bytes

# 08-09 inside a step, fusion: an operator's FLOPs and bytes, its roof, the traffic fusion removes
from efflab.measurement.profiling import (
    adamw_cost,
    attention_cost,
    intensity,
    matmul_cost,
    op_cost,
    roof_bound,
)
from efflab.techniques.compile import elementwise_chain_bytes, fused_bytes_saved
from efflab.kernels.layernorm import layernorm_bytes
from efflab.kernels.cross_entropy import cross_entropy_bytes

# 10 KV cache and speculative decoding (the cache's bytes: ModelConfig.kv_cache_bytes)
from efflab.studies.kv_cache import new_token_flops
from efflab.systems.speculative import (
    best_k,
    break_even_alpha,
    expected_speedup,
    expected_tokens_per_round,
)

# 12 compression: what pruning keeps, distillation's soft targets
from efflab.techniques.pruning import (
    attention_flops_per_token,
    kept_channels,
    mlp_flops_per_token,
)
from efflab.studies.distill import soft_target_loss

# 13 scaling laws: compute-optimal training
from efflab.studies.scaling import attention_share, chinchilla_optimum, tokens_for_budget

# 14 distributed: the α–β model, the data-parallel step, per-rank memory under ZeRO
from efflab.systems.distributed.comm import alpha_beta_time, ring_allreduce_time
from efflab.systems.distributed.ddp import predicted_step_time, step_time_at
from efflab.systems.distributed.zero import memory_per_rank

# 15 model parallel: tensor-parallel bytes and all-reduces, the bubble, ring attention's memory
from efflab.systems.parallel.tensor import tp_allreduces_per_step, tp_comm_values, tp_param_counts
from efflab.systems.parallel.pipeline import bubble_fraction, peak_in_flight
from efflab.systems.parallel.ring import ring_sent_values, score_bytes_per_rank

# 16 fine-tuning memory: LoRA's trainable count and state, NF4's bytes, low-bit AdamW's state
from efflab.techniques.lora import lora_param_count, training_state_bytes
from efflab.techniques.lowbit_optim import state_bytes_per_param
from efflab.techniques.nf4 import nf4_bytes

__all__ = [
    # every lesson
    "compute_params", "estimate_6n", "attention_flops", "step_flops_estimate", "predict_memory",
    "predict_for",
    # 01 batching
    "bytes_moved", "roofline", "decode_bound_tokens_per_s", "throughput",
    # 02-05 techniques
    "PrecisionConfig", "predict_activation_bytes", "recompute_flops_fraction",
    "attention_memory_bytes", "model_attention_bytes", "predicted_weight_bytes",
    # 08-09 inside a step, fusion
    "matmul_cost", "attention_cost", "adamw_cost", "op_cost", "intensity", "roof_bound",
    "elementwise_chain_bytes", "fused_bytes_saved", "layernorm_bytes", "cross_entropy_bytes",
    # 10 KV cache, speculative decoding
    "matmul_weights", "new_token_flops", "expected_tokens_per_round", "expected_speedup",
    "break_even_alpha", "best_k",
    # 12 compression
    "mlp_flops_per_token", "attention_flops_per_token", "kept_channels", "soft_target_loss",
    # 13 scaling laws
    "tokens_for_budget", "attention_share", "chinchilla_optimum",
    # 14 distributed
    "alpha_beta_time", "ring_allreduce_time", "predicted_step_time", "step_time_at",
    "memory_per_rank",
    # 15 model parallel
    "tp_param_counts", "tp_allreduces_per_step", "tp_comm_values", "bubble_fraction",
    "peak_in_flight", "score_bytes_per_rank", "ring_sent_values",
    # 16 fine-tuning memory
    "lora_param_count", "training_state_bytes", "nf4_bytes", "state_bytes_per_param",
]
