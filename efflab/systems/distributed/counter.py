"""A dispatch mode that counts the collectives a training step issues (kind and payload bytes).

Every ``torch.distributed`` collective reaches the dispatcher as a ``c10d::`` op — the ones
FSDP and ``ZeroRedundancyOptimizer`` call from Python and the all-reduces DDP's C++ reducer
starts during backward alike — so one :class:`~torch.utils._python_dispatch.TorchDispatchMode`
sees them all. ``volume.ring_bytes_sent`` turns the list into bytes on the wire.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from efflab.systems.distributed.volume import OPS


def payload_bytes(x) -> int:
    """Bytes of a tensor, or of every tensor in a (nested) list of them."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(payload_bytes(v) for v in x)
    return 0


class CollectiveCounter(TorchDispatchMode):
    """``with CollectiveCounter() as cc: step()``; then ``cc.collectives``: one dict per
    collective — its c10d op, kind (``volume.KINDS``) and the bytes of its full payload (the
    unsharded side: an all-gather's output, a reduce-scatter's input) — in the order issued."""

    def __init__(self):
        super().__init__()
        self.collectives: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            name = func._schema.name.split("::", 1)[1]
            kind, arg = OPS.get(name, ("other", 0))
            nbytes = payload_bytes(args[arg]) if len(args) > arg else 0
            self.collectives.append({"op": name, "kind": kind, "bytes": int(nbytes)})
        return func(*args, **kwargs)


__all__ = ["CollectiveCounter", "payload_bytes"]
