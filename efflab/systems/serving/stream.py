"""A seeded synthetic request stream: Poisson arrivals, varied prompt and output lengths.

Open-loop, like real traffic: requests arrive when they arrive, whether or not the server keeps
up. Inter-arrival gaps are exponential with mean 1 / rate (a Poisson process); prompt and output
lengths are drawn uniformly from their ranges; prompts are windows of real held-out text when a
token array is given (else random bytes). The same seed always gives the same stream, so two
scheduling policies are compared on identical traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Request:
    """One request: arrives at ``arrival`` (seconds of the stream's clock), brings ``prompt``
    and asks for exactly ``max_new_tokens`` tokens (no early stop: a benchmark's convention)."""

    id: int
    arrival: float
    prompt: list[int]
    max_new_tokens: int
    # filled in by the engine
    output: list[int] = field(default_factory=list)
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    token_times: list[float] = field(default_factory=list)
    preemptions: int = 0

    @property
    def ttft(self) -> float:
        """Time to first token: arrival to the first generated token (queueing + prefill)."""
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Time per output token after the first: (finish - first token) / (n - 1)."""
        n = len(self.output)
        return (self.finished - self.first_token) / (n - 1) if n > 1 else 0.0

    @property
    def latency(self) -> float:
        return self.finished - self.arrival


def poisson_stream(rate: float, n_requests: int, seed: int = 0,
                   prompt_len: tuple[int, int] = (8, 32), output_len: tuple[int, int] = (8, 48),
                   tokens: np.ndarray | None = None, vocab_size: int = 256) -> list[Request]:
    """``n_requests`` requests arriving at ``rate`` per second on average (seeded).

    ``prompt_len`` and ``output_len`` are inclusive ranges. ``tokens``: a corpus split to cut
    prompts from (held-out text makes the model's continuations realistic).
    """
    if not (isinstance(rate, (int, float)) and rate > 0):
        raise ValueError(f"rate={rate!r} is not allowed; rate must be a number > 0 (requests/s)")
    if n_requests < 1:
        raise ValueError(f"n_requests={n_requests!r} is not allowed; must be an integer >= 1")
    for name, (lo, hi) in (("prompt_len", prompt_len), ("output_len", output_len)):
        if not 1 <= lo <= hi:
            raise ValueError(f"{name}={(lo, hi)!r} is not allowed; need 1 <= low <= high")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n_requests)
    arrivals = np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0
    plens = rng.integers(prompt_len[0], prompt_len[1] + 1, n_requests)
    olens = rng.integers(output_len[0], output_len[1] + 1, n_requests)
    out = []
    for i in range(n_requests):
        if tokens is not None:
            s = int(rng.integers(0, tokens.size - plens[i]))
            prompt = tokens[s:s + plens[i]].astype(np.int64).tolist()
        else:
            prompt = rng.integers(0, vocab_size, plens[i]).tolist()
        out.append(Request(i, float(arrivals[i]), prompt, int(olens[i])))
    return out
