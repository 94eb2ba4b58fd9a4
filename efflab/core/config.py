"""Checked configuration: model presets and the learner's toggles (``Knobs``).

Both are frozen dataclasses, so they are hashable (a result cache keys on them) and a
measurement can never mutate the settings it was given. Every field is validated in
``__post_init__``; a bad value raises :class:`ConfigError` naming the field, the value and
what is allowed — never a traceback from deep inside torch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal, get_args

# Every choice list is declared once, here (the lowest layer), as a Literal and its tuple; the
# technique configs, Knobs, the CLI and the Lab's panel all read these.
Workload = Literal["train", "eval", "prefill", "decode"]
WORKLOADS: tuple[str, ...] = get_args(Workload)
Precision = Literal["fp32", "bf16", "fp16", "bf16-pure"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
Attention = Literal["naive", "blocked", "sdpa", "triton"]
ATTENTIONS: tuple[str, ...] = get_args(Attention)
Checkpointing = Literal["none", "blocks", "selective"]
CHECKPOINTINGS: tuple[str, ...] = get_args(Checkpointing)
Quantization = Literal["none", "int8-weight", "int4-weight", "int8-dynamic"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
GroupSize = Literal[32, 64, 128, 256]  # int4 group sizes the CPU kernel accepts
GROUP_SIZES: tuple[int, ...] = get_args(GroupSize)
Compile = Literal["none", "default", "max-autotune"]
COMPILES: tuple[str, ...] = get_args(Compile)
Pruning = Literal["none", "unstructured", "2:4", "structured"]
PRUNINGS: tuple[str, ...] = get_args(Pruning)
PruningScope = Literal["global", "layer"]
PRUNING_SCOPES: tuple[str, ...] = get_args(PruningScope)


class ConfigError(ValueError):
    """A setting is outside what efflab allows. The message names field, value and allowed set."""

    def __init__(self, field_name: str, value, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is not allowed; {field_name} must be {allowed}")


# ----------------------------------------------------------------------------- checks
# The validation every config uses: each raises ConfigError naming the field, the value and
# what is allowed, and returns the value when it passes.

def check_int(field: str, value, lo: int | None = None, hi: int | None = None, *,
              optional: bool = False, note: str | None = None):
    """``value`` if it is an int (not a bool) in [lo, hi] (either bound may be None), or None
    when ``optional``; else ConfigError: ``an integer >= lo`` / ``an integer in [lo, hi]``,
    prefixed ``None or`` when optional and followed by ``(note)``."""
    if optional and value is None:
        return value
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return value
    span = _span(lo, hi, "an integer in", "an integer")
    raise ConfigError(field, value, ("None or " if optional else "") + span
                      + (f" ({note})" if note else ""))


def check_real(field: str, value, lo: float | None = None, hi: float | None = None, *,
               lo_open: bool = False, hi_open: bool = False, note: str | None = None):
    """``value`` if it is a finite real number (an int or float, not a bool) within the bounds
    (``lo_open`` / ``hi_open`` exclude them; either may be None); else ConfigError:
    ``a number in [lo, hi]`` (brackets as open or closed), or with one bound
    ``a finite number > lo`` / ``>= lo`` / ``< hi`` / ``<= hi``, followed by ``(note)``."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return value
    span = _span(lo, hi, "a number in", "a finite number", lo_open, hi_open)
    raise ConfigError(field, value, span + (f" ({note})" if note else ""))


def _span(lo, hi, both: str, one: str, lo_open: bool = False, hi_open: bool = False) -> str:
    """The allowed range in words: ``<both> [lo, hi]`` (brackets open or closed), ``<one> >= lo``,
    ``<one> < hi`` ... or ``<one>`` alone."""
    if lo is not None and hi is not None:
        return f"{both} {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{one} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{one} {'<' if hi_open else '<='} {hi}"
    return one


def check_choice(field: str, value, allowed):
    """``value`` if it is one of ``allowed``, of the choice's own type (64.0 == 64 and
    True == 1, but neither is a group size); else ConfigError listing the choices."""
    if isinstance(value, bool) or not any(value == c and isinstance(value, type(c))
                                          for c in allowed):
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in allowed))
    return value


