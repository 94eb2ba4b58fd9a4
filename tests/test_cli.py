import json
import subprocess
import sys

import pytest

from efflab.cli import _parse_vary, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "efflab.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_measure_json_prints_one_record():
    out = run("measure", "--preset", "cpu-tiny", "--batch-size", "2", "--seq-len", "16",
              "--workload", "eval", "--target-s", "0.02", "--json")
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["status"] == "ok" and rec["knobs"]["batch_size"] == 2
    assert rec["workload"] == "eval"


def test_bad_knob_is_one_clear_line(capsys):
    assert main(["measure", "--preset", "cpu-tiny", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch_size=0" in err and "[1, 65536]" in err and "Traceback" not in err


def test_unknown_preset_and_workload_are_refused_by_the_parser():
    out = run("measure", "--preset", "nope")
    assert out.returncode == 2 and "cpu-small" in out.stderr
    out = run("measure", "--workload", "fly")
    assert out.returncode == 2 and "decode" in out.stderr


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--preset", "cpu-tiny", "--steps", "1",
                 "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_writes_checkpoint_and_record(tmp_path):
    out = run("train", "--preset", "cpu-tiny", "--steps", "12", "--batch-size", "4",
              "--seq-len", "32", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "cpu-tiny.json").read_text())
    assert rec["steps"] == 12 and rec["tokens"] == 12 * 4 * 32
    assert {"val_loss", "bits_per_byte"} <= set(rec["final"])
    assert len(rec["corpus"]["sha256"]) == 64
    assert (tmp_path / "cpu-tiny.safetensors").stat().st_size > 4 * 100_000


def test_vary_parsing():
    assert _parse_vary(["batch_size=1,2,4", "workload=train,eval"]) == {
        "batch_size": [1, 2, 4], "workload": ["train", "eval"]}


def test_float_knobs_from_the_command_line():
    assert _parse_vary(["moe_capacity=1.5,2"]) == {"moe_capacity": [1.5, 2.0]}
    assert _parse_vary(["threads=auto,2", "seq-len=none,16"]) == {
        "threads": [None, 2], "seq_len": [None, 16]}
    from efflab.cli import _knobs_from, build_parser

    args = build_parser().parse_args(["measure", "--moe-experts", "4", "--moe-capacity", "1.5"])
    k = _knobs_from(args)
    assert k.moe_capacity == 1.5 and k.moe_experts == 4


def test_bad_knob_text_names_the_knob(capsys):
    assert main(["measure", "--preset", "cpu-tiny", "--moe-capacity", "lots"]) == 2
    err = capsys.readouterr().err
    assert "moe_capacity='lots'" in err and "a number" in err
    assert main(["sweep", "--preset", "cpu-tiny", "--vary", "batch_size=1,two"]) == 2
    err = capsys.readouterr().err
    assert "batch_size='two'" in err and "an integer" in err


def test_lab_and_cli_read_knob_text_with_the_same_parser():
    from efflab.core.config import parse_knob

    assert parse_knob("batch_size", " 8 ") == 8
    assert parse_knob("moe_capacity", "1.25") == 1.25
    assert parse_knob("seq_len", "auto") is None
    assert parse_knob("precision", "bf16") == "bf16"


def test_bad_corpus_and_weights_are_bad_input_not_failed_measurements(tmp_path, capsys):
    store = tmp_path / "store"
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("x = 1\n" * 3)  # a real file, far shorter than one sequence
    for corpus, expect in ((tmp_path / "missing", "does not exist"), (tiny, None)):
        code = main(["measure", "--preset", "cpu-tiny", "--corpus", str(corpus), "--store", str(store)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and str(corpus.name) in err, err
        if expect:
            assert expect in err
    truncated = tmp_path / "w.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # a header cut short
    code = main(["sweep", "--preset", "cpu-tiny", "--weights", str(truncated), "--store", str(store),
                 "--vary", "batch_size=1,2"])
    err = capsys.readouterr().err
    assert code == 2 and str(truncated) in err and "Traceback" not in err
    from efflab.core.store import Store

    assert not (store / "efflab.sqlite").exists() or Store(store).count() == 0  # nothing recorded


def test_quality_windows_reaches_measure_and_sweep(monkeypatch):
    import efflab.measurement as measurement
    import efflab.measurement.sweeping as sweeping
    seen = {"measure": [], "sweep": []}

    def fake_measure(knobs, **kw):
        seen["measure"].append(kw["quality_windows"])
        return {"status": "refused", "message": "faked"}

    def fake_sweep(knobs, vary, **kw):
        seen["sweep"].append(kw["quality_windows"])
        import pandas as pd
        return pd.DataFrame()

    # each command imports its function when it runs: patch it where it is defined
    monkeypatch.setattr(measurement, "measure", fake_measure)
    monkeypatch.setattr(sweeping, "sweep", fake_sweep)
    assert main(["measure", "--preset", "cpu-tiny", "--quality-windows", "64"]) == 0
    assert main(["sweep", "--preset", "cpu-tiny", "--vary", "batch_size=1,2",
                 "--quality-windows", "32"]) == 0
    assert main(["measure", "--preset", "cpu-tiny"]) == 0
    assert seen == {"measure": [64, None], "sweep": [32]}


def test_a_bad_quality_windows_is_refused_by_the_flags_name(monkeypatch, capsys):
    import efflab.measurement as measurement
    monkeypatch.setattr(measurement, "measure", lambda *a, **k: pytest.fail("measured anyway"))
    assert main(["measure", "--preset", "cpu-tiny", "--quality-windows", "1"]) == 2
    err = capsys.readouterr().err
    assert "--quality-windows" in err and "Traceback" not in err
