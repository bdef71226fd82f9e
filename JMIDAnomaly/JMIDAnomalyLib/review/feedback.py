"""The readers' marks on review items: agree / label wrong / model wrong, with a comment.

:class:`FeedbackLog` keeps the marks in a SQLite database in WAL mode beside the feedback CSV
(``feedback.csv`` -> ``feedback.sqlite``): each mark is one committed transaction, so a crash
or ``kill -9`` loses no mark that was saved, and several readers (processes or threads) mark
at the same time without losing one. Every mark records its reader. The CSV is the export,
rewritten atomically (temporary file, fsync, rename) after every mark, with all readers' marks;
a CSV from an earlier version (no database yet) is imported on first open.
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import os
import sqlite3
import time
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.review.queue import ReviewItem

VERDICTS = ("agree", "label_wrong", "model_wrong")
FEEDBACK_COLUMNS = [
    "case_id",
    "patient_id",
    "organ",
    "side",
    "class",
    "probability",
    "label",
    "threshold",
    "outcome",
    "verdict",
    "comment",
    "reader",
    "marked_at",
]
_KEY = ("case_id", "organ", "side", "class", "reader")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS marks ("
    + ", ".join(f'"{c}" TEXT NOT NULL' for c in FEEDBACK_COLUMNS)
    + ", PRIMARY KEY ("
    + ", ".join(f'"{c}"' for c in _KEY)
    + "))"
)
_COLUMNS = ", ".join(f'"{c}"' for c in FEEDBACK_COLUMNS)
_INSERT = (
    f"INSERT OR REPLACE INTO marks ({_COLUMNS}) VALUES ({', '.join('?' * len(FEEDBACK_COLUMNS))})"
)


def default_reader() -> str:
    """The reader's name when none is given: the login name of this process."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reader"


class FeedbackLog:
    """One reader's marks, one per item (a new mark of the same item replaces the reader's
    earlier one), in the store shared by all readers.

    Args:
        path: the feedback CSV (the export); the database is the same name with ``.sqlite``.
        reader: who marks (default: the login name).

    Raises:
        InputError: the CSV or the database cannot be read as feedback.
    """

    def __init__(self, path: str | os.PathLike, reader: str = "") -> None:
        self.path = Path(path)
        self.db_path = self.path.with_suffix(".sqlite")
        self.reader = reader or default_reader()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.db_path.exists()
        self._db = self._open()
        if new and self.path.exists():
            self._import_csv()

    def _open(self, seconds: float = 60.0) -> sqlite3.Connection:
        """Connect, in WAL mode, with the table. Switching to WAL takes a lock SQLite does not
        wait for, so readers opening the store at once retry for up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                db = sqlite3.connect(self.db_path, timeout=seconds, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute(_SCHEMA)
                return db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    problem = f"cannot be used as the feedback store ({exc})"
                    raise InputError(self.db_path, problem) from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as exc:
                problem = f"cannot be used as the feedback store ({exc})"
                raise InputError(self.db_path, problem) from None

    def _import_csv(self) -> None:
        try:
            with self.path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(self.path, f"cannot be read as a feedback CSV ({exc})") from None
        needed = set(FEEDBACK_COLUMNS) - {"reader"}
        if rows and needed - set(rows[0]):
            raise InputError(self.path, f"not a feedback CSV: expected {FEEDBACK_COLUMNS}")
        with self._transaction():
            for row in rows:
                row.setdefault("reader", "")
                self._db.execute(_INSERT, [row[c] or "" for c in FEEDBACK_COLUMNS])

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction (BEGIN IMMEDIATE: the write lock, one writer at a time)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def rows(self) -> dict[tuple[str, str, str, str], dict]:
        """This reader's marks by (case_id, organ, side, class)."""
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM marks WHERE reader = ?", [self.reader])
        out = {}
        for values in cursor:
            row = dict(zip(FEEDBACK_COLUMNS, values, strict=True))
            out[(row["case_id"], row["organ"], row["side"], row["class"])] = row
        return out

    def all_rows(self) -> list[dict]:
        """Every reader's marks, in the order they were made."""
        cursor = self._db.execute(f"SELECT {_COLUMNS} FROM marks ORDER BY rowid")
        return [dict(zip(FEEDBACK_COLUMNS, values, strict=True)) for values in cursor]

    def __len__(self) -> int:
        query = "SELECT COUNT(*) FROM marks WHERE reader = ?"
        return self._db.execute(query, [self.reader]).fetchone()[0]

    def get(self, item: ReviewItem) -> dict | None:
        """This reader's mark of ``item``, or None when it has none yet."""
        query = (
            f"SELECT {_COLUMNS} FROM marks WHERE case_id = ? AND organ = ? AND side = ? "
            "AND class = ? AND reader = ?"
        )
        values = self._db.execute(query, [*item.key, self.reader]).fetchone()
        return dict(zip(FEEDBACK_COLUMNS, values, strict=True)) if values else None

    def mark(
        self, item: ReviewItem, verdict: str, comment: str = "", threshold: float = 0.5
    ) -> dict:
        """Record a verdict (one committed transaction), then rewrite the CSV export."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; use {VERDICTS}")
        row = {
            "case_id": item.case_id,
            "patient_id": item.patient_id,
            "organ": item.organ,
            "side": item.side,
            "class": item.cls,
            "probability": f"{item.probability:.5f}",
            "label": str(item.label),
            "threshold": f"{threshold:.5f}",
            "outcome": item.outcome(threshold),
            "verdict": verdict,
            "comment": comment.replace("\r", " ").strip(),
            "reader": self.reader,
            "marked_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with self._transaction():
            self._db.execute(_INSERT, [row[c] for c in FEEDBACK_COLUMNS])
        self.export()
        return row

    def export(self) -> Path:
        """Rewrite the CSV with every reader's marks, atomically, under the write lock (so two
        readers' exports cannot overwrite each other with an older copy)."""
        with self._transaction():
            rows = self.all_rows()
            with atomic_output(self.path) as tmp:
                with tmp.open("w", encoding="utf-8", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=FEEDBACK_COLUMNS)
                    writer.writeheader()
                    writer.writerows(rows)
                    f.flush()
                    os.fsync(f.fileno())
        return self.path

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()
