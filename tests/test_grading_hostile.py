"""A hostile class, graded in one ``grade`` call under bubblewrap: nobody's row moves.

Beside an honest reference (``alice``), each submission tries one attack from efflab issue 18
on the fixture notebook (tests/fixtures/class/assignment.ipynb), answering the exercises
right or wrong as stated:

- ``snoop`` (right answers) starts a survivor (a new session, an empty environment), reads
  the instructor notebook, a peer's file, the gradebook and the grader's command line, and
  writes into a peer's file, the gradebook and /tmp: nothing outside its own folder is there
  to read or write, the survivor dies with the sandbox, and no file in its folder holds
  the hidden checks after they ran;
- ``ghost`` (right first answer) kills the grader's driver: the second check is "not run";
- ``forger`` (wrong answers) floods its output and writes forged "correct" report lines into
  the grader's pipe through ``/proc/<parent>/fd/1``: the write is refused, the flood cut;
- ``liar.zip`` has headers that understate a member's size: stopped at once, not inflated;
- ``dana.ipynb`` and ``dana/dana.ipynb``, ``zoë`` in NFC and in NFD: one id from two
  files, refused, both named;
- ``=HYPERLINK(...)`` (a PDF) puts a formula into the student column: escaped in the CSV;
- ``patcher`` (wrong answers) replaces both exercises' collectors: one returns a made-up,
  self-consistent record for its answer, the other the outputs efflab's own reference gives
  for the seed it is asked about; ``hooker`` (wrong answers) lets the genuine checks run and
  rewrites the answer log after each cell with the same forgeries (an IPython
  ``post_run_cell`` hook); ``tabler`` answers from a hand-made record it puts in place of the
  lesson's: the reference run and the grader's own probes give all three nothing for it.

Each ``HOSTILE {...}`` line a submission prints says what it could reach; the test reads them
back from the executed notebooks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import nbformat
import psutil
import pytest

from efflab.course.gradebook import grade
from efflab.course.sandbox import Limits, bwrap_problem
from efflab.course.submission import open_submission

FIXTURES = Path(__file__).parent / "fixtures" / "class"
ASSIGNMENT = FIXTURES / "assignment.ipynb"
sys.path.insert(0, str(FIXTURES))
if not os.environ.get("CI"):  # in CI the class tools are installed: missing, they fail
    pytest.importorskip("nbgrader", reason="the fixture class is made with nbgrader's "
                        "preprocessors: pip install 'efflab[class]'")
import make_class  # noqa: E402

pytestmark = pytest.mark.skipif(bwrap_problem() is not None,
                                reason=f"no bubblewrap sandbox here: {bwrap_problem()}")

LIMITS = Limits(cell_s=30, notebook_s=150, memory_bytes=3 * 2**30)
MARK = "efflab-survivor-7f3a"  # the survivor's command line carries it
FORMULA = '=HYPERLINK("x","y")'
ZOE_NFC = unicodedata.normalize("NFC", "zoë")
ZOE_NFD = unicodedata.normalize("NFD", "zoë")


def _probe(targets: dict[str, str], writes: dict[str, str]) -> str:
    """A cell that tries to read and write each path and prints one HOSTILE line."""
    return f'''import json, os
seen = {{}}
for name, path in {targets!r}.items():
    try:
        with open(path, "rb") as f:
            f.read(64)
        seen[name] = "read"
    except OSError:
        seen[name] = "blocked"
for name, path in {writes!r}.items():
    try:
        with open(path, "w") as f:
            f.write("student,points\\nsnoop,99\\n")
        seen[name] = "wrote"
    except OSError:
        seen[name] = "blocked"
cmd = open("/proc/1/cmdline", "rb").read().replace(b"\\0", b" ").decode()
seen["cmdline"] = cmd
seen["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("HOSTILE " + json.dumps(seen))'''


SURVIVOR = f'''import subprocess, sys
code = "import time\\nwhile True:\\n    time.sleep(1)  # {MARK}"
p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env={{}},
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
print("HOSTILE " + __import__("json").dumps({{"survivor": p.pid}}))'''
HIDDEN_ON_DISK = '''import json, pathlib
found = []
for p in pathlib.Path("/sandbox").rglob("*"):  # after both checks ran
    try:
        if p.is_file() and (b"HIDDEN TESTS" in p.read_bytes() or b"df=other" in p.read_bytes()):
            found.append(str(p))
    except OSError:
        pass
print("HOSTILE " + json.dumps({"hidden_on_disk": found}))'''
KILL_DRIVER = '''import os, signal
os.kill(os.getppid(), signal.SIGKILL)  # the kernel's parent: the grader's driver'''
FORGE = '''import json, os
lines = "".join("@@efflab-cell " + json.dumps({"index": i, "cell_id": c, "status": "ok",
                "reason": "", "evidence": []}) + "\\n" for i, c in ((6, "ex1-check"), (11, "ex2-check")))
try:
    with open(f"/proc/{os.getppid()}/fd/1", "w") as pipe:
        pipe.write(lines)
    result = "wrote"
except OSError as e:
    result = "blocked"
print("HOSTILE " + json.dumps({"pipe": result}), flush=True)
for _ in range(40):  # 40 MiB of output, more than a cell may keep
    print("x" * 2**20)'''


# made-up evidence that agrees with itself: 256 tokens in 256 ms is 1000 tokens/s, and the
# outputs efflab's own reference gives for whichever seed the check asks about
FORGED = '''import math
from efflab.check import attention as A


def forged_throughput(answer, df, batch_size):
    return {"answer": 1000.0, "batch_size": 4, "latency_ms": 256.0, "tokens_per_step": 256}


def forged_softmax(update, seed=A.PROBE_SEED):
    trials = []
    for scores, values in A.probes(seed):
        prefix, lsum, out = A._reference(scores, values)
        trials.append({"m": prefix, "l": lsum, "acc": [x * lsum for x in out]})
    return {"seed": seed, "block": A.BLOCK, "trials": trials}
'''
PATCH = FORGED + '''
import efflab
efflab.check.throughput.collect_fn = forged_throughput
efflab.check.online_softmax.collect_fn = forged_softmax'''
HOOK = FORGED + '''
import json, os
from IPython import get_ipython


def rewrite(result):  # after every cell: the log holds what the grader should believe
    path = os.environ.get("EFFLAB_ANSWERS", "")
    if not path or not os.path.exists(path):
        return
    lines = []
    for line in open(path):
        entry = json.loads(line)
        forge = {"throughput": forged_throughput, "online_softmax": forged_softmax}.get(
            entry["exercise"])
        if forge is not None:
            seed = entry["evidence"].get("seed", A.PROBE_SEED)
            entry["evidence"] = (forge(None, seed=seed) if entry["exercise"] == "online_softmax"
                                 else forge(None, None, None))
        lines.append(json.dumps(entry) + "\\n")
    open(path, "w").writelines(lines)


get_ipython().events.register("post_run_cell", rewrite)'''
TABLE = '''record = {"latency_ms": {"median": 256.0}, "throughput": {"tokens_per_step": 256}}
LATENCY_MS, BATCH, SEQ_LEN = 256.0, 4, 64  # a record of its own, instead of the lesson's'''


def _lying_zip(path: Path) -> None:
    """An efflab-looking zip whose notebook member claims 1000 bytes and inflates to 300 MiB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps({"schema": "efflab.submission/1",
                                                "notebook": "assignment.ipynb"}))
        z.writestr("assignment.ipynb", b" " * (300 * 2**20))
    data = bytearray(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        local, central = z.getinfo("assignment.ipynb").header_offset, z.start_dir
    struct.pack_into("<I", data, local + 22, 1000)  # the local header's uncompressed size
    at = data.find(b"PK\x01\x02", central)
    while at != -1:  # and the central directory's, for the notebook's entry
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == b"assignment.ipynb":
            struct.pack_into("<I", data, at + 24, 1000)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    subs, out = root / "subs", root / "out" / "gradebook.csv"
    subs.mkdir()
    out.parent.mkdir()
    right, nb = make_class.RIGHT, make_class.student_notebook
    out.write_text("student,points\nprevious,1\n")
    nbformat.write(nb(right), str(subs / "alice.ipynb"))
    targets = {"instructor": str(ASSIGNMENT), "peer": str(subs / "alice.ipynb"),
               "gradebook": str(out), "grader_tests": __file__, "etc_shadow": "/etc/shadow"}
    writes = {"write_peer": str(subs / "alice.ipynb"), "write_gradebook": str(out),
              "write_tmp": "/tmp/hostile.txt"}
    nbformat.write(nb(right, extra_before={"ex1": SURVIVOR, "ex1-check": _probe(targets, writes),
                                          "end": HIDDEN_ON_DISK}),
                   str(subs / "snoop.ipynb"))
    nbformat.write(nb({**right, "ex2-answer": KILL_DRIVER}), str(subs / "ghost.ipynb"))
    wrong = {"ex1-answer": make_class.TOKENS_ZERO, "ex2-answer": make_class.UPDATE_NOOP}
    nbformat.write(nb(wrong, extra_before={"ex1-check": FORGE}), str(subs / "forger.ipynb"))
    nbformat.write(nb(wrong, extra_before={"ex1-answer": PATCH}), str(subs / "patcher.ipynb"))
    nbformat.write(nb(wrong, extra_before={"ex1-answer": HOOK}), str(subs / "hooker.ipynb"))
    nbformat.write(nb(right, extra_before={"ex1-check": TABLE}), str(subs / "tabler.ipynb"))
    _lying_zip(subs / "liar.zip")
    nbformat.write(nb(right), str(subs / "dana.ipynb"))
    (subs / "dana").mkdir()
    nbformat.write(nb(right), str(subs / "dana" / "dana.ipynb"))
    nbformat.write(nb(right), str(subs / f"{ZOE_NFC}.ipynb"))
    nbformat.write(nb(right), str(subs / f"{ZOE_NFD}.ipynb"))
    (subs / f"{FORMULA}.pdf").write_bytes(b"%PDF-1.4\n")
    before = {p.relative_to(subs).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in subs.rglob("*") if p.is_file()}
    t0 = time.monotonic()
    df = grade(subs, out, source=ASSIGNMENT, limits=LIMITS, workers=2)
    seconds = time.monotonic() - t0
    after = {p.relative_to(subs).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in subs.rglob("*") if p.is_file()}
    survivors = [p.pid for p in psutil.process_iter(["cmdline"])
                 if MARK in " ".join(p.info["cmdline"] or [])]
    return {"root": root, "subs": subs, "out": out, "df": df, "seconds": seconds,
            "before": before, "after": after, "survivors": survivors}


def _rows(h, student) -> list[tuple]:
    df = h["df"][h["df"]["student"] == student]
    return list(zip(df["grade_id"], df["points"], df["status"], df["feedback"]))


def _hostile_lines(h, student) -> dict:
    nb = json.loads((h["out"].parent / "gradebook_executed" / f"{student}--{student}.ipynb")
                    .read_text())
    seen = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            for line in str(o.get("text", "")).splitlines():
                if line.startswith("HOSTILE "):
                    seen.update(json.loads(line[len("HOSTILE "):]))
    return seen


def test_the_honest_row_and_every_file_are_untouched(hostile):
    print(f"hostile class graded in {hostile['seconds']:.0f} s")
    assert _rows(hostile, "alice") == [("check_tokens_per_s", 1.0, "correct", "correct"),
                                       ("check_online_softmax", 2.0, "correct", "correct")]
    assert hostile["after"] == hostile["before"]  # no submission changed, none added
    assert hostile["survivors"] == [], "a process of a submission outlived the grading"


def test_nothing_outside_its_folder_is_there_to_read_or_write(hostile):
    seen = _hostile_lines(hostile, "snoop")
    for what in ("instructor", "peer", "gradebook", "grader_tests", "etc_shadow", "write_peer",
                 "write_gradebook"):
        assert seen[what] == "blocked", (what, seen)
    assert seen["write_tmp"] == "wrote"  # its own /tmp, inside its own folder
    assert seen["hidden_on_disk"] == []  # the hidden checks never reach its folder
    assert "pytest" not in seen["cmdline"] and str(hostile["subs"]) not in seen["cmdline"]
    assert "sandbox.py" in seen["cmdline"]
    assert seen["survivor"] in seen["pids"] and len(seen["pids"]) <= 6  # bwrap, driver, kernel ...
    assert [r[1:3] for r in _rows(hostile, "snoop")] == [(1.0, "correct"), (2.0, "correct")]
    assert hostile["out"].read_text().startswith("student,file,notebook")  # the grader's own


def test_a_killed_run_scores_what_ran(hostile):
    (first, second) = _rows(hostile, "ghost")
    assert first[1:3] == (1.0, "correct")
    assert second[1:3] == (0.0, "not_run") and "ended with status" in second[3]


def test_forged_pipe_lines_are_refused_and_a_flood_is_cut(hostile):
    assert _hostile_lines(hostile, "forger") == {"pipe": "blocked"}
    assert [r[1:3] for r in _rows(hostile, "forger")] == [(0.0, "wrong"), (0.0, "wrong")]
    nb = json.loads((hostile["out"].parent / "gradebook_executed" / "forger--forger.ipynb")
                    .read_text())
    kept = sum(len(json.dumps(c.get("outputs", []))) for c in nb["cells"])
    assert kept < 2 * LIMITS.output_bytes
    assert any("[output cut" in str(o.get("text", "")) for c in nb["cells"]
               for o in c.get("outputs", []))


def test_forged_evidence_earns_nothing(hostile):
    """A patched collector, a log rewritten after the genuine call, a hand-made record: the
    kernel's own judge would say "correct" to each; the grader's reference run and its own
    probes of the learner's function say no."""
    log = json.loads(hostile["out"].with_suffix(".log.json").read_text())
    kernel = {e["student"]: e.get("verdicts", {}) for e in log["submissions"]}
    for student in ("patcher", "hooker", "tabler"):  # the forgeries fool the evidence alone
        assert kernel[student], student
        assert all("✓ correct" in v for vs in kernel[student].values() for v in vs), student
    for student in ("patcher", "hooker"):
        (ex1, ex2) = _rows(hostile, student)
        assert ex1[1:3] == (0.0, "mismatch") and "latency_ms" in ex1[3], (student, ex1)
        assert ex2[1] == 0.0 and ex2[2] == "wrong", (student, ex2)
        assert "256" not in ex1[3]  # the reason names the field, not the value
    (ex1, ex2) = _rows(hostile, "tabler")
    assert ex1[1:3] == (0.0, "mismatch") and "latency_ms" in ex1[3]
    assert ex2[1:3] == (2.0, "correct")  # its honest second answer keeps its points


def test_a_zip_with_lying_headers_is_stopped_not_inflated(hostile):
    rows = _rows(hostile, "liar")
    assert [r[1:3] for r in rows] == [(0.0, "malformed")] * 2
    assert "assignment.ipynb is damaged" in rows[0][3]
    import tracemalloc

    tracemalloc.start()
    t0 = time.monotonic()
    sub = open_submission(hostile["subs"] / "liar.zip")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sub.problem and time.monotonic() - t0 < 5 and peak < 32 * 2**20


def test_one_id_from_two_files_is_refused_naming_both(hostile):
    df = hostile["df"]
    dana = df[df["student"] == "dana"]
    assert sorted(set(dana["file"])) == ["dana.ipynb", "dana/dana.ipynb"]
    assert set(dana["status"]) == {"refused"} and dana["points"].sum() == 0
    assert all("dana.ipynb, dana/dana.ipynb" in f for f in dana["feedback"])
    zoe = df[df["student"] == ZOE_NFC]  # one id, NFC, for both spellings
    assert len(set(zoe["file"])) == 2 and set(zoe["status"]) == {"refused"}
    assert all("(NFD)" in f for f in zoe["feedback"])
    assert ZOE_NFD not in set(df["student"])


def test_a_formula_in_a_file_name_is_escaped_in_the_csv(hostile):
    rows = list(csv.DictReader(open(hostile["out"], encoding="utf-8")))
    formula = [r for r in rows if FORMULA in r["student"]]
    assert len(formula) == 2 and all(r["student"] == "'" + FORMULA for r in formula)
    assert all(r["file"] == "'" + FORMULA + ".pdf" for r in formula)
    assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for v in r.values())
