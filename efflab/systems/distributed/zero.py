"""Sharded training state: how much memory each rank holds, by category, with and without ZeRO.

Plain data parallelism keeps N full copies of everything a step needs besides activations:
for P fp32 parameters trained with AdamW, each rank holds

    parameters 4P  +  gradients 4P  +  optimizer state 8P   (AdamW's two moments, fp32)

ZeRO ("Zero Redundancy Optimizer") removes the copies in stages:

- **ZeRO-1** (``torch.distributed.optim.ZeroRedundancyOptimizer``): the optimizer state is split
  over the ranks; each rank updates only the parameters it owns and broadcasts them.
  Per rank: 4P + 4P + 8P/N.
- **ZeRO-2** (Rajbhandari et al. 2020): the gradients are split too — each rank keeps only the
  reduced gradients of the parameters it updates; the parameters stay whole on every rank.
  Per rank, textbook: 4P + 4P/N + 8P/N.
- **ZeRO-3 / FSDP** (``torch.distributed.fsdp.fully_shard``): parameters, gradients and
  optimizer state are all split; a layer's full weights are gathered just in time for its
  forward and backward. Per rank: (4P + 4P + 8P)/N.

What "zero2" runs here is torch's ZeRO-2-like mode, FSDP2's
``fully_shard(module, reshard_after_forward=False)`` (FSDP1 documents the same strategy,
``ShardingStrategy.SHARD_GRAD_OP``, as ZeRO-2). Its docstring (torch 2.13) says what it keeps: the
parameters are all-gathered once in forward and *kept unsharded through backward* (no second
all-gather), the gradients are reduce-scattered, the optimizer state is sharded — and after
backward FSDP frees the unsharded parameters. So it is *not* the textbook's "parameters
replicated": at rest (after the step) a rank holds 4P/N of parameters, and between forward and
the end of backward it holds its shard *plus* the whole gathered model, 4P/N + 4P.
:func:`sharded_state` samples what is alive at those moments (``phases``) instead of assuming it.

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

Sharding = Literal["none", "zero1", "zero2", "fsdp"]
SHARDINGS: tuple[str, ...] = get_args(Sharding)
STATE_CATEGORIES = ("parameters", "gradients", "optimizer")
FSDP_BACKENDS = ("gloo", "nccl")  # backends with the reduce-scatter and all-gather FSDP needs


def memory_per_rank(n_params: int, world_size: int, sharding: str, param_bytes: int = 4,
                    grad_bytes: int = 4, optimizer_bytes: int = 8) -> dict:
    """Bytes each rank holds by category: P·param_bytes, P·grad_bytes, P·optimizer_bytes, each
    divided by N where ``sharding`` splits it (zero1: optimizer; zero2: optimizer and gradients,
    the textbook's ZeRO-2; fsdp: all three).

    ``optimizer_bytes`` is per parameter: 8 for AdamW's two fp32 moments, 4 for SGD with
    momentum, 0 for plain SGD.
    """
    if not (isinstance(n_params, int) and n_params >= 0):
        raise ConfigError("n_params", n_params, "an integer >= 0")
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ConfigError("world_size", world_size, "an integer >= 1")
    if sharding not in SHARDINGS:
        raise ConfigError("sharding", sharding, "one of " + ", ".join(map(repr, SHARDINGS)))
    split = {"none": (), "zero1": ("optimizer",), "zero2": ("optimizer", "gradients"),
             "fsdp": STATE_CATEGORIES}[sharding]
    full = {"parameters": n_params * param_bytes, "gradients": n_params * grad_bytes,
            "optimizer": n_params * optimizer_bytes}
    out = {k: (v / world_size if k in split else float(v)) for k, v in full.items()}
    out["total"] = sum(out[k] for k in STATE_CATEGORIES)
    return out


def fsdp_refusal(backend: str) -> str | None:
    """Why FSDP (and its ZeRO-2 mode) cannot run on ``backend`` (None when it can): FSDP shards
    with reduce-scatter and gathers with all-gather, which only some backends implement."""
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


def live_bytes(module, optimizer, shards) -> dict:
    """Bytes alive now, by category, counted by *storage* (each storage once, at its allocated
    size — FSDP frees an unsharded parameter by shrinking its storage to 0 bytes): parameters are
    the tensors the module has registered at this moment (FSDP swaps in the gathered, unsharded
    ones between its all-gather and its reshard) together with this rank's ``shards`` (its
    sharded parameters, kept for the whole step); gradients those tensors' ``.grad``; the
    optimizer its per-parameter state (moments and step counters)."""
    seen: set[int] = set()

    def size(tensors) -> int:
        total = 0
        for t in tensors:
            if t is None:
                continue
            st = _local(t).untyped_storage()
            if st.data_ptr() in seen or st.nbytes() == 0:
                continue
            seen.add(st.data_ptr())
            total += st.nbytes()
        return total

    current = list(module.parameters())
    params = size(current + list(shards))
    grads = size([p.grad for p in current] + [p.grad for p in shards])
    opt = getattr(optimizer, "optim", optimizer)
    state = size(v for st in opt.state.values() for v in st.values() if hasattr(v, "numel"))
    return {"parameters": params, "gradients": grads, "optimizer": state,
            "total": params + grads + state}


def _wrap(sharding: str, module, lr: float):
    """The model and optimizer of one layout (see the module docstring)."""
    import torch
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sharding in ("zero2", "fsdp"):
        # zero2: every unit keeps its gathered parameters from forward to the end of backward;
        # fsdp: the blocks reshard after forward (and gather again in backward), the root keeps
        # the default (None: not resharded, since backward needs it first)
        keep = sharding == "zero2"
        for block in module.h:
            fully_shard(block, reshard_after_forward=not keep)
        fully_shard(module, reshard_after_forward=False if keep else None)  # embeddings, ln_f
        return module, torch.optim.AdamW(module.parameters(), lr=lr)
    model = DDP(module, gradient_as_bucket_view=True)  # grads live in the buckets
    if sharding == "zero1":
        return model, ZeroRedundancyOptimizer(module.parameters(), torch.optim.AdamW, lr=lr)
    return model, torch.optim.AdamW(module.parameters(), lr=lr)


def _two_steps(sharding: str, module, config: ShardingConfig, rank: int, T: int, data,
               device: str):
    """Wrap ``module`` for ``sharding``, run a warm-up step and a counted one (see
    :func:`sharded_state`): (model, optimizer, what was counted)."""
    import torch

    from efflab.core.data import random_batch
    from efflab.systems.distributed.counter import CollectiveCounter

    model, opt = _wrap(sharding, module, config.lr)
    shards = list(module.parameters())  # at rest: the local shards under FSDP
    g = torch.Generator().manual_seed(config.seed + rank)  # each rank its own data
    batches = [random_batch(data.train, config.batch, T, g, device) for _ in range(2)]  # (b, T)
    x, y = batches[0]
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    samples = []

    def sample(grad):
        samples.append(live_bytes(module, opt, shards))
        return grad

    def on_block(_mod, args):
        if torch.is_grad_enabled() and args and args[0].requires_grad:
            args[0].register_hook(sample)  # fires when this block's backward is done

    hooks = [b.register_forward_pre_hook(on_block) for b in module.h]
    x, y = batches[1]
    try:
        with CollectiveCounter() as cc:
            _, loss2 = model(x, y)
            after_forward = live_bytes(module, opt, shards)
            loss2.backward()
            opt.step()  # gradients are kept: they are part of what a rank holds at the peak
    finally:
        for h in hooks:
            h.remove()
    after_step = live_bytes(module, opt, shards)
    peak = max(samples + [after_forward, after_step], key=lambda d: d["total"])
    return model, opt, {"loss": loss.item(), "loss_step2": loss2.item(),
                        "phases": {"after_forward": after_forward, "backward_peak": peak,
                                   "after_step": after_step},
                        "backward_samples": len(samples), "collectives": cc.collectives}


def sharded_state(config: ShardingConfig, rank: int, world_size: int, backend: str = "gloo",
                  device: str = "cpu") -> list[dict]:
    """For each sharding in ``config``: build the model, wrap it, run two AdamW steps, and
    count this rank's state bytes and the collectives of the second step. Runs inside an
    initialised process group.

    The first step warms up (FSDP's lazy initialisation, DDP's first-iteration set-up, AdamW's
    state appears); the second is the one counted: every ``c10d`` collective it issues (kind,
    payload bytes) and the bytes alive after its forward, at the fullest moment of its backward
    (sampled as each block's backward finishes) and after its optimizer step (``phases``).
    ``bytes`` is the at-rest count after the step by tensor (gradients kept: they are part of
    what a rank holds at the peak).

    Also returns a checksum of the *full* updated parameters: the same under every sharding
    (sharding changes where state lives, not the arithmetic). A sharding this backend cannot
    run comes back with status "refused" and the reason.
    """
    import torch

    from efflab.core.data import load_corpus
    from efflab.core.model import build_model
    from efflab.systems.distributed.volume import paper_volume, summarise

    cfg = get_preset(config.preset)
    T = config.seq_len or cfg.block_size
    data = load_corpus()
    out = []
    for sharding in config.shardings:
        row = {"sharding": sharding, "rank": rank, "world_size": world_size}
        if sharding in ("zero2", "fsdp") and fsdp_refusal(backend):
            out.append({**row, "status": "refused", "message": fsdp_refusal(backend)})
            continue
        module = build_model(cfg, config.seed, device)
        n_params = module.num_params()
        try:
            model, opt, got = _two_steps(sharding, module, config, rank, T, data, device)
        except (RuntimeError, NotImplementedError) as e:
            out.append({**row, "status": "refused",
                        "message": f"{sharding} failed on backend {backend!r}: "
                                   f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        with torch.no_grad():
            full = [p.full_tensor() if hasattr(p, "full_tensor") else p
                    for p in module.parameters()]
            checksum = float(sum(p.double().sum() for p in full))
        out.append({**row, "status": "ok", "n_params": n_params, **got,
                    "bytes": state_bytes(module, opt),
                    "formula": memory_per_rank(n_params, world_size, sharding),
                    "comm": summarise(got["collectives"], world_size),
                    "paper_sent_bytes": paper_volume(n_params, world_size, sharding),
                    "param_checksum": checksum})
        del model, opt, module
    return out


__all__ = ["Sharding", "SHARDINGS", "STATE_CATEGORIES", "memory_per_rank", "fsdp_refusal",
           "ShardingConfig", "state_bytes", "live_bytes", "sharded_state"]
