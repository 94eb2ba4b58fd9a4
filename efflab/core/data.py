"""Corpora as bytes: a byte-level tokenizer (vocabulary 256), a deterministic split, batches.

The default corpus is the running Python's standard-library source: real text that every Python
installation carries, so the lab works offline. Any other text file or folder works too.
Files are assigned to train or val by a hash of their path (stable across runs and machines),
and the whole prepared corpus is identified by a content hash recorded with every result.
Prepared tokens are cached under ``data/cache/<hash>/`` as raw uint8 files; where that folder
cannot be written (a read-only install, a grading sandbox) under ``$EFFLAB_CACHE/corpora/``
(default ``~/.cache/efflab/corpora/``), and where neither can, the corpus is kept in memory only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "data" / "cache"


def user_cache() -> Path:
    """The per-user corpus cache used when :data:`DEFAULT_CACHE` cannot be written."""
    return Path(os.environ.get("EFFLAB_CACHE") or Path.home() / ".cache" / "efflab") / "corpora"

VAL_EVERY = 20  # one file in 20 (by path hash) is held out for validation
TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".toml", ".cfg", ".ini", ".html",
                 ".c", ".h", ".js", ".css", ".csv", ".tex", ".yaml", ".yml", ".xml", ""}


class CorpusError(ValueError):
    """The corpus path is missing, empty, or holds no text."""


def encode(text: str) -> list[int]:
    """Text -> byte ids (UTF-8)."""
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Byte ids -> text; invalid UTF-8 sequences are shown as the replacement character."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _corpus_files(root: Path, default: bool) -> list[Path]:
    if root.is_file():
        return [root]
    skip = {"__pycache__", ".git"} | ({"site-packages", "dist-packages"} if default else set())
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)  # prune: never walk installed packages
        for n in sorted(names):
            p = Path(folder) / n
            if p.is_symlink():
                continue
            suffix = p.suffix if default else p.suffix.lower()
            if (default and suffix != ".py") or (not default and suffix not in TEXT_SUFFIXES):
                continue
            files.append(p)
    return sorted(files)


def _is_val(rel: str) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest(), 16) % VAL_EVERY == 0


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: train and val tokens (uint8 arrays) and what identifies them."""

    name: str
    source: str
    sha256: str
    train: np.ndarray
    val: np.ndarray
    n_files: int

    def __post_init__(self):
        for a in (self.train, self.val):  # shared between callers in a process: never mutated
            a.flags.writeable = False

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "n_files": self.n_files, "train_bytes": int(self.train.size),
                "val_bytes": int(self.val.size)}


def load_corpus(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                max_bytes: int | None = None) -> Corpus:
    """Read (or reuse) a corpus; within one process the same arguments return the same object.

    See :func:`prepare_corpus` for what is read and how it is split.
    """
    root = None if path is None else str(Path(path).expanduser().resolve())
    cache = None if cache_dir is None else str(Path(cache_dir).resolve())
    return _load_corpus_memo(root, cache, max_bytes)


@functools.lru_cache(maxsize=8)
def _load_corpus_memo(path, cache_dir, max_bytes) -> Corpus:
    return prepare_corpus(path, cache_dir, max_bytes)


