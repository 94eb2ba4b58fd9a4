"""Sharded training state: how much memory each rank holds, by category, with and without ZeRO.

Plain data parallelism keeps N full copies of everything a step needs besides activations:
for P fp32 parameters trained with AdamW, each rank holds

    parameters 4P  +  gradients 4P  +  optimizer state 8P   (AdamW's two moments, fp32)

ZeRO ("Zero Redundancy Optimizer") removes the copies in stages:

- **ZeRO-1** (``torch.distributed.optim.ZeroRedundancyOptimizer``): the optimizer state is split
  over the ranks; each rank updates only the parameters it owns and broadcasts them.
  Per rank: 4P + 4P + 8P/N.
- **ZeRO-3 / FSDP** (``torch.distributed.fsdp.fully_shard``): parameters, gradients and
  optimizer state are all split; a layer's full weights are gathered just in time for its
  forward and backward. Per rank: (4P + 4P + 8P)/N.

How finely a method splits matters. ``ZeroRedundancyOptimizer`` gives each rank *whole
tensors* (a greedy split by size), so a rank's share is 1/N only to within one tensor; FSDP
splits *every tensor* along its first dimension, so each rank holds exactly 1/N whenever that
dimension divides by N. The sum over ranks is exact for both.

AdamW's step counters (one 0-dim tensor per parameter) are counted apart from its moments.
Activations do not depend on sharding (they depend on the per-rank batch) and are left out here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

from efflab.core.config import ConfigError, check_choice, check_int, check_keys, get_preset

Sharding = Literal["none", "zero1", "fsdp"]
SHARDINGS: tuple[str, ...] = get_args(Sharding)
STATE_CATEGORIES = ("parameters", "gradients", "optimizer")
FSDP_BACKENDS = ("gloo", "nccl")  # backends with the reduce-scatter and all-gather FSDP needs


def memory_per_rank(n_params: int, world_size: int, sharding: str, param_bytes: int = 4,
                    grad_bytes: int = 4, optimizer_bytes: int = 8) -> dict:
    """Bytes each rank holds by category: P·param_bytes, P·grad_bytes, P·optimizer_bytes, each
    divided by N where ``sharding`` splits it (zero1: optimizer; fsdp: all three).

    ``optimizer_bytes`` is per parameter: 8 for AdamW's two fp32 moments, 4 for SGD with
    momentum, 0 for plain SGD.
    """
    if not (isinstance(n_params, int) and n_params >= 0):
        raise ConfigError("n_params", n_params, "an integer >= 0")
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError("world_size", world_size, "an integer >= 1")
    if sharding not in SHARDINGS:
        raise ConfigError("sharding", sharding, "one of " + ", ".join(map(repr, SHARDINGS)))
    split = {"none": (), "zero1": ("optimizer",), "fsdp": STATE_CATEGORIES}[sharding]
    full = {"parameters": n_params * param_bytes, "gradients": n_params * grad_bytes,
            "optimizer": n_params * optimizer_bytes}
    out = {k: (v / world_size if k in split else float(v)) for k, v in full.items()}
    out["total"] = sum(out[k] for k in STATE_CATEGORIES)
    return out


def fsdp_refusal(backend: str) -> str | None:
    """Why FSDP cannot run on ``backend`` (None when it can): FSDP shards with reduce-scatter
    and gathers with all-gather, which only some process-group backends implement."""
    if backend in FSDP_BACKENDS:
        return None
    return (f"FSDP needs a backend with reduce-scatter and all-gather into one tensor "
            f"({', '.join(FSDP_BACKENDS)}); backend {backend!r} has not got them")


@dataclass(frozen=True)
class ShardingConfig:
    """One training step of ``preset`` on ``batch`` sequences per rank, for each of
    ``shardings``, to count what each rank then holds."""

    preset: str = "cpu-tiny"
    shardings: tuple[str, ...] = SHARDINGS
    batch: int = 2
    seq_len: int | None = 32
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        cfg = get_preset(self.preset)
        for s in self.shardings:
            check_choice("shardings", s, SHARDINGS)
        check_int("batch", self.batch, lo=1)
        check_int("seq_len", self.seq_len, 1, cfg.block_size, optional=True,
                  note=f"for preset {self.preset!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shardings"] = list(self.shardings)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ShardingConfig:
        """From a job's JSON (``shardings`` as a list); unknown settings raise ConfigError."""
        check_keys("config", d, sorted(f.name for f in fields(cls)))
        return cls(**{k: tuple(v) if k == "shardings" else v for k, v in d.items()})