def check_keys(field: str, mapping, allowed) -> None:
    """ConfigError naming the first key of ``mapping`` (a dict, or any iterable of names) that
    is not in ``allowed``, and listing ``allowed`` in its order."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise ConfigError(field, key, "one of " + ", ".join(str(a) for a in allowed))


# ----------------------------------------------------------------------------- model

@dataclass(frozen=True)
class ModelConfig:
    """The shape of a GPT. ``vocab_size`` is 256: efflab models read raw bytes."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # the longest context the position table covers
    vocab_size: int = 256
    needs_gpu: bool = False  # presets too large for a laptop CPU are refused there
    # key/value heads: n_head = multi-head (MHA), 1 = multi-query (MQA), between = grouped-query
    # (GQA, n_head // n_kv_head query heads share one key/value head). None means n_head.
    n_kv_head: int | None = None

    def __post_init__(self):
        check_int("n_layer", self.n_layer, 1)
        check_int("n_head", self.n_head, 1)
        check_int("n_embd", self.n_embd, 1)
        check_int("block_size", self.block_size, 1)
        check_int("vocab_size", self.vocab_size, 2)
        if self.n_embd % self.n_head:
            raise ConfigError("n_embd", self.n_embd, f"a multiple of n_head={self.n_head}")
        if self.n_kv_head is not None:
            check_int("n_kv_head", self.n_kv_head, 1, self.n_head)
            if self.n_head % self.n_kv_head:
                divisors = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
                raise ConfigError("n_kv_head", self.n_kv_head,
                                  f"a divisor of n_head={self.n_head}: one of {divisors}")
            if self.n_kv_head == self.n_head:  # plain multi-head: one spelling, equal configs
                object.__setattr__(self, "n_kv_head", None)

    @property
    def kv_heads(self) -> int:
        """Key/value heads actually stored: ``n_kv_head``, or ``n_head`` when that is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def kv_cache_bytes(self, batch_size: int, positions: int, bytes_per_el: int = 4) -> int:
        """Bytes of a KV cache: 2 (K and V) · layers · kv heads · head size · bytes · positions · batch.

        Grouped-query / multi-query attention shrink it by n_head / n_kv_head; nothing else does.
        """
        return (2 * self.n_layer * self.kv_heads * self.head_dim * bytes_per_el
                * positions * batch_size)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def n_params(self, include_embeddings: bool = True) -> int:
        """Parameter count from the shape alone (matches ``GPT.num_params``)."""
        d, L = self.n_embd, self.n_layer
        kv = self.kv_heads * self.head_dim  # width of the keys (and of the values)
        per_block = (
            2 * 2 * d  # two LayerNorms (weight + bias)
            + d * (d + 2 * kv) + (d + 2 * kv)  # q, k, v projection (k, v: kv heads only)
            + d * d + d  # attention output projection
            + d * 4 * d + 4 * d  # MLP up
            + 4 * d * d + d  # MLP down
        )
        n = L * per_block + 2 * d  # final LayerNorm
        if include_embeddings:
            n += self.vocab_size * d + self.block_size * d  # tied token table + positions
        return n


PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig("cpu-tiny", n_layer=2, n_head=2, n_embd=64, block_size=64),
        ModelConfig("cpu-small", n_layer=4, n_head=4, n_embd=128, block_size=128),
        ModelConfig("cpu-medium", n_layer=8, n_head=8, n_embd=256, block_size=256),
        # few layers, very wide: 229 MB of fp32 weights, ~7x a 32 MiB last-level cache, so
        # decoding at batch 1 is bound by memory bandwidth (the quantization lesson's model)
        ModelConfig("cpu-wide", n_layer=2, n_head=12, n_embd=1536, block_size=128),
        ModelConfig("gpu-small", n_layer=10, n_head=8, n_embd=512, block_size=512, needs_gpu=True),
        ModelConfig("gpu-gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, needs_gpu=True),
    )
}


AUTO = "auto"
LARGE_GPU_BYTES = 40 * 2**30  # a GPU this large holds gpu-gpt2's training sweeps


def default_preset(device: str | None = None) -> str:
    """The preset ``"auto"`` stands for on this machine: ``cpu-small`` on a CPU; on a CUDA GPU
    ``gpu-small``, or ``gpu-gpt2`` where the GPU has at least 40 GiB (A100-40/80, H100, H200).

    ``device``: "cpu" or "cuda" (default: CUDA when torch sees a GPU). A GPU-sized model, not
    the 0.84 M-parameter CPU one, is what makes batching, precision and fused kernels show on a
    GPU, where a tiny model is bound by kernel launches."""
    import torch

    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not use_cuda:
        return "cpu-small"
    total = torch.cuda.get_device_properties(0).total_memory
    return "gpu-gpt2" if total >= LARGE_GPU_BYTES else "gpu-small"


def resolve_preset(name: str, device: str | None = None) -> str:
    """``name`` itself, or what ``"auto"`` means here (:func:`default_preset`); an unknown
    name raises ConfigError listing the presets."""
    if name == AUTO:
        return default_preset(device)
    return check_choice("preset", name, (*PRESETS, AUTO))


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (``"auto"``: :func:`default_preset`); an unknown name raises
    ConfigError listing the presets."""
    return PRESETS[resolve_preset(name)]


