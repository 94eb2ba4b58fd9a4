"""Weights files: safetensors tensors plus a JSON record beside them. Loading never unpickles.

``data/weights/<preset>.safetensors`` holds the tensors; ``<preset>.json`` holds the
training record (config, corpus hash, steps, tokens, time, val loss, bits per byte). The model
config travels inside the safetensors metadata too, so a weights file alone is self-describing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from efflab.core.config import ModelConfig, get_preset, resolve_preset
from efflab.core.model import GPT, build_model

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "data" / "weights"
# checkpoints trained on this machine on first use (GPU presets ship none): the user data folder
TRAINED_DIR = Path(os.environ.get("EFFLAB_DATA") or Path.home() / ".local" / "share" / "efflab") / "weights"


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model it is loaded into."""


def _config_to_meta(cfg: ModelConfig) -> dict[str, str]:
    return {"efflab_model_config": json.dumps(cfg.__dict__)}


def save_weights(model: GPT, path: str | os.PathLike, record: dict | None = None) -> Path:
    """Write weights (and the record as ``.json`` beside them) atomically: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the tied lm_head shares wte's storage; safetensors refuses shared tensors, so drop it
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata=_config_to_meta(model.cfg))
    os.replace(tmp, path)
    if record is not None:
        rec_tmp = path.with_suffix(".json.tmp")
        rec_tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(rec_tmp, path.with_suffix(".json"))
    return path


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in a weights file's metadata."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"weights file {str(path)!r} is not a readable safetensors file: {e}") from e
    if "efflab_model_config" not in meta:
        raise WeightsError(f"weights file {str(path)!r} has no efflab model config in its metadata")
    text = meta["efflab_model_config"]
    try:
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise TypeError(f"a {type(fields).__name__}, not an object")
        return ModelConfig(**fields)
    except (ValueError, TypeError) as e:  # not JSON, unknown fields, a ConfigError
        raise WeightsError(f"weights file {str(path)!r} holds a damaged model config in its "
                           f"metadata ({e}): {text[:120]!r}") from None


def load_weights(path: str | os.PathLike, device="cpu") -> GPT:
    """A GPT with the weights of ``path``; a corrupt or mismatched file raises WeightsError."""
    path = Path(path)
    cfg = read_config(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"weights file {str(path)!r} is corrupt: {e}") from e
    model = GPT(cfg)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(t.shape)} (the config needs {tuple(expected[k].shape)})"
             for k, t in state.items() if k in expected and t.shape != expected[k].shape]
    if wrong:  # load_state_dict would raise a bare RuntimeError from inside torch
        raise WeightsError(f"weights file {str(path)!r} holds tensors of the wrong shape for "
                           f"its config {cfg.name!r}: {'; '.join(wrong[:3])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise WeightsError(f"weights file {str(path)!r} does not match preset {cfg.name!r}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, t in state.items():
        if not torch.isfinite(t).all():
            raise WeightsError(f"weights file {str(path)!r} holds non-finite values in {name}")
    return model.to(device)


def shipped_weights(preset: str) -> Path | None:
    """The weights shipped in ``data/weights`` for ``preset``, if there is one."""
    p = WEIGHTS_DIR / f"{preset}.safetensors"
    return p if p.exists() else None


def trained_weights(preset: str, folder: str | os.PathLike | None = None) -> Path | None:
    """The checkpoint of ``preset`` trained on this machine on first use, if there is one
    (``efflab.measurement.training.prepare_checkpoint`` makes it)."""
    p = Path(folder or TRAINED_DIR) / f"{preset}.safetensors"
    return p if p.exists() else None


def weights_source(preset: str, weights="auto") -> Path | None:
    """Where a preset's weights come from: ``"auto"`` = the shipped weights when there are
    some, else the ones trained here on first use; ``None``/``"random"`` = fresh random
    weights; anything else is a path."""
    if weights == "auto":
        return shipped_weights(preset) or trained_weights(preset)
    if weights in (None, False, "none", "random"):
        return None
    return Path(weights)


def load_model(preset: str = "cpu-small", weights="auto", seed: int = 0, device="cpu") -> GPT:
    """The preset's model: trained weights when ``weights`` finds some, else seeded random."""
    preset = resolve_preset(preset, device=str(device))
    cfg = get_preset(preset)
    src = weights_source(preset, weights)
    if src is None:
        return build_model(cfg, seed, device)
    model = load_weights(src, device)
    if model.cfg != cfg:
        raise WeightsError(f"weights file {str(src)!r} holds preset {model.cfg.name!r}, "
                              f"not {preset!r}")
    return model


def read_record(path: str | os.PathLike) -> dict:
    p = Path(path).with_suffix(".json")
    if not p.exists():
        raise WeightsError(f"no training record {str(p)!r} beside the weights")
    return json.loads(p.read_text())


def training_record(preset: str) -> dict | None:
    """The training record of the weights ``"auto"`` finds for ``preset`` (shipped, else
    trained here on first use), or None if there are none."""
    path = weights_source(resolve_preset(preset))
    return read_record(path) if path is not None else None