def prepare_corpus(path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   max_bytes: int | None = None) -> Corpus:
    """Read (or reuse the cached preparation of) a corpus.

    ``path=None`` reads the standard library. A folder reads its text files recursively; a
    file is split into a train head and a val tail (last 5%). ``max_bytes`` caps each file list's
    total, for quick runs.
    """
    default = path is None
    root = stdlib_root() if default else Path(path).expanduser().resolve()
    if not root.exists():
        raise CorpusError(f"corpus path {str(root)!r} does not exist")
    files = _corpus_files(root, default)
    if not files:
        raise CorpusError(f"corpus path {str(root)!r} holds no text files "
                          f"(looked for {', '.join(sorted(s for s in TEXT_SUFFIXES if s))})")
    # the fingerprint covers names, sizes and modification times; contents are hashed below
    listing = "\n".join(f"{f.relative_to(root) if f != root else f.name}:{f.stat().st_size}:"
                        f"{int(f.stat().st_mtime)}" for f in files)
    key = hashlib.sha256(f"{root}\n{max_bytes}\n{listing}".encode()).hexdigest()[:16]
    caches = [Path(cache_dir)] if cache_dir is not None else [DEFAULT_CACHE, user_cache()]
    for cache in caches:
        cached = _read_cached(cache / key)
        if cached is not None:
            return cached

    train_parts, val_parts = [], []
    total = binary = 0
    for f in files:
        data = f.read_bytes()
        if b"\x00" in data[:8192]:
            binary += 1
            continue  # binary, not text
        if max_bytes is not None and total + len(data) > max_bytes:
            break
        total += len(data)
        rel = f.name if f == root else str(f.relative_to(root))
        (val_parts if _is_val(rel) else train_parts).append(data + b"\n\n")
    if total == 0 and binary:
        raise CorpusError(f"corpus path {str(root)!r} holds only binary data ({binary} file(s) "
                          "with NUL bytes in their first 8 KiB): no text to train on")
    if total == 0:
        raise CorpusError(f"corpus path {str(root)!r} is empty: no text bytes to train on")
    if root.is_file() or not val_parts or not train_parts:  # one file: split its bytes instead
        blob = b"".join(train_parts + val_parts)
        cut = int(len(blob) * 0.95)
        train_parts, val_parts = [blob[:cut]], [blob[cut:]]
    train = np.frombuffer(b"".join(train_parts), dtype=np.uint8)
    val = np.frombuffer(b"".join(val_parts), dtype=np.uint8)
    if train.size < 2 or val.size < 2:
        raise CorpusError(f"corpus path {str(root)!r} is too small ({total} bytes) to split")
    h = hashlib.sha256()
    h.update(train.tobytes())
    h.update(b"\x00val\x00")
    h.update(val.tobytes())
    name = "python-stdlib" if default else root.name
    corpus = Corpus(name, str(root), h.hexdigest(), train, val, len(files))
    for cache in caches:  # the first folder that can be written keeps it; none: memory only
        try:
            _write_cached(cache / key, corpus)
            break
        except OSError:
            continue
    return corpus


def random_batch(tokens: np.ndarray, batch_size: int, seq_len: int,
                 generator: torch.Generator, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows: inputs x (B, T) and next-byte targets y (B, T), as int64."""
    n = tokens.size - seq_len - 1
    if n <= 0:
        raise CorpusError(f"split has {tokens.size} bytes; need more than seq_len+1={seq_len + 1}")
    starts = torch.randint(0, n, (batch_size,), generator=generator).tolist()
    return _windows(tokens, starts, seq_len, device)


def fixed_batches(tokens: np.ndarray, n_batches: int, batch_size: int, seq_len: int,
                  device="cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed, evenly spaced held-out slice: the same windows every call (deterministic eval)."""
    n = tokens.size - seq_len - 1
    if n <= 0:
        raise CorpusError(f"split has {tokens.size} bytes; need more than seq_len+1={seq_len + 1}")
    count = n_batches * batch_size
    starts = np.linspace(0, n - 1, count).astype(np.int64).tolist()
    return [_windows(tokens, starts[i * batch_size:(i + 1) * batch_size], seq_len, device)
            for i in range(n_batches)]


def _windows(tokens: np.ndarray, starts: list[int], seq_len: int, device):
    rows = np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)  # (B, T+1)
    t = torch.from_numpy(rows)
    x, y = t[:, :-1], t[:, 1:]  # (B, T) each: predict the next byte
    return x.to(device), y.to(device)


def _read_cached(folder: Path) -> Corpus | None:
    """The corpus prepared earlier in ``folder``, or None when it is absent or incomplete."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    train = np.fromfile(folder / "train.bin", dtype=np.uint8)
    val = np.fromfile(folder / "val.bin", dtype=np.uint8)
    if train.size != meta["train_bytes"] or val.size != meta["val_bytes"]:
        return None
    return Corpus(meta["name"], meta["source"], meta["sha256"], train, val, meta["n_files"])


def _write_cached(folder: Path, corpus: Corpus) -> None:
    """Write ``corpus`` into ``folder``: the tokens first, ``meta.json`` last (it marks complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    corpus.train.tofile(tmp / "train.bin")
    corpus.val.tofile(tmp / "val.bin")
    os.replace(tmp / "train.bin", folder / "train.bin")
    os.replace(tmp / "val.bin", folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps(corpus.describe(), indent=1))
    tmp.rmdir()
