"""``PRESET = "auto"``: the machine's own preset, and a checkpoint trained here on first use.

The CUDA branch is tried with a faked device (torch.cuda reporting a GPU of a given memory);
the first-use training path runs on the CPU with cpu-tiny, whose weights are not shipped."""

from __future__ import annotations

import types

import pytest
import torch

import efflab
from efflab.core import config, weights
from efflab.core.config import ConfigError
from efflab.measurement import training


def _fake_gpu(monkeypatch, gib: float) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(total_memory=int(gib * 2**30), name="fake"))


def test_auto_is_cpu_small_on_a_cpu():
    assert config.default_preset("cpu") == "cpu-small"
    if not torch.cuda.is_available():
        assert config.default_preset() == "cpu-small"
        assert efflab.resolve_preset("auto") == "cpu-small"
        assert efflab.get_preset("auto").name == "cpu-small"
    assert efflab.resolve_preset("cpu-tiny") == "cpu-tiny"


@pytest.mark.parametrize("gib, preset", [(15.0, "gpu-small"), (39.9, "gpu-small"),
                                         (40.0, "gpu-gpt2"), (80.0, "gpu-gpt2")])
def test_auto_is_a_gpu_sized_model_on_cuda(monkeypatch, gib, preset):
    _fake_gpu(monkeypatch, gib)
    assert config.default_preset() == preset
    assert config.resolve_preset("auto") == preset
    assert config.resolve_preset("auto", device="cpu") == "cpu-small"  # the device asked for


def test_an_unknown_preset_names_auto_among_the_choices():
    with pytest.raises(ConfigError, match="auto") as e:
        config.resolve_preset("gpu-huge")
    assert "cpu-small" in str(e.value)


def test_a_checkpoint_is_trained_once_on_first_use_and_found_by_load_model(tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(weights, "TRAINED_DIR", tmp_path)
    assert weights.shipped_weights("cpu-tiny") is None  # nothing shipped: the GPU presets' case
    assert weights.training_record("cpu-tiny") is None
    record = training.prepare_checkpoint("cpu-tiny", steps=3, batch_size=2, eval_every=2,
                                         progress=False)
    said = capsys.readouterr().out
    assert "no checkpoint of cpu-tiny on this machine yet" in said and "3 steps" in said
    assert (tmp_path / "cpu-tiny.safetensors").exists() and record["steps"] == 3
    model = efflab.load_model("cpu-tiny")  # "auto" weights: the one just trained
    fresh = weights.build_model(efflab.get_preset("cpu-tiny"), seed=0)
    assert not torch.equal(model.state_dict()["wte.weight"],
                           fresh.state_dict()["wte.weight"])
    assert weights.training_record("cpu-tiny")["steps"] == 3
    # a second call trains nothing
    again = training.prepare_checkpoint("cpu-tiny", steps=3, batch_size=2, progress=False)
    assert again == record and "training" not in capsys.readouterr().out


def test_a_checkpoint_trained_on_another_corpus_is_trained_again(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setattr(weights, "TRAINED_DIR", tmp_path)
    training.prepare_checkpoint("cpu-tiny", steps=2, batch_size=2, eval_every=2, progress=False)
    meta = tmp_path / "cpu-tiny.json"
    rec = json.loads(meta.read_text())
    rec["corpus"]["sha256"] = "0" * 64
    meta.write_text(json.dumps(rec))
    capsys.readouterr()
    training.prepare_checkpoint("cpu-tiny", steps=2, batch_size=2, eval_every=2, progress=False)
    assert "trained on another corpus" in capsys.readouterr().out
    assert json.loads(meta.read_text())["corpus"]["sha256"] != "0" * 64


def test_a_shipped_checkpoint_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "TRAINED_DIR", tmp_path)
    record = training.prepare_checkpoint("auto" if not torch.cuda.is_available() else "cpu-small")
    assert record["preset"] == "cpu-small" and not list(tmp_path.iterdir())
