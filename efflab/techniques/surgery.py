"""Module surgery shared by the techniques that replace Linears: which Linears live in the
transformer blocks, and how to put a new module where one of them was."""

from __future__ import annotations

import torch.nn as nn


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every ``nn.Linear`` inside the transformer blocks ``model.h``, in
    module order (names relative to the model: ``h.0.attn.c_attn``, ...).

    ``lm_head`` is outside the blocks and so is never listed: it is tied to the token table
    ``wte``, which is also the input embedding."""
    blocks = getattr(model, "h", None)
    if blocks is None:
        raise TypeError(f"expected an efflab GPT with blocks at .h, got {type(model).__name__}")
    return [(f"h.{name}", m) for name, m in blocks.named_modules() if isinstance(m, nn.Linear)]


def swap_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (a dotted path) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


__all__ = ["block_linears", "swap_module"]
