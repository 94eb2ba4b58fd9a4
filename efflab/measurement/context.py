"""What changes a number: the context a measurement is taken in, and the inputs it stands on.

A stored result may be reused only where everything that could change it is the same: the
configuration (preset, knobs, memory budget), how long it was timed, the device and the machine
(its fingerprint: CPU, GPU, threads, torch), the versions of torch and of efflab's own code, and
the exact bytes of the weights and of the corpus. :func:`measurement_context` gathers these into
one plain dict; the store keys on it, so a rough SMOKE point is never taken for a full one, a
CPU point never for a GPU one, and a change to efflab is measured again.

:func:`check_inputs` refuses a missing, empty, too-short or unreadable corpus or weights file
before any work, as bad input (``CorpusError`` / ``WeightsError``), not as a failed measurement.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch

from efflab.core.config import Knobs, ModelConfig, get_preset
from efflab.core.data import Corpus, CorpusError, load_corpus
from efflab.core.weights import WeightsError, read_config, weights_source
from efflab.measurement.hardware import RefusedError, default_threads, fingerprint, pick_device

PACKAGE_DIR = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of efflab's own source (every ``.py`` under the package): any change to the
    code that measures changes it, installed or checked out alike."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def weights_fingerprint(path: Path | None) -> str:
    """The weights' content hash (cached by path, size and modification time), or
    ``"random-init"`` for seeded random weights."""
    if path is None:
        return "random-init"
    st = Path(path).stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def check_inputs(cfg: ModelConfig, knobs: Knobs, weights: Path | None,
                 corpus: str | None) -> Corpus:
    """The corpus this run reads, once its inputs are known to be usable; otherwise
    ``CorpusError`` / ``WeightsError`` naming the path and the problem, before any work."""
    data = load_corpus(corpus)  # CorpusError: missing, empty, no text
    T = knobs.resolve_seq_len(cfg)
    need = T + (knobs.gen_tokens if knobs.workload == "decode" else 0) + 2
    for split, tokens in (("training", data.train), ("held-out", data.val)):
        if tokens.size < need:
            raise CorpusError(f"corpus {data.source!r}: its {split} split has {tokens.size} bytes, "
                              f"fewer than one sequence of this run needs ({need}); use a larger "
                              f"corpus or a shorter seq_len")
    if weights is not None:
        stored = read_config(weights)  # WeightsError: missing, not safetensors, no config
        if stored != cfg:
            raise WeightsError(f"weights file {str(weights)!r} holds preset {stored.name!r} "
                               f"({stored.n_layer}x{stored.n_embd}), not {cfg.name!r}")
    return data


def measurement_context(preset: str, knobs: Knobs, *, weights: Path | None, corpus_sha256: str,
                        device: str, target_s: float, budget_bytes: int | None) -> dict:
    """Everything besides the knobs that changes a measured number (see the module docstring)."""
    return {"preset": preset, "budget_bytes": budget_bytes, "target_s": target_s,
            "device": device, "machine": fingerprint(default_threads(knobs.threads)),
            "torch": torch.__version__, "efflab_code": code_fingerprint(),
            "weights": weights_fingerprint(weights), "corpus": corpus_sha256}


def context_for(preset: str, knobs: Knobs, *, weights="auto", corpus: str | None = None,
                device: str | None = None, target_s: float = 1.0,
                budget_bytes: int | None = None) -> dict:
    """:func:`measurement_context` for a configuration not yet measured (what a sweep keys on
    before deciding whether to measure): resolves the device, the weights file and the corpus,
    refusing bad inputs as :func:`check_inputs` does."""
    cfg = get_preset(preset)
    ckpt = None if knobs.moe_experts else weights_source(preset, weights)
    data = check_inputs(cfg, knobs, ckpt, corpus)
    try:
        dev = pick_device(cfg, device)
    except RefusedError:  # recorded as refused; keyed on the device that was asked for
        dev = device or "cpu"
    return measurement_context(preset, knobs, weights=ckpt, corpus_sha256=data.sha256,
                               device=dev, target_s=target_s, budget_bytes=budget_bytes)
