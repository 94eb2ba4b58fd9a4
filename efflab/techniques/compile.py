"""Fusion by compiler: ``torch.compile`` of the model (TorchInductor on CPU and GPU).

A run setting, like precision: the model's mathematics is unchanged; the compiler traces the
forward (and AOTAutograd the backward), fuses chains of elementwise and reduction operators
into single loops (C++/OpenMP on a CPU, Triton on a GPU), and leaves the big matmuls to the
vendor library. What fusion saves is memory traffic: a chain of k elementwise operators over n
values reads and writes n values k times eagerly, once fused (:func:`elementwise_chain_bytes`).

- ``mode``: ``"none"`` (eager), ``"default"`` or ``"max-autotune"`` (also benchmarks matmul /
  kernel variants while compiling: longer cold start, sometimes faster steps).
- ``apply_(model, CompileConfig(mode))`` compiles the model in place (``nn.Module.compile``:
  the same object, parameters and ``state_dict`` keys, its calls compiled); a training step's
  optimizer update is compiled apart, by :func:`compile_optimizer`, since an optimizer is not
  a model.
- The first call compiles (tens of seconds on a 2-core CPU; cached on disk afterwards): ``measure``
  records that cold compile time apart from the step time, and never times it as a step.
- Refused with the reason where no compiler backend is present: on a CPU Inductor needs a C++
  compiler; on a GPU it needs Triton.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import torch

from efflab.core.config import COMPILES, Compile, ConfigError, check_choice
from efflab.techniques.checkpointing import CheckpointedBlock
from efflab.techniques.registry import register


@dataclass(frozen=True)
class CompileConfig:
    """Which ``torch.compile`` mode a run uses (``"none"``: eager).

    ``cpp_wrapper``: on a CPU, let ``"default"`` use Inductor's C++ wrapper where it works
    (:func:`inductor_options`); False keeps the Python wrapper, whose kernel profiling names
    each fused kernel in a profile.
    """

    mode: Compile = "none"
    cpp_wrapper: bool = True

    def __post_init__(self):
        check_choice("compile", self.mode, COMPILES)
        if not isinstance(self.cpp_wrapper, bool):
            raise ConfigError("cpp_wrapper", self.cpp_wrapper, "True or False")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def torch_mode(self) -> str | None:
        """The ``mode`` argument of ``torch.compile`` (None: its default)."""
        return None if self.mode == "default" else self.mode


def _cxx_compiler() -> str | None:
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    return None


def compile_refusal(config: CompileConfig, device: str = "cpu",
                    quantization: str = "none") -> str | None:
    """Why ``torch.compile`` cannot run here (a sentence), or None when it can.

    ``quantization`` is the run's weight format: on a CPU, Inductor (torch 2.13) fails to
    lower the int4 packed matmul (a LoweringException at the first step), so that pair is
    refused up front rather than recorded as an error."""
    if not config.enabled:
        return None
    if quantization == "int4-weight" and not str(device).startswith("cuda"):
        return ("compile with int4-weight weights on a CPU: TorchInductor in torch "
                f"{torch.__version__.split('+')[0]} cannot lower the int4 packed matmul "
                "(_weight_int4pack_mm_for_cpu); use compile='none' with int4-weight, or "
                "int8-weight / int8-dynamic with compile")
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported

        if not is_dynamo_supported():
            return (f"torch.compile does not support Python {sys.version.split()[0]} in torch "
                    f"{torch.__version__}; use compile='none'")
    except ImportError:
        return f"torch {torch.__version__} has no torch.compile; use compile='none'"
    if str(device).startswith("cuda"):
        try:
            import triton  # noqa: F401  (Inductor writes GPU kernels in Triton)
        except Exception as e:
            return f"compiling for CUDA needs triton, which failed to import ({e}); use 'none'"
        if torch.cuda.get_device_capability()[0] < 7:
            return "Inductor's Triton kernels need a GPU of compute capability 7.0 or newer"
        return None
    if _cxx_compiler() is None:
        return ("no C++ compiler found (g++, c++ or clang++, or $CXX): TorchInductor builds CPU "
                "kernels with one. Install one (apt install g++) or use compile='none'")
    return None


def inductor_options(model: torch.nn.Module, config: CompileConfig) -> dict | None:
    """The Inductor options compiling passes for ``config`` (None: the mode alone).

    On a CPU, ``"default"`` also asks for Inductor's C++ wrapper (``cpp_wrapper``): the
    generated code that allocates buffers and calls each fused kernel and library matmul runs
    as C++ instead of Python, saving a few microseconds per call — several percent of a small
    model's step — for roughly twice the cold compile time (benchmarks/results/fusion.json).
    Not around block checkpointing: there Inductor's C++ wrapper fails on the RNG-state
    operator the recompute carries (torch 2.13, an AssertionError at the first step), so
    the plain Python wrapper is used, as it is with ``config.cpp_wrapper=False`` (Inductor's
    kernel profiling, which names each fused kernel in the profiler, lives in the Python
    wrapper)."""
    if config.mode != "default" or not config.cpp_wrapper:
        return None
    p = next(model.parameters(), None)
    if p is not None and p.device.type != "cpu":
        return None
    if any(isinstance(m, CheckpointedBlock) for m in model.modules()):
        return None
    return {"cpp_wrapper": True}


@register(CompileConfig)
def _compile(model: torch.nn.Module, config: CompileConfig) -> torch.nn.Module:
    """Compile ``model`` in place in ``config.mode`` (nothing for ``"none"``), with
    :func:`inductor_options`: ``model.compile(...)`` compiles its calls, keeping the object,
    its parameters and its ``state_dict`` keys. Compilation happens lazily, at the first call."""
    if not config.enabled:
        return model
    options = inductor_options(model, config)
    if options:
        model.compile(options=options)
    else:
        model.compile(mode=config.torch_mode)
    return model


def compile_optimizer(opt: torch.optim.Optimizer, config: CompileConfig) -> torch.optim.Optimizer:
    """``opt`` with its ``step`` compiled too (unchanged for ``"none"``); returns ``opt``.

    AdamW's update is a chain of elementwise operators over every parameter (PyTorch's
    "foreach" form launches each over the list of tensors); Inductor fuses the chain into one
    loop per group, reading each parameter, gradient and moment once. The compiled step is set
    on this one optimizer instance, so ``opt.step()`` and a ``GradScaler.step(opt)`` both run
    it; the first call compiles."""
    if config.enabled:
        opt.step = torch.compile(opt.step, mode=config.torch_mode)
    return opt


def elementwise_chain_bytes(numel: int, n_ops: int, bytes_per_el: int = 4,
                            fused: bool = False, extra_inputs: int = 0) -> int:
    """DRAM bytes of a chain of ``n_ops`` elementwise operators over ``numel`` values.

    Eager, each operator reads its input and writes its output: 2·n_ops·numel values. Fused,
    the chain reads the input once and writes the result once: 2·numel. ``extra_inputs`` counts
    small side operands (a bias of the row length, say) read once either way, in values.
    The saving, 2·(n_ops - 1)·numel·bytes, is why fusion pays for memory-bound operators and
    does nothing for a matmul that is already compute-bound."""
    passes = 2 if fused else 2 * n_ops
    return (passes * numel + extra_inputs) * bytes_per_el


def fused_bytes_saved(numel: int, n_ops: int, bytes_per_el: int = 4) -> int:
    """Bytes a fused chain of ``n_ops`` elementwise operators saves over eager execution."""
    return (elementwise_chain_bytes(numel, n_ops, bytes_per_el)
            - elementwise_chain_bytes(numel, n_ops, bytes_per_el, fused=True))


__all__ = ["CompileConfig", "compile_refusal", "compile_optimizer", "inductor_options",
           "elementwise_chain_bytes", "fused_bytes_saved"]
