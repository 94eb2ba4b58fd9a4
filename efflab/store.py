"""Results that are never lost: an append-only SQLite store (WAL) of measurement records.

Every record is committed the moment it is measured, so a sweep killed half-way keeps all it
finished. Each row keeps the record's full JSON plus the columns a query needs (its key,
status, preset, workload). ``results()`` flattens the records into a pandas DataFrame with
dotted column names (``latency_ms.median``, ``memory.by_category.activations`` ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

from efflab.records import SCHEMA
from efflab.records import records_frame as to_frame

# results/ at the top of the checkout, wherever the notebook or command runs from;
# EFFLAB_RESULTS points it elsewhere (tests and reports keep their records apart)
DEFAULT_DIR = Path(os.environ.get("EFFLAB_RESULTS",
                                  Path(__file__).resolve().parent.parent / "results"))
STORE_SCHEMA = 1


def config_key(preset: str, knobs: dict, extra: dict | None = None) -> str:
    """A stable id of what was asked for: the same configuration always gets the same key."""
    payload = json.dumps({"schema": SCHEMA, "preset": preset, "knobs": knobs, **(extra or {})},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class Store:
    """``Store(path)``: append records, ask whether a key is held, read them back."""

    def __init__(self, path: str | os.PathLike | None = None):
        path = Path(path) if path is not None else DEFAULT_DIR / "efflab.sqlite"
        if path.suffix == "" or path.is_dir():
            path = path / "efflab.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as db:
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

    def append(self, record: dict, key: str | None = None, sweep: str | None = None) -> int:
        """Commit one record now; returns its row id."""
        key = key or record.get("key") or config_key(record["preset"], record["knobs"])
        record = {**record, "key": key}
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO records (key, sweep, status, preset, workload, created, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, sweep, record["status"], record.get("preset"), record.get("workload"),
                 record.get("created"), json.dumps(record, default=str)))
            return int(cur.lastrowid)

    def has(self, key: str) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM records WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def get(self, key: str) -> dict | None:
        """The latest record stored under ``key``."""
        with self._connect() as db:
            row = db.execute("SELECT record FROM records WHERE key = ? ORDER BY id DESC LIMIT 1",
                             (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def records(self, sweep: str | None = None, keys: list[str] | None = None) -> list[dict]:
        q, args = "SELECT record FROM records", []
        if sweep is not None:
            q, args = q + " WHERE sweep = ?", [sweep]
        with self._connect() as db:
            rows = [json.loads(r[0]) for r in db.execute(q + " ORDER BY id", args)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r.get("key") in wanted]
        return rows

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def dataframe(self, sweep: str | None = None, keys: list[str] | None = None) -> pd.DataFrame:
        return to_frame(self.records(sweep, keys))


def results(path: str | os.PathLike | None = None, sweep: str | None = None) -> pd.DataFrame:
    """Every record in the store at ``path`` (default ``results/``) as a DataFrame."""
    return Store(path).dataframe(sweep)
