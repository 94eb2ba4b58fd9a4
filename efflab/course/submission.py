"""One file to hand in: ``efflab submit NOTEBOOK`` -> a zip, and the grader's way of opening it.

A submission (``schema: efflab.submission/1``) is a zip holding::

    manifest.json        schema, student (as typed), notebook, assignment, created, efflab
                         version and commit, machine fingerprint, sha256 of every other file
    <notebook>.ipynb     the notebook as the learner ran it (or executed headless: --execute)
    answers.jsonl        the answer log: every efflab.check call's evidence
    store/records.jsonl  every record of the learner's results store (EFFLAB_RESULTS)
    store/<table>.jsonl  every other table of that store (predictions, ...), row by row
    machine.json         fingerprint, environment (CPU, GPU, threads, torch) and calibrations

Nothing in it is trusted by the grader: the notebook is run again in a sandbox with its check
cells restored, and verdicts are recomputed from the evidence that run logs. The records,
predictions and calibration feed ``efflab class-results`` (how hardware changes the answer).

:func:`open_submission` reads what a student handed in — an efflab zip, a bare notebook, or a
folder holding one — without extracting anything to disk, and says plainly what is wrong with
it (not a notebook, malformed, too large) instead of raising.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from efflab import __version__
from efflab.check.core import ANSWERS_ENV, DEFAULT_ANSWERS
from efflab.core import store
from efflab.core.config import ConfigError
from efflab.course.assignment import assignment_of
from efflab.course.cells import read_notebook
from efflab.course.report import run_notebook
from efflab.measurement import hardware

SCHEMA = "efflab.submission/1"
MAX_ZIP_BYTES = 256 * 2**20      # uncompressed, all members together
MAX_NOTEBOOK_BYTES = 64 * 2**20
MAX_MEMBERS = 2000
MAX_MEMBER_BYTES = MAX_NOTEBOOK_BYTES  # one member, inflated
_CHUNK = 2**20


def _inflate(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes | None:
    """One member, inflated a chunk at a time and never past ``cap`` bytes (None if it would
    be). The headers' sizes are not trusted: zipfile stops at the stated size and checks the
    CRC (a lie raises ``BadZipFile``), and reading in chunks bounds what one call inflates."""
    if info.file_size > cap:
        return None
    parts, total = [], 0
    with z.open(info) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:
                return None
            parts.append(chunk)
    return b"".join(parts)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store_path(results: str | os.PathLike | None) -> Path:
    if results is None:
        results = os.environ.get("EFFLAB_RESULTS") or store.DEFAULT_DIR
    p = Path(results)
    return p if p.suffix == ".sqlite" else p / "efflab.sqlite"


def dump_store(path: Path) -> dict[str, bytes]:
    """Every table of a results store as JSON lines (``store/<table>.jsonl``); records parsed."""
    if not path.is_file():
        return {}
    out: dict[str, bytes] = {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        for table in tables:
            rows = []
            for row in db.execute(f'SELECT * FROM "{table}"'):
                item = dict(row)
                if table == "records":
                    try:
                        item = json.loads(item["record"])
                    except (KeyError, TypeError, ValueError):
                        continue
                rows.append(json.dumps(item, default=str))
            out[f"store/{table}.jsonl"] = ("\n".join(rows) + "\n" if rows else "").encode()
    finally:
        db.close()
    return out


def machine_info(calibrate_if_missing: bool = True) -> dict:
    """Fingerprint, environment and every cached calibration of this machine."""
    fp = hardware.fingerprint()
    cache = Path(getattr(hardware, "CACHE_DIR", Path.home() / ".cache" / "efflab"))
    cals = []
    for f in sorted(cache.glob(f"calibration-*-{fp}.json")):
        try:
            cals.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    if not cals and calibrate_if_missing:
        cals.append(hardware.calibrate(quick=True))
    return {"fingerprint": fp, "env": hardware.environment(), "calibrations": cals}


def submit(notebook: str | os.PathLike, out: str | os.PathLike | None = None,
           student: str | None = None, execute: bool = False,
           results: str | os.PathLike | None = None, answers: str | os.PathLike | None = None,
           calibrate_if_missing: bool = True) -> Path:
    """Write the submission zip for ``notebook``; returns its path.

    ``execute`` runs the notebook headless first (its own parameters) and submits the
    executed copy; otherwise the notebook is submitted as saved. ``results`` is the store
    (default ``$EFFLAB_RESULTS`` or ``results/``), ``answers`` the answer log (default
    ``$EFFLAB_ANSWERS``, else ``efflab_answers.jsonl`` beside the notebook).
    """
    nb_path = Path(notebook)
    if not nb_path.is_file() or nb_path.suffix != ".ipynb":
        raise ConfigError("notebook", str(nb_path), "an existing .ipynb file")
    if student is not None and not re.fullmatch(r"[\w.@-]{1,64}", student):
        raise ConfigError("--student", student, "letters, digits and . _ @ - (at most 64)")
    if execute:
        ran = Path(tempfile.mkdtemp(prefix="efflab-submit-"))
        nb_bytes = run_notebook(nb_path, ran, {}, results_dir=None).read_bytes()
    else:
        nb_bytes = nb_path.read_bytes()
    try:
        nb = read_notebook(nb_bytes)
    except ValueError as e:
        raise ConfigError("notebook", str(nb_path), f"a readable Jupyter notebook ({e})") from None

    if answers is None:
        answers = os.environ.get(ANSWERS_ENV) or nb_path.parent / DEFAULT_ANSWERS
    answers = Path(answers)
    files: dict[str, bytes] = {nb_path.name: nb_bytes,
                               "answers.jsonl": answers.read_bytes() if answers.is_file() else b""}
    files.update(dump_store(_store_path(results)))
    machine = machine_info(calibrate_if_missing)
    files["machine.json"] = json.dumps(machine, indent=1, default=str).encode()

    manifest = {
        "schema": SCHEMA, "student": student, "notebook": nb_path.name,
        "assignment": assignment_of(nb) or nb_path.stem,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "efflab_version": __version__, "efflab_commit": hardware.efflab_commit(),
        "fingerprint": machine["fingerprint"],
        "executed_cells": sum(1 for c in nb.cells if c.cell_type == "code" and c.get("execution_count")),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    out = Path(out) if out else nb_path.parent / f"{student + '-' if student else ''}{nb_path.stem}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        for name, data in sorted(files.items()):
            z.writestr(name, data)
    return out


# ------------------------------------------------------------------------------------------
# Opening what a student handed in
# ------------------------------------------------------------------------------------------

@dataclass
class Submission:
    """What the grader could read from one handed-in file.

    ``problem`` is None when ``notebook`` is usable, else the reason it is not
    ("not a notebook: ...", "malformed submission: ...").
    """

    student: str
    path: Path
    notebook: nbformat.NotebookNode | None = None
    name: str = ""  # the notebook's file name
    manifest: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)  # store table -> rows (records, predictions ...)
    machine: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def records(self) -> list:
        return self.tables.get("records", [])

    @property
    def assignment(self) -> str | None:
        if self.notebook is not None and assignment_of(self.notebook):
            return assignment_of(self.notebook)
        a = self.manifest.get("assignment")
        if isinstance(a, str) and a:
            return a
        return Path(self.name).stem if self.name else None


def _jsonl(data: bytes) -> list:
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _open_zip(sub: Submission, data: bytes) -> Submission:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        sub.problem = f"malformed submission: not a readable zip ({e})"
        return sub
    if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
        sub.problem = (f"malformed submission: over {MAX_MEMBERS} files or "
                       f"{MAX_ZIP_BYTES // 2**20} MiB unpacked")
        return sub
    names = {i.filename: i for i in infos if not i.is_dir()}

    budget = [MAX_ZIP_BYTES]  # what every member read here may inflate to, together

    def read(name: str) -> bytes | None:
        if name not in names:
            return None
        try:
            data = _inflate(z, names[name], min(budget[0], MAX_MEMBER_BYTES))
        except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError) as e:
            sub.problem = sub.problem or f"malformed submission: {name} is damaged ({e})"
            return None
        if data is None:
            sub.problem = sub.problem or (
                f"malformed submission: {name} inflates past its stated size or the "
                f"{min(budget[0], MAX_MEMBER_BYTES) // 2**20} MiB cap; stopped there")
            return None
        budget[0] -= len(data)
        return data

    raw = read("manifest.json")
    if sub.problem:
        return sub
    if raw is not None:
        try:
            m = json.loads(raw)
            sub.manifest = m if isinstance(m, dict) else {}
        except ValueError:
            sub.manifest = {}
    notebooks = sorted(n for n in names if n.endswith(".ipynb") and "/" not in n.strip("/"))
    wanted = sub.manifest.get("notebook")
    name = wanted if isinstance(wanted, str) and wanted in notebooks else (
        notebooks[0] if len(notebooks) == 1 else None)
    if name is None:
        sub.problem = ("malformed submission: no notebook inside" if not notebooks else
                       f"malformed submission: {len(notebooks)} notebooks and no manifest naming one")
        return sub
    sub.name = name
    nb_bytes = read(name)
    if sub.problem:  # damaged, or inflated past the cap
        return sub
    try:
        sub.notebook = read_notebook(nb_bytes or b"")
    except ValueError as e:
        sub.problem = f"malformed notebook {name}: {e}"
        return sub
    for member in sorted(names):
        if member.startswith("store/") and member.endswith(".jsonl") and member.count("/") == 1:
            sub.tables[member[len("store/"):-len(".jsonl")]] = _jsonl(read(member) or b"")
    try:
        machine = json.loads(read("machine.json") or b"{}")
        sub.machine = machine if isinstance(machine, dict) else {}
    except ValueError:
        sub.machine = {}
    if sub.problem:  # a store member or machine.json damaged or inflated past the cap
        sub.notebook = None
    return sub


def open_submission(path: str | os.PathLike, student: str | None = None) -> Submission:
    """Read one handed-in file (zip from ``efflab submit``, or a bare ``.ipynb``); never raises."""
    path = Path(path)
    sub = Submission(student=student or student_id(path.name), path=path)
    try:
        size = path.stat().st_size
        if size > MAX_ZIP_BYTES:
            sub.problem = f"malformed submission: {size // 2**20} MiB, over {MAX_ZIP_BYTES // 2**20} MiB"
            return sub
        data = path.read_bytes()
    except OSError as e:
        sub.problem = f"malformed submission: unreadable ({e.strerror})"
        return sub
    if data[:4] == b"PK\x03\x04":
        return _open_zip(sub, data)
    if path.suffix == ".ipynb":
        sub.name = path.name
        try:
            sub.notebook = read_notebook(data)
        except ValueError as e:
            sub.problem = f"malformed notebook: {e}"
        return sub
    kind = path.suffix or "extension-less"
    try:  # a notebook under another name still counts
        sub.notebook = read_notebook(data)
        sub.name = path.stem + ".ipynb"
        return sub
    except ValueError:
        pass
    sub.problem = f"not a notebook: a {kind} file, neither an .ipynb nor an efflab submission zip"
    return sub


def student_id(name: str) -> str:
    """The student id a file or folder name gives: up to the first dot, NFC-normalised (so
    "zoë" typed on a Mac, NFD, and on Linux, NFC, is one id)."""
    return unicodedata.normalize("NFC", name.split(".")[0])


def discover(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(student, file) for every submission in ``folder``, sorted.

    A file directly in ``folder`` is one student's (the id is its name up to the first dot);
    a sub-folder is one student's (its name), every file in it a submission. Ids are
    NFC-normalised (:func:`student_id`); :func:`ambiguous` finds two entries with one id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError("SUBMISSIONS", str(folder), "a folder of submissions")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for f in sorted(entry.rglob("*")):
                hidden = any(part.startswith(".") for part in f.relative_to(entry).parts)
                if f.is_file() and not hidden:
                    found.append((student_id(entry.name), f))
        elif entry.is_file():
            found.append((student_id(entry.name), entry))
    return found


def _shown(rel: str) -> str:
    """A file name as the refusal shows it: decomposed Unicode is spelled out (``\\u0308``)
    so two names that look the same can be told apart."""
    return rel if unicodedata.is_normalized("NFC", rel) else ascii(rel)[1:-1] + " (NFD)"


def ambiguous(entries: list[tuple[str, Path]], folder: str | os.PathLike) -> dict[Path, str]:
    """{file: reason} for every submission whose id comes from more than one entry of
    ``folder`` (``dana.ipynb`` and ``dana/dana.ipynb``, ``dana.zip`` and ``dana.ipynb``, or
    "zoë" spelled NFC and NFD): each is refused, naming all of them."""
    folder = Path(folder)
    sources: dict[str, dict[str, list[str]]] = {}
    for student, path in entries:
        rel = path.relative_to(folder)
        sources.setdefault(student, {}).setdefault(rel.parts[0], []).append(rel.as_posix())
    out = {}
    for student, by_entry in sources.items():
        if len(by_entry) > 1:
            files = sorted(f for fs in by_entry.values() for f in fs)
            reason = (f"refused: {len(files)} submissions with the student id {student!r} "
                      f"({', '.join(_shown(f) for f in files)}); keep one and grade again")
            for f in files:
                out[folder / f] = reason
    return out
