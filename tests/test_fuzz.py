"""Bad input, fuzzed (hypothesis): knob dictionaries, command lines, corpus files.

The promise: every case either runs or is refused with a message naming the problem — never a
traceback from inside torch, never a hang. Each case runs under an alarm (``bounded``) so a
hang fails the test instead of stalling the suite; example counts keep the file well under a
minute on 2 cores. Seeds are fixed (``derandomize``): the suite is repeatable, and a failure
found once is found again.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import efflab
import efflab.core.data as data_module
import efflab.measurement.core as core
from efflab import cli
from efflab.core.config import ConfigError, Knobs, knob_fields
from efflab.core.data import CorpusError, load_corpus

FIELDS = {f["name"]: f for f in knob_fields()}
SMALL_CORPUS = os.__file__
# a hang is forever; a shared 2-core host can make one honest case take a minute
CASE_TIMEOUT_S = float(os.environ.get("EFFLAB_FUZZ_CASE_TIMEOUT_S", 300))
FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


class Hang(BaseException):
    """A fuzz case ran past its time bound (a BaseException: ``measure`` must not record it)."""


@contextlib.contextmanager
def bounded(seconds: float = CASE_TIMEOUT_S, what: str = "case"):
    """Fail (never stall) when the body runs past ``seconds``."""
    def alarm(signum, frame):
        raise Hang(f"{what} still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- knob dicts

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["auto", "fp32", "bf16", "sdpa", "triton", "blocks", "int4-weight",
                     "decode", "64", "1e3", ""]),
    st.lists(st.integers(0, 4), max_size=3), st.just(64.0), st.just(2.5))
knob_dicts = st.dictionaries(
    st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=8)), junk,
    max_size=6)


def _type_ok(name: str, value) -> bool:
    """A value a Knobs field may hold: a choice, an int for an int knob (not a bool, not a
    float equal to one), a real number for a float knob, None where the knob is optional."""
    f = FIELDS[name]
    if value is None:
        return f["optional"]
    if f["choices"]:
        return isinstance(value, str) and value in f["choices"]
    default = f["default"]
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, int) or f["optional"]:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


@settings(FUZZ, max_examples=400)
@given(knob_dicts)
@example({"group_size": 64.0})  # equal to a choice, but a float: found here once
@example({"batch_size": True, "precision": ["fp32"]})
def test_any_knob_dict_builds_checked_knobs_or_is_refused_naming_the_field(d):
    try:
        k = Knobs().replace(**d)
    except ConfigError as e:
        assert e.field in str(e) and str(e).startswith(e.field)
        named = {e.field, e.field.split("[")[0]}
        assert named & (set(d) | set(FIELDS) | {"knob"}), (e.field, d)
        return
    for name in FIELDS:  # what was accepted has the knob's own type and range
        value = getattr(k, name)
        assert _type_ok(name, value), f"Knobs accepted {name}={value!r} from {d}"
    assert hash(k) == hash(Knobs().replace(**d))  # frozen, hashable, deterministic


# ----------------------------------------------------------------------------- knobs, measured

@pytest.fixture(scope="module")
def cal():
    return efflab.calibrate(quick=True)


small_knobs = st.fixed_dictionaries({
    "batch_size": st.integers(1, 3),
    "seq_len": st.one_of(st.none(), st.integers(1, 64), st.just(65)),
    "workload": st.sampled_from(FIELDS["workload"]["choices"]),
    "gen_tokens": st.integers(1, 40),
    "precision": st.sampled_from(FIELDS["precision"]["choices"]),
    "attention": st.sampled_from(FIELDS["attention"]["choices"]),
    "checkpointing": st.sampled_from(FIELDS["checkpointing"]["choices"]),
    "checkpointing_every": st.integers(1, 3),
    "quantization": st.sampled_from(FIELDS["quantization"]["choices"]),
    "group_size": st.sampled_from([32, 64]),
    "moe_experts": st.sampled_from([0, 0, 2, 4]),
    "moe_top_k": st.integers(1, 3),
})


@settings(FUZZ, max_examples=6)
@given(small_knobs)
def test_any_valid_small_configuration_measures_or_is_refused_with_a_reason(cal, d):
    """Valid knobs (any technique combination, cpu-tiny sizes) give a record that is ok,
    refused or oom, each refusal with its reason; a setting cpu-tiny cannot take raises
    ConfigError naming it. ``status: error`` (something blew up inside) fails the test."""
    try:
        k = Knobs().replace(**d)
    except ConfigError:
        assume(False)  # combinations refused at construction are the test above
    with bounded(what=f"measure {d}"):
        try:
            rec = efflab.measure(k, preset="cpu-tiny", weights="random", corpus=SMALL_CORPUS,
                                 target_s=0.01, calibration=cal)
        except ConfigError as e:
            assert e.field in FIELDS or e.field in ("seq_len", "gen_tokens", "preset"), e
            return
    assert rec["status"] in ("ok", "refused", "oom"), (d, rec["status"], rec.get("message"),
                                                        rec.get("traceback"))
    if rec["status"] != "ok":
        assert rec["message"], rec


# ----------------------------------------------------------------------------- command lines

KNOB_FLAGS = ["--" + n.replace("_", "-") for n in FIELDS if n != "compile"]
flag_values = st.one_of(
    st.sampled_from(["1", "2", "0", "-1", "3.5", "auto", "none", "x", "", "999999999999",
                     "fp32", "bf16", "sdpa", "naive", "decode", "eval", "int8-weight", "nan"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6))
flag_pairs = st.lists(st.tuples(st.sampled_from(KNOB_FLAGS + [
    "--preset", "--target-s", "--budget-mib", "--vary", "--weights", "--corpus", "--bogus"]),
    flag_values), max_size=4)
commands = st.sampled_from(["measure", "sweep", "results", "presets", "frobnicate", ""])


@pytest.fixture
def quick_calibration(monkeypatch, cal):
    """The command measures with the quick calibration (the full one takes half a minute on a
    fresh machine; what is fuzzed here is argument handling, not calibration)."""
    monkeypatch.setattr(core, "calibrate", lambda *a, **k: cal)


@settings(FUZZ, max_examples=30)
@given(cmd=commands, pairs=flag_pairs)
@example(cmd="measure", pairs=[])  # the run path itself, whatever the generator draws
@example(cmd="sweep", pairs=[("--workload", "decode"), ("--gen-tokens", "2")])
@example(cmd="measure", pairs=[("--seq-len", "999999999999")])
@example(cmd="measure", pairs=[("--corpus", "/nonexistent/corpus.txt")])
def test_any_command_line_runs_or_exits_2_with_a_message(quick_calibration, tmp_path, capsys,
                                                          cmd, pairs):
    argv = [cmd] if cmd else []
    if cmd in ("measure", "sweep"):  # quick and private unless the fuzzed flags say otherwise
        argv += ["--preset", "cpu-tiny", "--weights", "random", "--corpus", SMALL_CORPUS,
                 "--target-s", "0.01", "--store", str(tmp_path / "store")]
        if cmd == "sweep":
            argv += ["--vary", "batch_size=1,2"]
    elif cmd == "results":
        argv += ["--store", str(tmp_path / "store")]
    for flag, value in pairs:
        if flag == "--preset" and value not in ("cpu-tiny", "gpu-small", "nope"):
            value = "nope"  # a real bigger preset is slow, not wrong
        argv += [flag, value]
    with bounded(what=f"efflab {' '.join(argv)}"):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse: --help, or a usage error
            rc = e.code
    out, err = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, out[-500:], err[-1500:])
    assert "Traceback" not in out + err, (argv, err[-1500:])
    lines = (out + err).splitlines()
    assert not [line for line in lines if line.startswith("error:")], (argv, out[-800:])
    if rc == 2:
        assert "error:" in err and len(err.strip()) > len("error:"), (argv, err)


# ----------------------------------------------------------------------------- corpus files

def _huge_line(n: int) -> bytes:
    return (b"x = 1; " * (n // 7 + 1))[:n]  # one line, no newline at all


CORPUS_KINDS = {
    "empty": lambda r: b"",
    "shorter than one sequence": lambda r: r[:40] or b"a",
    "binary": lambda r: b"\x00\x01\x02\xff" * 64 + r,
    "one huge line": lambda r: _huge_line(400_000),
    "not utf-8": lambda r: bytes([0xC3, 0x28, 0xA0, 0xA1, 0xE2, 0x28, 0xA1]) * 200 + r,
    "arbitrary bytes": lambda r: r,
}
_names = itertools.count()


@pytest.fixture
def private_cache(monkeypatch, tmp_path_factory):
    """Prepared corpora go to a temporary cache, not the checkout's data/cache."""
    monkeypatch.setattr(data_module, "DEFAULT_CACHE", tmp_path_factory.mktemp("corpus-cache"))


