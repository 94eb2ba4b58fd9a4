"""Triton kernels, each beside the plain torch reference it must match.

- :mod:`efflab.kernels.flash_attention` — causal FlashAttention, forward and backward.
- :mod:`efflab.kernels.layernorm` — LayerNorm, forward and backward (two-stage dw/db sum).
- :mod:`efflab.kernels.cross_entropy` — cross-entropy over the vocabulary, no softmax table.

Importing this package imports no kernel: import the module you want. On a machine without
CUDA a kernel module switches Triton to its interpreter (``TRITON_INTERPRET=1``) before it
decorates its kernels, so kernels run there for correctness only, never for speed.
"""
