"""Results that are never lost: an append-only SQLite store (WAL) of measurement records.

Every record is committed the moment it is measured, so a sweep killed half-way keeps all it
finished. Each row keeps the record's full JSON plus the columns a query needs (its key,
status, preset, workload). ``results()`` flattens the records into a pandas DataFrame with
dotted column names (``latency_ms.median``, ``memory.by_category.activations`` ...).

Where it lives (:func:`default_results_dir`): ``EFFLAB_RESULTS`` when set; else ``results/`` of
the checkout when efflab runs from a writable checkout; else the user's data folder (XDG, via
platformdirs) — never inside site-packages, and each user of a shared JupyterHub has their own.

A store that is corrupt, read-only or written by a newer efflab gives one :class:`StoreError`
naming the file; nothing is overwritten or silently recreated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pandas as pd
import platformdirs

from efflab.core.records import SCHEMA
from efflab.core.records import records_frame as to_frame

STORE_SCHEMA = 1
CHECKOUT = Path(__file__).resolve().parents[2]
REUSABLE = ("ok", "refused", "oom")  # an "error" is always measured again


class StoreError(RuntimeError):
    """The results store cannot be used: the message names the file and the problem."""


def _writable_checkout(root: Path) -> bool:
    return ((root / "pyproject.toml").is_file() and (root / "efflab").is_dir()
            and "site-packages" not in root.parts and os.access(root, os.W_OK))


def default_results_dir() -> Path:
    """``EFFLAB_RESULTS``, else the checkout's ``results/`` (a writable source checkout), else
    the user's data folder (``~/.local/share/efflab/results`` on Linux)."""
    env = os.environ.get("EFFLAB_RESULTS")
    if env:
        return Path(env)
    if _writable_checkout(CHECKOUT):
        return CHECKOUT / "results"
    return Path(platformdirs.user_data_dir("efflab")) / "results"


