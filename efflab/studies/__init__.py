"""What each lesson computes beyond a single measurement: its tables, sweeps and verdicts.

| module           | lesson | holds                                                          |
|------------------|--------|----------------------------------------------------------------|
| analysis         | 01–07  | tables and verdicts over measured records (pandas only)        |
| precision_formats| 02     | the number formats' range and precision, rounding as measured  |
| compare          | 02, 03 | fast path against reference: same loss, same gradients         |
| attention_memory | 04     | attention's score memory by sequence length, measured          |
| kernel_benchmark | 04, 09 | Triton kernels beside their references, declared as data       |
| quantization     | 05     | each scheme's bytes stored and read per token, its worst SQNR  |
| qat_recovery     | 05     | the share of int4's loss quantization-aware training recovers  |
| fusion           | 09     | operators launched and bytes moved, eager vs compiled          |
| kv_cache         | 10     | the KV cache's size and a new token's cost with and without it |
| shapes           | 10     | model shapes that are not presets, trained at equal budgets    |
| compression      | 12     | pruning + distillation + quantization combined, the frontier   |
| distill          | 12     | knowledge distillation into a small student                    |
| scaling          | 13     | IsoFLOP sweeps, parabola fits, compute-optimal exponents       |
| distributed      | 14     | bytes sent per step and held per rank by layout, priced by α–β |
| model_parallel   | 15     | TP bytes and all-reduces, the pipeline bubble, ring memory     |
| finetune_memory  | 16     | LoRA / QLoRA memory by category, low-bit AdamW, accumulation   |

May import core, kernels, techniques, measurement and systems; never ui, check or course.
"""
