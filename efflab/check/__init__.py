"""Exercises that check themselves: ``efflab.check.<name>(answer, **given)``.

Each lesson's checks live in a topic module; this package re-exports every one of them, plus
the machinery from :mod:`efflab.check.core` (see its docstring for how an exercise is defined,
logged, judged, and what the grader may trust of its evidence). "(code)": the answer is a
learner-written function, probed on inputs the learner never sees. The checks marked ``--`` no
longer appear in a lesson (a code exercise replaced each); they stay for the grading fixture
and for courses built on them.

=====  =====================  ==============================================================
lesson check                  the learner ...
=====  =====================  ==============================================================
00     mfu_of                 writes MFU from a record and the machine's calibration (code)
00     bits_per_byte_of       writes bits per byte from a model's raw logits (code)
01     largest_fitting_batch  writes the largest batch a memory budget holds (code)
01     saturation             finds where training throughput saturates in their sweep
02     bytes_per_param        gives bytes per parameter by category per precision
02     bf16_round             writes bf16 rounding (7 stored mantissa bits, ties to even)
02     fp8_e4m3_round         writes FP8 E4M3 rounding (3 mantissa bits, subnormals, ties to even)
03     kept_activations       writes the kept-activation bytes with/without checkpointing
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
09     chain_bytes            writes the bytes a chain of elementwise ops moves, eager/fused (code)
10     kv_bytes               writes a KV cache's bytes for MHA, GQA and MQA shapes (code)
10     break_even_acceptance  finds the acceptance rate where speculation breaks even
11     policy_meets_ttft      says which batching policy meets a p99 TTFT target at a load
11     kv_waste               writes the reserved-but-empty bytes of a paged or contiguous cache
12     block_flops_sparsity   writes the MLP sparsity leaving a block a share of its FLOPs (code)
12     soft_target_loss       writes distillation's soft-target loss
13     tokens_per_param       writes the tokens per parameter at a fitted law's optimum (code)
13     isoflop_vertex         writes the compute-optimal size of one IsoFLOP curve (code)
14     alpha_beta             fits the α–β model of an all-reduce
14     step_time_8            predicts a DDP step at 8 ranks
14     state_bytes_per_rank   writes a rank's training-state bytes by layout (code)
14     comm_bytes_per_rank    writes the bytes a rank sends per step by layout (code)
15     pipeline_bubble        writes a pipeline's idle share (the bubble)
15     tp_rank_bytes          writes the parameter bytes one tensor-parallel rank holds
15     tp_step_comm           counts a TP step's all-reduces and the bytes a ring sends
15     ring_merge             writes ring attention's merge of two blocks' (out, lse)
16     lora_trainable         counts LoRA's trainable parameters for a config
16     adam8bit_bytes         gives AdamW's state bytes with 8-bit moments
16     nf4_quantize           writes NF4 block quantize-dequantize (16 normal levels)
--     throughput             tokens/s from a latency and B·T (the grading fixture's)
--     bits_per_byte          a held-out loss in nats as bits per byte
--     kv_cache_bytes         a KV cache's bytes for one configuration
--     optimal_loss           the loss a fitted loss law predicts at the optimum
--     zero1_bytes            per-rank bytes under ZeRO-1
--     mfu                    MFU read from a record (peak of the run's own format)
--     compute_optimal        compute-optimal N and D at a budget from a fitted law
=====  =====================  ==============================================================
"""

from efflab import _lazy_attributes

# each topic module and the checks it defines (a check is registered when its module loads);
# every name loads on first use, so a grader's probe run of one lesson's function imports that
# lesson's module alone, not torch and the other lessons' dependencies
_TOPICS = {
    "attention": ("online_softmax", "score_bytes"),
    "batching": ("largest_fitting_batch", "saturation", "throughput"),
    "checkpointing": ("kept_activations", "recompute_overhead"),
    "compression": ("block_flops_sparsity", "soft_target_loss"),
    "distributed": ("alpha_beta", "comm_bytes_per_rank", "state_bytes_per_rank", "step_time_8",
                    "zero1_bytes"),
    "finetune": ("adam8bit_bytes", "lora_trainable", "nf4_quantize"),
    "frontier": ("pareto", "request_latency"),
    "fusion": ("chain_bytes", "gelu_bias_bytes"),
    "inside_step": ("matmul_roofline", "which_roof"),
    "model_parallel": ("pipeline_bubble", "ring_merge", "tp_rank_bytes", "tp_step_comm"),
    "moe": ("balance_loss", "route"),
    "precision": ("bf16_round", "bytes_per_param", "fp8_e4m3_round"),
    "quantization": ("decode_bound", "group_quantize"),
    "scaling": ("compute_optimal", "isoflop_vertex", "optimal_loss", "tokens_per_param"),
    "serving": ("kv_waste", "policy_meets_ttft"),
    "speculation": ("break_even_acceptance", "kv_bytes", "kv_cache_bytes"),
    "tour": ("bits_per_byte", "bits_per_byte_of", "mfu", "mfu_of"),
}
_MACHINERY = ("load_all", "REGISTRY", "EvidenceError", "Exercise", "Feedback", "Verdict",
              "answers_path", "exercise", "judge", "latest_answers", "read_answers")
_OWNERS = {name: "efflab.check.core" for name in _MACHINERY} | {
    name: f"efflab.check.{topic}" for topic, names in _TOPICS.items() for name in names}


_getattr, __dir__ = _lazy_attributes("efflab.check", globals(), _OWNERS)


def __getattr__(name: str):
    if name == "REGISTRY":  # the registry as a whole: every check in it
        globals()["REGISTRY"] = registry = _getattr("load_all")()
        return registry
    return _getattr(name)


__all__ = list(_OWNERS)  # the machinery, then every check, topic by topic
