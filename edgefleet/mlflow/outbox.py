"""The registry's outbox: rounds waiting to be published, one folder each, on local disk.

An outbox belongs to one registry (:func:`outbox_for`: a folder per tracking store, registry
store and model name), so a round waiting for one server is never published to another that
shares the cache. An entry is a round's record and adapter, keyed by its exact identity
(:class:`RoundKey`: run, round), which the entry stores; folder names only order entries (oldest
first) and are never parsed. Entries are independent: one that keeps failing is moved to the quarantine folder beside
the outbox, with its error, after ``max_attempts`` failures, and the rest go on. A failure because
the server is unreachable is not counted (the caller does not report it): the entry just waits.

Pure file handling: no MLflow here (:mod:`registry` publishes what it finds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

RECORD, STATE, ADAPTER = "record.json", "entry.json", "adapter"
COUNT_EVERY_S = 60.0  # failed attempts closer together than this count once


@dataclass(frozen=True, order=True)
class RoundKey:
    """A round's identity in the registry: the federated run's name and the round number."""

    run: str
    round: int


@dataclass(frozen=True)
class EntryState:
    """What an entry stores beside its record: whose it is, and how publishing it has failed so far."""

    run: str
    round: int
    attempts: int = 0
    last_error: str = ""
    last_counted: float = 0.0  # unix s of the last attempt counted toward quarantine

    @property
    def key(self) -> RoundKey:
        return RoundKey(self.run, self.round)


@dataclass(frozen=True)
class OutboxEntry:
    folder: Path
    state: EntryState

    @property
    def key(self) -> RoundKey:
        return self.state.key

    @property
    def record_json(self) -> str:
        return (self.folder / RECORD).read_text()

    @property
    def adapter_dir(self) -> Path:
        return self.folder / ADAPTER


def outbox_for(root: str | Path, tracking_uri: str, registry_uri: str, model_name: str) -> Path:
    """The outbox folder under ``root`` of one registry: readable, and unique per destination."""
    destination = json.dumps([tracking_uri, registry_uri, model_name])
    digest = hashlib.sha256(destination.encode()).hexdigest()[:12]
    return Path(root) / f"{_slug(model_name)}-{digest}"


class Outbox:
    def __init__(
        self, folder: str | Path, *, max_attempts: int = 5, destination: str = "", count_every_s: float = COUNT_EVERY_S
    ) -> None:
        """``destination``: whose outbox this is, written beside the entries for whoever looks;
        ``count_every_s``: failed attempts closer together than this count once."""
        self.count_every_s = count_every_s
        self.folder = Path(folder)
        self.quarantine = self.folder.with_name(self.folder.name + "-quarantine")
        self.max_attempts = max_attempts
        self.destination = destination

    def adopt_entries_in(self, old_root: Path) -> int:
        """Move the entries an earlier release left directly in ``old_root`` (one outbox for the
        whole cache) into this one, so they are published, not orphaned by the upgrade; how many."""
        moved = 0
        for record in sorted(Path(old_root).glob(f"*/{RECORD}")):
            entry = record.parent
            if entry.suffix == ".tmp" or entry.parent == self.folder:
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            entry.rename(self.folder / entry.name)
            moved += 1
        return moved

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while entries are published: two publishers of one machine (two federate jobs,
        or one and an ``edgefleet models`` command, which flushes too) never publish the same
        entry at once. An advisory lock, freed by the kernel when its holder dies."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, key: RoundKey, record_json: str, adapter_dir: Path) -> bool:
        """Keep a round until it is published; False if that round is already waiting (a
        coordinator publishing a round again after a restart)."""
        if any(e.key == key for e in self.entries()):
            return False
        # Names sort in publication order: by time first, so rounds of several runs keep their order.
        folder = self.folder / f"{time.time_ns():020d}-{_slug(key.run)}-round-{key.round:05d}"
        tmp = folder.with_name(folder.name + ".tmp")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.destination:
            (self.folder / "destination.txt").write_text(self.destination + "\n")
        shutil.copytree(adapter_dir, tmp / ADAPTER)
        (tmp / RECORD).write_text(record_json)
        _write_state(tmp, EntryState(key.run, key.round))
        tmp.rename(folder)  # an entry appears whole or not at all
        return True

    def entries(self) -> list[OutboxEntry]:
        """Waiting entries, oldest first."""
        return [_read(f) for f in sorted(p.parent for p in self.folder.glob(f"*/{RECORD}")) if f.suffix != ".tmp"]

    def quarantined(self) -> list[OutboxEntry]:
        return [_read(p.parent) for p in sorted(self.quarantine.glob(f"*/{RECORD}"))]

    def requeue(self) -> list[RoundKey]:
        """Quarantined entries back in the outbox with their count reset (once their cause is
        fixed: ``edgefleet models outbox --requeue``); their keys."""
        keys = []
        with self.exclusive():
            waiting = {e.key for e in self.entries()}
            for entry in self.quarantined():
                if entry.key in waiting:  # the round was added again meanwhile: that one goes
                    shutil.rmtree(entry.folder, ignore_errors=True)
                    continue
                state = EntryState(entry.key.run, entry.key.round, last_error=entry.state.last_error)
                _write_state(entry.folder, state)
                entry.folder.rename(self.folder / entry.folder.name)
                keys.append(entry.key)
        return keys

    def done(self, entry: OutboxEntry) -> None:
        shutil.rmtree(entry.folder, ignore_errors=True)  # gone already: another publisher finished it

    def failed(self, entry: OutboxEntry, error: str, *, transient: bool = True, now: float | None = None) -> bool:
        """Count a failed attempt; True if that was the last one and the entry is now quarantined.
        A ``transient`` failure (an outage) counts at most once each ``count_every_s``: every
        ``edgefleet models`` command flushes, and five of them during a short outage of the
        artifact store must not condemn a sound round. Any other failure counts each time."""
        now = time.time() if now is None else now
        if transient and now - entry.state.last_counted < self.count_every_s:
            _write_state(entry.folder, replace(entry.state, last_error=error))
            return False
        state = replace(entry.state, attempts=entry.state.attempts + 1, last_error=error, last_counted=now)
        _write_state(entry.folder, state)
        if state.attempts < self.max_attempts:
            return False
        self.quarantine.mkdir(parents=True, exist_ok=True)
        entry.folder.rename(self.quarantine / entry.folder.name)
        return True


def _read(folder: Path) -> OutboxEntry:
    state_file = folder / STATE
    if state_file.exists():
        return OutboxEntry(folder, EntryState(**json.loads(state_file.read_text())))
    record = json.loads((folder / RECORD).read_text())  # an entry an earlier release wrote: its record says whose
    return OutboxEntry(folder, EntryState(record["run"], int(record["round"])))


def _write_state(folder: Path, state: EntryState) -> None:
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), sort_keys=True))
    tmp.replace(folder / STATE)


def _slug(run: str) -> str:
    """A run name as a readable piece of a folder name (only for people: the key is in the entry)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run)[:48]