def _local(t):
    """A DTensor's shard on this rank, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(module, optimizer) -> dict:
    """Bytes this rank holds now, by category: its parameters (local shards under FSDP), their
    gradients, the optimizer's per-parameter tensors (AdamW moments), and apart from them the
    optimizer's 0-dim step counters."""
    params = list(module.parameters())
    opt = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard here
    out = {"parameters": 0, "gradients": 0, "optimizer": 0, "optimizer_counters": 0}
    for p in params:
        lp = _local(p)
        out["parameters"] += lp.numel() * lp.element_size()
        if p.grad is not None:
            lg = _local(p.grad)
            out["gradients"] += lg.numel() * lg.element_size()
    for state in opt.state.values():
        for v in state.values():
            if hasattr(v, "numel"):
                lv = _local(v)
                key = "optimizer" if lv.dim() >= 1 else "optimizer_counters"
                out[key] += lv.numel() * lv.element_size()
    return out


def sharded_state(config: ShardingConfig, rank: int, world_size: int, backend: str = "gloo",
                  device: str = "cpu") -> list[dict]:
    """For each sharding in ``config``: build the model, wrap it, run one AdamW step, and count
    this rank's state bytes. Runs inside an initialised process group.

    Also returns a checksum of the *full* updated parameters: the same under every sharding
    (sharding changes where state lives, not the arithmetic). A sharding this backend cannot
    run comes back with status "refused" and the reason.
    """
    import torch
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from efflab.core.data import load_corpus, random_batch
    from efflab.core.model import build_model

    cfg = get_preset(config.preset)
    T = config.seq_len or cfg.block_size
    data = load_corpus()
    out = []
    for sharding in config.shardings:
        row = {"sharding": sharding, "rank": rank, "world_size": world_size}
        if sharding == "fsdp" and fsdp_refusal(backend):
            out.append({**row, "status": "refused", "message": fsdp_refusal(backend)})
            continue
        module = build_model(cfg, config.seed, device)
        n_params = module.num_params()
        try:
            if sharding == "fsdp":
                for block in module.h:
                    fully_shard(block)
                fully_shard(module)  # the root: embeddings (tied to lm_head), final LayerNorm
                model, opt = module, torch.optim.AdamW(module.parameters(), lr=config.lr)
            else:
                model = DDP(module, gradient_as_bucket_view=True)  # grads live in the buckets
                if sharding == "zero1":
                    opt = ZeroRedundancyOptimizer(module.parameters(), torch.optim.AdamW,
                                                  lr=config.lr)
                else:
                    opt = torch.optim.AdamW(module.parameters(), lr=config.lr)
            g = torch.Generator().manual_seed(config.seed + rank)  # each rank its own data
            x, y = random_batch(data.train, config.batch, T, g, device)  # (b, T)
            _, loss = model(x, y)
            loss.backward()
            opt.step()  # gradients are kept: they are part of what a rank holds at the peak
        except (RuntimeError, NotImplementedError) as e:
            out.append({**row, "status": "refused",
                        "message": f"{sharding} failed on backend {backend!r}: "
                                   f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        with torch.no_grad():
            full = [p.full_tensor() if hasattr(p, "full_tensor") else p
                    for p in module.parameters()]
            checksum = float(sum(p.double().sum() for p in full))
        out.append({**row, "status": "ok", "n_params": n_params, "loss": float(loss),
                    "bytes": state_bytes(module, opt),
                    "formula": memory_per_rank(n_params, world_size, sharding),
                    "param_checksum": checksum})
        del model, opt, module
    return out


__all__ = ["Sharding", "SHARDINGS", "STATE_CATEGORIES", "memory_per_rank", "fsdp_refusal",
           "ShardingConfig", "state_bytes", "sharded_state"]