# ----------------------------------------------------------------------------- knobs

@dataclass(frozen=True)
class Knobs:
    """The toggles a learner flips: run settings, then the techniques that transform the model.

    ``seq_len=None`` means the preset's full context (for ``decode``: the prompt that leaves
    room for ``gen_tokens``). ``threads=None`` means every CPU this process may use (its affinity
    mask and any cgroup CPU quota: a container limited to 2 CPUs runs 2 threads).
    ``gen_tokens`` is how many tokens the ``decode`` workload generates after its prompt.
    ``precision``: fp32, autocast bf16 / fp16 (with loss scaling), or bf16-pure weights.
    ``attention``: naive (materialises T×T), blocked (naive per block of queries, skipping the
    key blocks the causal mask hides), sdpa (PyTorch's fused kernel), triton (efflab's).
    ``checkpointing``: none, blocks (every ``checkpointing_every``-th block recomputed in
    backward) or selective (only the MLP's wide hidden activations recomputed).
    ``quantization``: post-training weight formats for inference workloads (``group_size`` for
    int4). ``moe_experts`` > 0 replaces the MLPs by that many experts, each token routed to
    ``moe_top_k`` of them, ``moe_capacity`` the capacity factor, ``moe_balance`` the weight of
    the load-balancing loss. ``compile``: a run setting — ``torch.compile`` of the model
    (``"default"`` or ``"max-autotune"``; ``"none"`` is eager), its cold compile time recorded
    apart from the step time.
    """

    batch_size: int = 8
    seq_len: int | None = None
    workload: Workload = "train"
    seed: int = 0
    threads: int | None = None
    gen_tokens: int = 32
    precision: Precision = "fp32"
    attention: Attention = "sdpa"
    checkpointing: Checkpointing = "none"
    checkpointing_every: int = 1
    quantization: Quantization = "none"
    group_size: int = 64
    moe_experts: int = 0
    moe_top_k: int = 1
    moe_capacity: float = 1.25
    moe_balance: float = 0.01
    compile: Compile = "none"

    def __post_init__(self):
        check_int("batch_size", self.batch_size, 1, 65536)
        if self.seq_len is not None:
            check_int("seq_len", self.seq_len, 1, 1 << 20)
        check_choice("workload", self.workload, WORKLOADS)
        check_int("seed", self.seed, 0, 2**63 - 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)
        check_int("gen_tokens", self.gen_tokens, 1, 1 << 16)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("checkpointing", self.checkpointing, CHECKPOINTINGS)
        check_int("checkpointing_every", self.checkpointing_every, 1, 1024)
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("group_size", self.group_size, GROUP_SIZES)
        check_int("moe_experts", self.moe_experts, 0, 256)
        check_int("moe_top_k", self.moe_top_k, 1, 256)
        check_real("moe_capacity", self.moe_capacity, 0.0, 64.0, lo_open=True)
        check_real("moe_balance", self.moe_balance, 0.0, 100.0)
        check_choice("compile", self.compile, COMPILES)
        # combinations that cannot work, named before any work
        if self.moe_experts and self.moe_top_k > self.moe_experts:
            raise ConfigError("moe_top_k", self.moe_top_k,
                              f"at most moe_experts={self.moe_experts} (each token picks "
                              "moe_top_k of the moe_experts experts)")
        if self.quantization != "none" and self.workload == "train":
            raise ConfigError("quantization", self.quantization,
                              "'none' when workload='train' (quantization is post-training: "
                              "use workload 'eval', 'prefill' or 'decode')")
        if self.quantization != "none" and self.precision != "fp32":
            raise ConfigError("precision", self.precision,
                              f"'fp32' with quantization={self.quantization!r} (the quantized "
                              "layers choose their own compute format)")

    def replace(self, **changes) -> Knobs:
        """A copy with ``changes`` applied (validated); unknown names raise ConfigError."""
        check_keys("knob", changes, sorted(f.name for f in dataclasses.fields(self)))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolve_seq_len(self, cfg: ModelConfig) -> int:
        """The context length this run uses, checked against the preset's position table."""
        if self.seq_len is not None:
            T = self.seq_len
        elif self.workload == "decode":  # leave room in the context for the generated tokens
            T = max(1, cfg.block_size - self.gen_tokens)
        else:
            T = cfg.block_size
        if T > cfg.block_size:
            raise ConfigError("seq_len", T, f"an integer in [1, {cfg.block_size}] for preset {cfg.name!r}")
        if self.workload == "decode" and T + self.gen_tokens > cfg.block_size:
            raise ConfigError(
                "gen_tokens", self.gen_tokens,
                f"at most block_size - seq_len = {cfg.block_size - T} for preset {cfg.name!r}",
            )
        return T


