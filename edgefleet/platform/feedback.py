"""Users' feedback on their answers, kept on their own edge node: the input of the learning loop.

Two stores, both on the edge node (in its EdgeNode actor), both bounded:

- :class:`RecentAnswers`, in memory: the prompt and answer of each request the node is home to,
  for ``feedback.keep_answers_s``, at most ``max_answers`` of them and ``max_answer_bytes`` in all,
  so that a rating or a correction that comes later can be joined to what was asked and answered;
- :class:`FeedbackStore`, on disk: SQLite under the node's data directory (``feedback.sqlite``,
  write-ahead log, synchronous FULL: a stored rating survives a crash or a restart), pruned to
  ``retention_days`` and ``max_rows``. Nothing reads it but the node's own training session
  (``edgefleet.train.data.training_samples``), so its text leaves the node only inside a DP
  local update; a canary rollout reads counts of it (:meth:`FeedbackStore.tally`), never text.

No Ray here: the EdgeNode actor owns one of each; tests use them directly.

Example:
    >>> import tempfile, pathlib
    >>> store = FeedbackStore(pathlib.Path(tempfile.mkdtemp()) / "feedback.sqlite")
    >>> answer = Answer("r1", "site-a", "What is 2+2?", "5", "v1", at=0.0)
    >>> store.add(answer, Rating(good=False, correction="4"), now=1.0)
    >>> store.examples()
    [('What is 2+2?', '4')]
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

FEEDBACK_FILE = "feedback.sqlite"
# One exchange bigger than this is not kept for feedback: a training example is a few hundred
# tokens, and max_rows of these bound the store on disk.
MAX_EXCHANGE_BYTES = 256 << 10


@dataclass(frozen=True)
class Answer:
    """A served answer, as its home node keeps it for feedback."""

    request_id: str
    site: str
    question: str  # the conversation's last user turn: what a training example asks
    text: str
    model_version: str
    at: float  # time.time() when it was served
    caller: str = "anonymous"  # the asker's token digest: only they may rate it (security.digest)

    @property
    def size(self) -> int:
        return sum(len(s.encode()) for s in (self.question, self.text, self.request_id, self.site, self.caller))


@dataclass(frozen=True)
class Rating:
    """What a user said of an answer: good or bad, and optionally the answer it should have been."""

    good: bool
    correction: str = ""


@dataclass(frozen=True)
class Tally:
    """How many ratings were good and bad (e.g. of one model version's answers, since a time)."""

    good: int = 0
    bad: int = 0

    @property
    def total(self) -> int:
        return self.good + self.bad

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.good + other.good, self.bad + other.bad)


class RecentAnswers:
    """Answers awaiting feedback: oldest out first, by age, count and bytes. Thread-safe."""

    def __init__(self, keep_s: float, max_answers: int, max_bytes: int) -> None:
        self.keep_s, self.max_answers, self.max_bytes = keep_s, max_answers, max_bytes
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, answer: Answer) -> None:
        if answer.size > min(self.max_bytes, MAX_EXCHANGE_BYTES):
            return  # too big to learn from whole, or bigger than the whole budget: not kept
        with self._lock:
            old = self._answers.get(answer.request_id)
            if old is not None and old.caller != answer.caller:
                return  # another caller's id: theirs stays theirs (a reused id must not hijack its feedback)
            old = self._answers.pop(answer.request_id, None)
            if old is not None:
                self._bytes -= old.size
            self._answers[answer.request_id] = answer
            self._bytes += answer.size
            self._evict(answer.at)

    def get(self, request_id: str, now: float, caller: str = "anonymous") -> Answer | None:
        """The answer ``request_id``, if ``caller`` asked for it and it has not expired."""
        with self._lock:
            self._evict(now)
            answer = self._answers.get(request_id)
        if answer is None or answer.caller != caller or now - answer.at > self.keep_s:
            return None
        return answer

    def __len__(self) -> int:
        return len(self._answers)

    def _evict(self, now: float) -> None:
        while self._answers:
            oldest = next(iter(self._answers.values()))
            too_old = now - oldest.at > self.keep_s
            if not (too_old or len(self._answers) > self.max_answers or self._bytes > self.max_bytes):
                return
            self._answers.popitem(last=False)
            self._bytes -= oldest.size


class FeedbackStore:
    """Ratings and corrections joined to their answers, in SQLite on the node's disk.

    A rating is keyed by its caller and request id: a caller may change their mind (the newer
    rating replaces theirs), but an id another caller reuses never touches it."""

    def __init__(self, path: Path, *, retention_days: float = 30.0, max_rows: int = 100_000) -> None:
        self.path, self.retention_s, self.max_rows = Path(path), retention_days * 86_400, max_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS ratings ("
                " caller TEXT NOT NULL, request_id TEXT NOT NULL, at REAL NOT NULL, site TEXT NOT NULL,"
                " question TEXT NOT NULL, answer TEXT NOT NULL, good INTEGER NOT NULL, correction TEXT NOT NULL,"
                " model_version TEXT NOT NULL, PRIMARY KEY (caller, request_id))"
            )
            db.execute("CREATE INDEX IF NOT EXISTS ratings_at ON ratings(at)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; `with` = a transaction
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # fsync on every commit: a stored rating survives a crash
        return db

    def add(self, answer: Answer, rating: Rating, *, now: float | None = None) -> None:
        """Store (or replace: a user may change their mind) the rating of ``answer``, then prune."""
        now = time.time() if now is None else now
        db = self._connect()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        answer.caller,
                        answer.request_id,
                        now,
                        answer.site,
                        answer.question,
                        answer.text,
                        int(rating.good),
                        rating.correction,
                        answer.model_version,
                    ),
                )
                db.execute("DELETE FROM ratings WHERE at < ?", (now - self.retention_s,))
                db.execute(
                    "DELETE FROM ratings WHERE rowid NOT IN (SELECT rowid FROM ratings ORDER BY at DESC LIMIT ?)",
                    (self.max_rows,),
                )
                db.execute("COMMIT")
        finally:
            db.close()

    def counts(self) -> tuple[int, int]:
        """(good, bad) ratings kept."""
        db = self._connect()
        try:
            good, total = db.execute("SELECT COALESCE(SUM(good), 0), COUNT(*) FROM ratings").fetchone()
        finally:
            db.close()
        return int(good), int(total) - int(good)

    def tally(self, since: float) -> dict[str, Tally]:
        """Ratings given since ``since`` (time.time()), by the model version that served the answer:
        a canary rollout compares the new version's share of good ratings with the old one's."""
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT model_version, COALESCE(SUM(good), 0), COUNT(*) FROM ratings WHERE at >= ?"
                " GROUP BY model_version",
                (since,),
            ).fetchall()
        finally:
            db.close()
        return {version: Tally(int(good), int(count) - int(good)) for version, good, count in rows}

    def examples(self, *, now: float | None = None) -> list[tuple[str, str]]:
        """(question, answer) pairs to learn from: answers rated good, and the corrections users gave
        (a bad rating without one teaches nothing here: there is no answer to learn). Rows past
        their retention are never returned, even before a write prunes them."""
        now = time.time() if now is None else now
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT question, answer, good, correction FROM ratings WHERE at >= ? ORDER BY at",
                (now - self.retention_s,),
            ).fetchall()
        finally:
            db.close()
        out = []
        for question, answer, good, correction in rows:
            if correction:
                out.append((question, correction))
            elif good:
                out.append((question, answer))
        return out