@settings(FUZZ, max_examples=10)
@given(kind=st.sampled_from(sorted(CORPUS_KINDS)), raw=st.binary(max_size=600))
def test_any_corpus_file_is_read_and_measured_or_refused_naming_the_problem(
        private_cache, tmp_path_factory, cal, kind, raw):
    path = tmp_path_factory.mktemp("corpus") / f"corpus-{next(_names)}.txt"
    path.write_bytes(CORPUS_KINDS[kind](raw))
    with bounded(what=f"corpus {kind}"):
        try:
            corpus = load_corpus(path)
        except CorpusError as e:
            assert path.name in str(e), e  # names the file ...
            if kind == "empty":           # ... and the problem
                assert "empty" in str(e)
            if kind == "binary" and b"\x00" in path.read_bytes()[:8192]:
                assert "binary" in str(e), e
            return
        assert corpus.train.size >= 2 and corpus.val.size >= 2
        try:
            rec = efflab.measure(Knobs(batch_size=2, seq_len=32, workload="train"),
                                 preset="cpu-tiny", weights="random", corpus=str(path),
                                 target_s=0.01, calibration=cal)
        except CorpusError as e:
            assert path.name in str(e) and ("bytes" in str(e) or "small" in str(e)), e
            return
    assert rec["status"] == "ok", (kind, rec["status"], rec.get("message"))
    assert math.isfinite(rec["quality"]["val_loss"])


def test_the_fuzzers_can_fail():
    """The properties above are not vacuous: a float batch size, a stray knob and a binary
    corpus each break one of them when fed by hand."""
    with pytest.raises(ConfigError, match="batch_size"):
        Knobs().replace(batch_size=2.0)
    with pytest.raises(ConfigError, match="knob"):
        Knobs().replace(colour="red")
    assert not _type_ok("group_size", 64.0) and not _type_ok("batch_size", True)
