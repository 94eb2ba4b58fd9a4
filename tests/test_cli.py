import json
import subprocess
import sys

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
