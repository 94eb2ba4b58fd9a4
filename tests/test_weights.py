import json

import pytest
import torch

from efflab.core.config import get_preset
from efflab.core.model import build_model
from efflab.core.weights import WeightsError, load_weights, read_config, save_weights


def test_roundtrip_gives_the_same_model(tmp_path):
    model = build_model(get_preset("cpu-tiny"), seed=4).eval()
    path = save_weights(model, tmp_path / "m.safetensors", {"note": "x"})
    loaded = load_weights(path).eval()
    assert read_config(path) == model.cfg
    assert loaded.lm_head.weight is loaded.wte.weight  # tying survives
    x = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert json.loads((tmp_path / "m.json").read_text()) == {"note": "x"}


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    before = path.read_bytes()
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_weights(path)
    assert path.read_bytes() == before


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = build_model(get_preset("cpu-tiny"))
    path = save_weights(model, tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        load_weights(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "none.safetensors")


def test_shipped_weights_loads_and_beats_random(corpus):
    from efflab.core.weights import read_record, shipped_weights
    from efflab.measurement.workloads import eval_loss

    path = shipped_weights("cpu-small")
    if path is None:
        pytest.skip("no shipped cpu-small checkpoint")
    rec = read_record(path)
    assert rec["corpus"]["sha256"] and rec["steps"] > 0 and rec["tokens"] > 0
    trained = eval_loss(load_weights(path), corpus, 128, batch_size=4, n_batches=2)
    random = eval_loss(build_model(get_preset("cpu-small")), corpus, 128, batch_size=4, n_batches=2)
    assert trained["bits_per_byte"] < 0.6 * random["bits_per_byte"]
