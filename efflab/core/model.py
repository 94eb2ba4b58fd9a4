"""The GPT every lesson measures: one small, readable model.

Pre-LayerNorm transformer blocks (GPT-2 style), causal self-attention, a 4x MLP, learned
positions and a token table tied to the output head. The model carries no technique flags:
it has named parts — ``block.attn.core``, ``block.attn``, ``block.mlp`` — that the modules in
``efflab.techniques`` replace.

Shapes: B batch, T tokens in this call, S tokens the keys span (T, or cache length + T),
C = n_embd, nh heads, hs = C // nh head size, nkv key/value heads (nh for multi-head attention,
1 for multi-query, a divisor of nh for grouped-query), V = vocab size.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from efflab.core.config import ModelConfig


class SDPACore(nn.Module):
    """softmax(q kᵀ / √hs) v with a causal mask, by PyTorch's fused kernel.

    Queries are the *last* T of the S positions the keys cover (aligned to the end), which is
    what decoding with a KV cache needs: a new token sees every cached token and itself.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (B, nh, T, hs)   k, v: (B, nh, S, hs)  with S >= T
        T, S = q.size(-2), k.size(-2)
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if T == 1:  # one new token attends to everything before it: no mask needed
            return F.scaled_dot_product_attention(q, k, v)
        mask = causal_mask(T, S, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def causal_mask(T: int, S: int, device) -> torch.Tensor:
    """(T, S) bool, True where query i (absolute position S - T + i) may see key j.

    Built by comparing int32 positions, a form TorchInductor's C++ backend fuses into the
    softmax loop vectorised; a ``tril``-built mask it evaluates far more slowly (the
    ``forms`` section of benchmarks/results/fusion.json times both). Eager, both cost the same.
    The naive and Triton attention of ``efflab.kernels.flash_attention`` use this one too."""
    i = torch.arange(T, device=device, dtype=torch.int32).unsqueeze(1) + (S - T)  # (T, 1)
    j = torch.arange(S, device=device, dtype=torch.int32).unsqueeze(0)  # (1, S)
    return j <= i  # (T, S)


class KVCache:
    """Keys and values of every layer, preallocated for ``max_len`` positions.

    ``k[l]``, ``v[l]``: (B, nkv, max_len, hs). ``pos`` counts the positions filled so far; the
    model advances it once per forward, after every layer has written. Its size is
    ``cfg.kv_cache_bytes(B, max_len, bytes)``.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this call's (B, nkv, T, hs) keys/values; return all (B, nkv, pos+T, hs) so far."""
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.kv_heads
        self.layer = layer  # which slot of a KVCache this layer owns
        kv_width = cfg.kv_heads * cfg.head_dim  # = C for multi-head attention
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv_width)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.core = SDPACore()  # the part the attention technique swaps (naive/blocked/sdpa/triton)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs, nkv = C // self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([C, nkv * hs, nkv * hs], dim=2)  # (B,T,C), 2 x (B,T,nkv*hs)
        # (B, T, C) -> (B, nh, T, hs): each head attends independently
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nkv, S, hs): only nkv heads are cached
        if nkv != self.n_head:  # grouped/multi-query: each kv head serves nh // nkv query heads
            k = k.repeat_interleave(self.n_head // nkv, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_head // nkv, dim=1)
        y = self.core(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.c_proj(y)


GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715


def _gelu_tanh_u(x: torch.Tensor) -> torch.Tensor:
    """u = √(2/π)·(x + 0.044715·x³), the argument of tanh in GELU's tanh approximation."""
    return GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x)


def gelu_tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written with a sigmoid: the same function, another form.

    0.5·x·(1 + tanh(u)) with u = √(2/π)·(x + 0.044715·x³), and 1 + tanh(u) = 2·σ(2u), so
    gelu(x) = x·σ(2u). A sigmoid needs one exp, which compilers vectorise well; equal to
    ``F.gelu(x, approximate="tanh")`` to float32 rounding (tested to 1e-6)."""
    return x * torch.sigmoid(2.0 * _gelu_tanh_u(x))


class GeluTanhKeepSlope(torch.autograd.Function):
    """:func:`gelu_tanh_by_sigmoid` with its backward written out: grad · GELU'(x), where

        GELU'(x) = s + x·s·(1 − s)·2u'   with s = σ(2u), u' = √(2/π)·(1 + 3·0.044715·x²).

    Written this way, the backward needs one tensor, the slope GELU'(x), and a compiler's
    partitioner can compute it in the forward's loop, from the same exp, and keep it instead
    of x: one exp per element for forward and backward together, where autograd's own backward
    of the sigmoid form recomputes σ(2u) (a second exp) from the saved x.
    Eagerly this is several operators; :func:`gelu_tanh` uses it only under ``torch.compile``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(2.0 * _gelu_tanh_u(x))  # σ(2u)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        du = GELU_TANH_SCALE * (1.0 + 3 * GELU_TANH_CUBIC * x * x)  # u'(x)
        return grad * (s + x * s * (1.0 - s) * 2.0 * du)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh approximation), in the form that runs fastest where it runs.

    Eager: PyTorch's own fused ``F.gelu`` kernel (one operator forward, one backward).
    Under ``torch.compile``: the sigmoid form with its slope kept for backward
    (:class:`GeluTanhKeepSlope`), because TorchInductor's C++ backend fuses it into one
    vectorised loop each way, while its tanh is slower on the AVX2 host (the ``forms`` section
    of benchmarks/results/fusion.json). The mathematics is identical."""
    if torch.compiler.is_compiling():
        return GeluTanhKeepSlope.apply(x)
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_tanh(self.c_fc(x)))  # (B, T, C)


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)): pre-norm keeps the residual path clean."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token table, tied to lm_head
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned positions
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one table in, the same out
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2L) so the residual stream's
        # variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameters (the tied table counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None):
        """idx: (B, T) byte ids. Returns (logits (B, T, V), loss or None).

        With a ``cache`` the tokens continue from ``cache.pos`` and the cache advances by T.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x, cache)
        if cache is not None:
            cache.pos += T
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``new_tokens`` bytes after the prompt ``idx`` (B, T), using a KV cache."""
        B, T = idx.shape
        p = next(self.parameters())
        cache = KVCache(self.cfg, B, T + new_tokens, p.device, p.dtype)
        logits, _ = self(idx, cache=cache)
        out = [idx]
        for _ in range(new_tokens):
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)
            out.append(nxt)
            if cache.pos >= cache.max_len:
                break
            logits, _ = self(nxt, cache=cache)
        return torch.cat(out, dim=1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) next ids; temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def build_model(cfg: ModelConfig, seed: int = 0, device="cpu") -> GPT:
    """A freshly initialised GPT; the same (cfg, seed) always gives the same weights."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = GPT(cfg)
    return model.to(device)


def sample(model: GPT, prompt: str, new_tokens: int = 200, temperature: float = 0.8,
           top_k: int | None = 40, seed: int = 0) -> str:
    """Continue ``prompt`` with ``new_tokens`` sampled bytes; returns prompt + continuation."""
    p = next(model.parameters())
    ids = torch.tensor([list(prompt.encode("utf-8")) or [10]], device=p.device)  # (1, T)
    room = model.cfg.block_size - ids.size(1)
    g = torch.Generator(device=p.device).manual_seed(seed)
    out = model.generate(ids, max(0, min(new_tokens, room)), temperature, top_k, g)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")