def knob_fields() -> list[dict]:
    """Describe each Knobs field for UIs: name, default, kind and allowed choices."""
    hints = typing.get_type_hints(Knobs)
    out = []
    for f in dataclasses.fields(Knobs):
        hint = hints[f.name]
        choices = get_args(hint) if typing.get_origin(hint) is Literal else None
        out.append({"name": f.name, "default": f.default, "choices": choices,
                    "optional": f.default is None})
    return out


_NONE_WORDS = ("auto", "none", "None", "")


def parse_knob(name: str, text: str):
    """The value of knob ``name`` written as ``text`` (a command-line flag, a text box):
    ``"8"`` -> 8 for an integer knob, ``"1.5"`` -> 1.5 for a number, ``"auto"``/``"none"`` ->
    None where the knob may be unset, a choice as itself. The one parser from text to a knob
    value: the CLI and the Lab panel both use it. Raises ConfigError naming the knob, the text
    and what it must be; the range of the value is then checked by ``Knobs``."""
    hints = typing.get_type_hints(Knobs)
    check_choice("knob", name, tuple(f.name for f in dataclasses.fields(Knobs)))
    hint = hints[name]
    text = str(text).strip()
    args = get_args(hint)
    optional = type(None) in args
    if optional and text in _NONE_WORDS:
        return None
    if typing.get_origin(hint) is Literal:
        return check_choice(name, text, args)
    base = next(a for a in args if a is not type(None)) if optional else hint
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        kind = "an integer" if base is int else "a number"
        raise ConfigError(name, text, kind + (" or 'auto'" if optional else "")) from None
    return text


def parse_vary(item: str) -> tuple[str, list]:
    """``"batch_size=1,2,4"`` -> ``("batch_size", [1, 2, 4])``, each value through
    :func:`parse_knob` (dashes in the name are read as underscores)."""
    if "=" not in item:
        raise ConfigError("vary", item, "NAME=V1,V2,... e.g. batch_size=1,2,4,8")
    name, values = item.split("=", 1)
    name = name.strip().replace("-", "_")
    parsed = [parse_knob(name, v) for v in values.split(",")]
    return name, parsed


__all__ = ["ConfigError", "check_int", "check_real", "check_choice", "check_keys", "ModelConfig",
           "PRESETS", "get_preset", "Knobs", "knob_fields", "parse_knob", "parse_vary",
           "Workload", "WORKLOADS", "Precision", "PRECISIONS", "Attention", "ATTENTIONS",
           "Checkpointing", "CHECKPOINTINGS", "Quantization", "QUANTIZATIONS", "GroupSize",
           "GROUP_SIZES", "Compile", "COMPILES", "Pruning", "PRUNINGS", "PruningScope",
           "PRUNING_SCOPES"]
