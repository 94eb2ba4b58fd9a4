"""Exercises that check themselves: ``efflab.check.<name>(answer, **given)``.

Each lesson's checks live in a topic module; this package re-exports every one of them, plus
the machinery from :mod:`efflab.check.core` (see its docstring for how an exercise is defined,
logged and judged).

=====  =====================  =====================================================
lesson check                  the learner ...
=====  =====================  =====================================================
00     mfu                    reads MFU from a record (peak of the run's own format)
00     bits_per_byte          turns a held-out loss in nats into bits per byte
01     throughput             computes tokens/s from a measured latency and B·T
01     saturation             finds where training throughput saturates in their sweep
02     bytes_per_param        gives bytes per parameter by category per precision
02     bf16_round             writes bf16 rounding (7 stored mantissa bits, ties to even)
03     kept_activations       writes the kept-activation formula with/without checkpointing
03     recompute_overhead     derives checkpointing's extra step time from their sweep
04     online_softmax         writes the online-softmax update (large scores, running max)
04     score_bytes            writes naive attention's score-matrix memory in bytes
05     group_quantize         writes group-wise quantize/dequantize reaching the SQNR floor
05     decode_bound           derives the decode bandwidth bound from bytes per token
06     route                  writes top-1 routing with capacity
06     balance_loss           writes the Switch load-balancing loss
07     pareto                 writes the Pareto filter over a table of points
07     request_latency        reads the latency one user sees from a batched decode record
08     matmul_roofline        places a matmul on the roofline from its shapes
08     which_roof             says which roof bounds each operator of a profiled step
09     gelu_bias_bytes        counts the bytes a fused bias + GELU saves
09     softmax_row_reduction  writes the row reduction of a fused softmax
10     kv_cache_bytes         gives a KV cache's bytes for a configuration
10     break_even_acceptance  finds the acceptance rate where speculation breaks even
11     paged_waste            bounds the worst waste of a paged KV cache
11     policy_meets_ttft      says which batching policy meets a p99 TTFT target at a load
12     mlp_flops_sparsity     finds the structured sparsity that halves the MLP's FLOPs
12     soft_target_loss       writes distillation's soft-target loss
13     compute_optimal        predicts compute-optimal N and D at 10x the budget
13     optimal_loss           predicts the loss at that optimum
14     alpha_beta             fits the α–β model of an all-reduce
14     step_time_8            predicts a DDP step at 8 ranks
14     zero1_bytes            gives per-rank bytes under ZeRO-1
15     pipeline_bubble        writes a pipeline's idle share (the bubble)
15     tp_rank_bytes          writes the parameter bytes one tensor-parallel rank holds
15     tp_step_comm           counts a TP step's all-reduces and the bytes a ring sends
15     ring_merge             writes ring attention's merge of two blocks' (out, lse)
16     lora_trainable         counts LoRA's trainable parameters for a config
16     adam8bit_bytes         gives AdamW's state bytes with 8-bit moments
16     nf4_quantize           writes NF4 block quantize-dequantize (16 normal levels)
=====  =====================  =====================================================
"""

from efflab.check.attention import online_softmax, score_bytes
from efflab.check.batching import saturation, throughput
from efflab.check.checkpointing import kept_activations, recompute_overhead
from efflab.check.compression import mlp_flops_sparsity, soft_target_loss
from efflab.check.core import (
    REGISTRY,
    EvidenceError,
    Exercise,
    Feedback,
    Verdict,
    answers_path,
    exercise,
    judge,
    latest_answers,
    read_answers,
)
from efflab.check.distributed import alpha_beta, step_time_8, zero1_bytes
from efflab.check.frontier import pareto, request_latency
from efflab.check.fusion import gelu_bias_bytes, softmax_row_reduction
from efflab.check.inside_step import matmul_roofline, which_roof
from efflab.check.model_parallel import pipeline_bubble, ring_merge, tp_rank_bytes, tp_step_comm
from efflab.check.moe import balance_loss, route
from efflab.check.precision import bf16_round, bytes_per_param
from efflab.check.quantization import decode_bound, group_quantize
from efflab.check.scaling import compute_optimal, optimal_loss
from efflab.check.serving import paged_waste, policy_meets_ttft
from efflab.check.speculation import break_even_acceptance, kv_cache_bytes
from efflab.check.tour import bits_per_byte, mfu

# the machinery, then the checks in lesson order (the table above)
__all__ = ["REGISTRY", "EvidenceError", "Exercise", "Feedback", "Verdict", "answers_path",
           "exercise", "judge", "latest_answers", "read_answers",
           "mfu", "bits_per_byte", "throughput", "saturation", "bytes_per_param", "bf16_round",
           "kept_activations", "recompute_overhead", "online_softmax", "score_bytes",
           "group_quantize", "decode_bound", "route", "balance_loss", "pareto", "request_latency",
           "matmul_roofline", "which_roof", "gelu_bias_bytes", "softmax_row_reduction",
           "kv_cache_bytes", "break_even_acceptance", "paged_waste", "policy_meets_ttft",
           "mlp_flops_sparsity", "soft_target_loss", "compute_optimal", "optimal_loss",
           "alpha_beta", "step_time_8", "zero1_bytes",
           "pipeline_bubble", "tp_rank_bytes", "tp_step_comm", "ring_merge"]

# lesson 10, code: the KV cache's bytes as a function (probed on seeded shapes)
from efflab.check.speculation import kv_bytes  # noqa: E402

__all__ += ["kv_bytes"]

# lesson 11, code: the reserved but empty bytes of a KV cache, paged or contiguous
from efflab.check.serving import kv_waste  # noqa: E402

__all__ += ["kv_waste"]

# lesson 13, code: the vertex of one budget's IsoFLOP curve
from efflab.check.scaling import isoflop_vertex  # noqa: E402

__all__ += ["isoflop_vertex"]

# lesson 16: LoRA's trainable count, 8-bit AdamW's bytes, and NF4 block quantize (code)
from efflab.check.finetune import adam8bit_bytes, lora_trainable, nf4_quantize  # noqa: E402

__all__ += ["lora_trainable", "adam8bit_bytes", "nf4_quantize"]

# lesson 14, code: the training state a rank holds, by layout and optimizer
from efflab.check.distributed import state_bytes_per_rank  # noqa: E402

__all__ += ["state_bytes_per_rank"]

# lesson 01, code: the largest batch a memory budget holds
from efflab.check.batching import largest_fitting_batch  # noqa: E402

__all__ += ["largest_fitting_batch"]

# lesson 00, code: bits per byte from a model's raw logits
from efflab.check.tour import bits_per_byte_of  # noqa: E402

__all__ += ["bits_per_byte_of"]