def config_key(preset: str, knobs: dict, extra: dict | None = None) -> str:
    """A stable id of what was measured: the same configuration in the same context (see
    ``efflab.measurement.context``) always gets the same key, and any change to either a new one."""
    payload = json.dumps({"schema": SCHEMA, "preset": preset, "knobs": knobs, **(extra or {})},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Store:
    """``Store(path)``: append records, ask whether a key is held, read them back."""

    def __init__(self, path: str | os.PathLike | None = None):
        path = Path(path) if path is not None else default_results_dir() / "efflab.sqlite"
        if path.suffix == "" or path.is_dir():
            path = path / "efflab.sqlite"
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"results store {str(path)!r}: cannot create its folder ({e.strerror}); "
                             "set EFFLAB_RESULTS to a writable folder") from None
        if path.exists() and not os.access(path, os.W_OK):
            raise StoreError(f"results store {str(path)!r} is read-only; set EFFLAB_RESULTS to a "
                             "writable folder or copy the file")
        with self._guard("open"), self._connect() as db:
            found = self._schema_of(db)
            if found is not None and found > STORE_SCHEMA:
                raise StoreError(f"results store {str(path)!r} was written by a newer efflab (store "
                                 f"schema {found}; this efflab reads {STORE_SCHEMA}); upgrade efflab "
                                 "or use another store")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("""CREATE TABLE IF NOT EXISTS records (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                key TEXT NOT NULL,
                sweep TEXT,
                status TEXT NOT NULL,
                preset TEXT,
                workload TEXT,
                created TEXT,
                record TEXT NOT NULL)""")
            db.execute("CREATE INDEX IF NOT EXISTS records_key ON records(key)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('store_schema', ?)", (str(STORE_SCHEMA),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _guard(self, doing: str):
        """sqlite's bare errors ("file is not a database") become a StoreError naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            text = str(e)
            if "readonly" in text or "read-only" in text:
                why = "is read-only; set EFFLAB_RESULTS to a writable folder"
            elif "not a database" in text or "malformed" in text:
                why = ("is not a readable efflab store (corrupt or another kind of file); move it "
                       "aside — efflab never overwrites it")
            else:
                why = f"could not {doing}: {text}"
            raise StoreError(f"results store {str(self.path)!r} {why}") from None

    @staticmethod
    def _schema_of(db: sqlite3.Connection) -> int | None:
        has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE name='store_schema'").fetchone()
        return int(row[0]) if row else None

    def append(self, record: dict, key: str | None = None, sweep: str | None = None, *,
               unless_held: bool = False) -> int:
        """Commit one record now; returns its row id.

        ``unless_held=True`` (what a resuming sweep uses): when a reusable record under ``key``
        is already stored — another sweep or panel measured the same configuration while this
        one did — store nothing and return that record's id. The check and the write are one
        transaction, so writers racing on one configuration leave exactly one record.
        """
        key = key or record.get("key") or config_key(record["preset"], record["knobs"],
                                                     record.get("context"))
        record = {k: v for k, v in record.items() if k != "reused"}  # said to callers, not stored
        record["key"] = key
        with self._guard("write"), self._connect() as db:
            if unless_held:
                db.execute("BEGIN IMMEDIATE")  # the write lock first: no writer between check and insert
                marks = ", ".join("?" for _ in REUSABLE)
                held = db.execute(f"SELECT id FROM records WHERE key = ? AND status IN ({marks}) "
                                  "ORDER BY id DESC LIMIT 1", (key, *REUSABLE)).fetchone()
                if held is not None:
                    return int(held[0])
            cur = db.execute(
                "INSERT INTO records (key, sweep, status, preset, workload, created, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, sweep, record["status"], record.get("preset"), record.get("workload"),
                 record.get("created"), json.dumps(record, default=str)))
            return int(cur.lastrowid)

    def has(self, key: str) -> bool:
        with self._guard("read"), self._connect() as db:
            return db.execute("SELECT 1 FROM records WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def get(self, key: str) -> dict | None:
        """The latest record stored under ``key``."""
        with self._guard("read"), self._connect() as db:
            row = db.execute("SELECT record FROM records WHERE key = ? ORDER BY id DESC LIMIT 1",
                             (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def reusable(self, key: str) -> dict | None:
        """The latest record under ``key`` that may stand in for measuring again: "ok", and
        "refused" / "oom" (the key covers the budget and the machine); never an "error"."""
        marks = ", ".join("?" for _ in REUSABLE)
        with self._guard("read"), self._connect() as db:
            row = db.execute(f"SELECT record FROM records WHERE key = ? AND status IN ({marks}) "
                             "ORDER BY id DESC LIMIT 1", (key, *REUSABLE)).fetchone()
        return json.loads(row[0]) if row else None

    def records(self, sweep: str | None = None, keys: list[str] | None = None) -> list[dict]:
        q, args = "SELECT record FROM records", []
        if sweep is not None:
            q, args = q + " WHERE sweep = ?", [sweep]
        with self._guard("read"), self._connect() as db:
            rows = [json.loads(r[0]) for r in db.execute(q + " ORDER BY id", args)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r.get("key") in wanted]
        return rows

    def count(self) -> int:
        with self._guard("read"), self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def dataframe(self, sweep: str | None = None, keys: list[str] | None = None) -> pd.DataFrame:
        return to_frame(self.records(sweep, keys))

    def append_curves(self, run: str, rows: list[dict]) -> int:
        """Keep the training-curve rows of one :func:`efflab.measurement.training.train_curves` call under
        ``run`` in the ``curves`` table (what a submission carries and ``efflab class-results``
        compares across machines). Only the columns of :data:`CURVE_COLUMNS` are kept; a missing
        one is stored as NULL. Returns the number of rows written, in one transaction."""
        cols = ", ".join(CURVE_COLUMNS)
        marks = ", ".join("?" for _ in CURVE_COLUMNS)
        with self._guard("write"), self._connect() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS curves (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                       f"run TEXT NOT NULL, {cols}, created TEXT NOT NULL)")
            created = time.strftime("%Y-%m-%dT%H:%M:%S")
            db.executemany(f"INSERT INTO curves (run, {cols}, created) VALUES (?, {marks}, ?)",
                           [(run, *(_scalar(r.get(c)) for c in CURVE_COLUMNS), created)
                            for r in rows])
        return len(rows)

    def curves(self) -> pd.DataFrame:
        """Every stored training-curve row (run, variant, status, step, tokens, flops, seconds,
        train_loss, val_loss, created), oldest first; empty when none were kept."""
        with self._guard("read"), self._connect() as db:
            has = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='curves'")
            if has.fetchone() is None:
                return pd.DataFrame(columns=["run", *CURVE_COLUMNS, "created"])
            return pd.read_sql_query("SELECT * FROM curves ORDER BY id", db).drop(columns="id")


CURVE_COLUMNS = ("variant", "status", "step", "tokens", "flops", "seconds", "train_loss",
                 "val_loss")
"""The columns of a training-curve row that a store keeps (lists, such as an MoE layer's
expert load, stay in the notebook's table)."""


def _scalar(value):
    """A value sqlite can hold: numbers and text as they are, NaN and None as NULL."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def results(path: str | os.PathLike | None = None, sweep: str | None = None) -> pd.DataFrame:
    """Every record in the store at ``path`` (default: :func:`default_results_dir`) as a DataFrame."""
    return Store(path).dataframe(sweep)
