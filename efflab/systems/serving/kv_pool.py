"""The KV cache pool: one block of storage per layer, handed out to sequences in blocks.

Two layouts share one mechanism:

- **contiguous** preallocation: each admitted sequence gets one block of ``max_len`` positions,
  enough for the longest sequence it might become. Everything between its current length and
  ``max_len`` is reserved but empty: wasted while it runs.
- **paged** (vLLM's PagedAttention): blocks of ``block_size`` positions (16 by default) are
  allocated as the sequence grows. A sequence holds ceil(length / block_size) blocks, so it
  wastes at most ``block_size - 1`` positions — less than one block — whatever its length.

Storage per layer: ``k[l]``, ``v[l]``: (n_blocks, nkv, block_size, hs). A sequence's block table
lists the blocks holding its positions 0, bs, 2·bs, ... in order; attention gathers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from efflab.core.config import ModelConfig

LAYOUTS = ("paged", "contiguous")


class OutOfBlocks(RuntimeError):
    """The pool has no free block left (the scheduler preempts a sequence and retries)."""


@dataclass
class SeqSlot:
    """One sequence's view of the pool: its block table and how many positions it holds."""

    blocks: list[int] = field(default_factory=list)
    length: int = 0


class KVPool:
    """``capacity_tokens`` positions of K and V for every layer, in blocks.

    ``layout="paged"``: blocks of ``block_size``; ``layout="contiguous"``: blocks of
    ``max_len`` (one per sequence, reserved at admission).
    """

    def __init__(self, cfg: ModelConfig, capacity_tokens: int, layout: str = "paged",
                 block_size: int = 16, max_len: int | None = None, device="cpu",
                 dtype=torch.float32):
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} is not allowed; layout must be one of {LAYOUTS}")
        self.cfg = cfg
        self.layout = layout
        self.max_len = max_len or cfg.block_size
        self.block_size = block_size if layout == "paged" else self.max_len
        if self.block_size < 1:
            raise ValueError(f"block_size={block_size!r} is not allowed; must be >= 1")
        self.n_blocks = capacity_tokens // self.block_size
        if self.n_blocks < 1:
            raise ValueError(f"capacity_tokens={capacity_tokens} holds no block of "
                             f"{self.block_size} positions; give at least {self.block_size}")
        shape = (self.n_blocks, cfg.kv_heads, self.block_size, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.free: list[int] = list(range(self.n_blocks - 1, -1, -1))  # a stack: pop() is 0 first
        self.bytes_per_position = cfg.kv_cache_bytes(1, 1, torch.finfo(dtype).bits // 8)

    # ------------------------------------------------------------------ accounting
    @property
    def capacity_tokens(self) -> int:
        return self.n_blocks * self.block_size

    def blocks_for(self, length: int) -> int:
        """Blocks a sequence of ``length`` positions holds in this layout."""
        if self.layout == "contiguous":
            return 1
        return -(-length // self.block_size)

    def can_hold(self, length: int) -> bool:
        return self.blocks_for(length) <= len(self.free)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def waste(self, slots) -> dict:
        """Reserved but empty positions across ``slots``, in positions and bytes."""
        slots = list(slots)
        reserved = sum(len(s.blocks) for s in slots) * self.block_size
        used = sum(s.length for s in slots)
        return {"reserved": reserved, "used": used, "wasted": reserved - used,
                "wasted_bytes": (reserved - used) * self.bytes_per_position,
                "sequences": len(slots)}

    # ------------------------------------------------------------------ allocation
    def reserve(self, slot: SeqSlot, length: int) -> None:
        """Make ``slot`` hold room for ``length`` positions, taking blocks as needed."""
        if length > self.max_len:
            raise ValueError(f"a sequence of {length} positions exceeds max_len={self.max_len}")
        need = self.blocks_for(length) - len(slot.blocks)
        if need > len(self.free):
            raise OutOfBlocks(f"need {need} blocks, {len(self.free)} free")
        for _ in range(max(0, need)):
            slot.blocks.append(self.free.pop())

    def release(self, slot: SeqSlot) -> None:
        self.free.extend(reversed(slot.blocks))
        slot.blocks = []
        slot.length = 0

    # ------------------------------------------------------------------ reads and writes
    def write(self, layer: int, slots: list[SeqSlot], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this call's keys/values: k, v (B, nkv, T, hs) at positions length .. length+T-1
        of each slot (room must be reserved)."""
        B, _, T, _ = k.shape
        pos = torch.tensor([s.length for s in slots])[:, None] + torch.arange(T)  # (B, T)
        table = self.tables(slots, pos.max().item() + 1)  # (B, MB)
        blk = table.gather(1, pos // self.block_size).to(k.device)  # (B, T) block ids
        off = (pos % self.block_size).to(k.device)  # (B, T) offsets in the block
        # storage[blk, :, off] is (B, T, nkv, hs): the advanced indices come first
        self.k[layer][blk, :, off] = k.permute(0, 2, 1, 3)
        self.v[layer][blk, :, off] = v.permute(0, 2, 1, 3)

    def gather(self, layer: int, slots: list[SeqSlot], span: int):
        """Keys and values of positions 0 .. span-1 of every slot: 2 x (B, nkv, span, hs).
        Positions a slot does not hold are garbage: the caller masks them."""
        table = self.tables(slots, span).to(self.k[layer].device)  # (B, MB)
        B, MB = table.shape
        k = self.k[layer][table]  # (B, MB, nkv, bs, hs)
        v = self.v[layer][table]
        nkv, hs = k.shape[2], k.shape[4]
        k = k.permute(0, 2, 1, 3, 4).reshape(B, nkv, MB * self.block_size, hs)[:, :, :span]
        v = v.permute(0, 2, 1, 3, 4).reshape(B, nkv, MB * self.block_size, hs)[:, :, :span]
        return k, v

    def tables(self, slots: list[SeqSlot], span: int) -> torch.Tensor:
        """(B, ceil(span / bs)) block ids, padded with block 0 where a slot holds fewer."""
        MB = max(1, -(-span // self.block_size))
        rows = [(s.blocks + [0] * MB)[:MB] for s in slots]
        return torch.tensor(rows, dtype=torch.long)
