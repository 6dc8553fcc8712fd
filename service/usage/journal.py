"""The ingest journal: acknowledged events on local disk until ClickHouse holds them.

With the embedded engine, every INSERT into `usage_events` also writes a part
into each rollup its materialized views feed, and the cost of creating those
parts on disk does not shrink with the rows they hold. So the group-commit
flusher appends each batch to this journal (one `write` and one `fdatasync`
per batch) and answers once it is on disk; a mover then INSERTs everything the
journal holds in one statement, at most once per `INGEST_MOVE_INTERVAL_MS`
under load and at once when idle or when a reader asks for it.

Layout: numbered segment files `NNNNNNNNNNNN.jnl` in one directory per
database. A segment holds records `<u32 length><u32 crc32><msgpack list of
events>`; each flush appends one record. The mover closes the open segment
when it takes what the journal holds, and deletes a closed segment once every
event written to it is in ClickHouse. At start-up, what is left is moved first
(`replay`): a record cut short by a crash was never acknowledged (its
`fdatasync` did not return) and is dropped; events that reached ClickHouse
before the crash are recognised by their keys and not written twice.

`KeyFilter` answers "certainly new" for most idempotency keys without a query:
the embedded engine has one writer, this process, so a Bloom filter built from
`usage_event_keys` at start-up and fed every key written since knows every
stored key. Only keys it might hold are looked up in ClickHouse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from service.storage.clickhouse import ClickHouse
from service.usage.schemas import UsageEvent

log = logging.getLogger("finops.ingest")

_HEADER = struct.Struct("<II")
_SUFFIX = ".jnl"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[UsageEvent])

Key = tuple[str, str]  # (tenant_id, event_id)


def journal_directory(embedded_path: str, database: str) -> Path:
    """Where a database's journal lives by default: beside the engine's data path."""
    base = Path(embedded_path)
    return base.with_name(base.name + "-journal") / database


@dataclass
class _Segment:
    number: int
    unmoved: int = 0
    closed: bool = False


@dataclass
class Journal:
    """Segments of acknowledged events not yet in ClickHouse. Thread-safe."""

    directory: Path
    sync: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _segments: dict[int, _Segment] = field(default_factory=dict)
    _current: _Segment | None = None
    _handle: int | None = None
    _next: int = 1

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self._existing()
        self._next = (existing[-1] + 1) if existing else 1

    def _existing(self) -> list[int]:
        numbers = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            try:
                numbers.append(int(path.stem))
            except ValueError:
                continue
        return sorted(numbers)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"

    def replay(self) -> tuple[list[UsageEvent], list[int]]:
        """What earlier runs left behind, in order, and the segments it came from.
        Call before the first `append`; delete the segments with `forget` once moved."""
        events: list[UsageEvent] = []
        numbers = self._existing()
        for number in numbers:
            events.extend(_read_segment(self._path(number)))
        return events, numbers

    def forget(self, numbers: Iterable[int]) -> None:
        """Delete segments whose events are all in ClickHouse (replayed ones)."""
        for number in numbers:
            self._path(number).unlink(missing_ok=True)
        _sync_directory(self.directory)

    def append(self, events: Sequence[UsageEvent]) -> int:
        """Write one record durably; returns the segment it went to."""
        payload = _encoder.encode(list(events))
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._current is None or self._handle is None:
                self._open_segment()
            assert self._current is not None
            assert self._handle is not None
            try:
                _write_all(self._handle, record)
                if self.sync:
                    os.fdatasync(self._handle)
            except OSError:
                # the record may be partly written: later records would follow garbage
                self._close_segment()
                raise
            self._current.unmoved += len(events)
            return self._current.number

    def seal(self) -> None:
        """Close the open segment: what follows goes to a new one."""
        with self._lock:
            self._close_segment()

    def moved(self, counts: dict[int, int]) -> None:
        """`counts[segment]` events of each segment are now in ClickHouse; closed segments
        with nothing left unmoved are deleted."""
        with self._lock:
            done = []
            for number, count in counts.items():
                segment = self._segments.get(number)
                if segment is None:
                    continue
                segment.unmoved -= count
                if segment.closed and segment.unmoved <= 0:
                    done.append(number)
            for number in done:
                del self._segments[number]
                self._path(number).unlink(missing_ok=True)

    def close(self) -> None:
        """Close the open segment; segments with unmoved events stay for the next start."""
        with self._lock:
            self._close_segment()

    @property
    def segments_on_disk(self) -> int:
        return len(self._existing())

    def _open_segment(self) -> None:
        number = self._next
        self._next += 1
        self._handle = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        _sync_directory(self.directory)
        self._current = _Segment(number)
        self._segments[number] = self._current

    def _close_segment(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
        if self._current is not None:
            self._current.closed = True
            if self._current.unmoved <= 0:
                del self._segments[self._current.number]
                self._path(self._current.number).unlink(missing_ok=True)
            self._current = None


def _read_segment(path: Path) -> list[UsageEvent]:
    data = path.read_bytes()
    events: list[UsageEvent] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            log.warning("ingest journal %s: dropping a record cut short at byte %d (never acknowledged)", path, offset)
            break
        events.extend(_decoder.decode(payload))
        offset = start + length
    return events


def _write_all(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(handle, view)
        view = view[written:]


def _sync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


# -- key filter ----------------------------------------------------------------------

_BITS_PER_KEY = 14.4  # about 0.1 % false positives with 10 hash functions
_HASHES = 10
_MIN_CAPACITY = 1 << 20


def key_hash(tenant_id: str, event_id: str) -> int:
    """`halfMD5(concat(tenant_id, '\\0', event_id))` as ClickHouse computes it."""
    digest = hashlib.md5(f"{tenant_id}\x00{event_id}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


_KEY_HASH_SQL = "halfMD5(concat(tenant_id, '\\0', event_id))"


class _Bloom:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.bits = int(capacity * _BITS_PER_KEY) | 1
        self.array: npt.NDArray[np.uint8] = np.zeros((self.bits + 7) // 8, dtype=np.uint8)
        self._steps = np.arange(_HASHES, dtype=np.uint64)

    def _positions(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        low = hashes & np.uint64(0xFFFFFFFF)
        high = (hashes >> np.uint64(32)) | np.uint64(1)
        return (low[:, None] + self._steps[None, :] * high[:, None]) % np.uint64(self.bits)

    def add(self, hashes: npt.NDArray[np.uint64]) -> None:
        positions = self._positions(hashes).ravel()
        masks = np.left_shift(1, positions & np.uint64(7)).astype(np.uint8)
        np.bitwise_or.at(self.array, positions >> np.uint64(3), masks)
        self.count += len(hashes)

    def maybe(self, hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        positions = self._positions(hashes)
        bytes_ = self.array[positions >> np.uint64(3)]
        present = (bytes_ >> (positions & np.uint64(7)).astype(np.uint8)) & 1
        result: npt.NDArray[np.bool_] = present.all(axis=1)
        return result


class KeyFilter:
    """Which (tenant_id, event_id) keys are certainly not stored. Grows by adding
    filters as keys arrive (each sized for twice what the last held). Thread-safe."""

    def __init__(self, expected: int = 0) -> None:
        self._filters = [_Bloom(max(_MIN_CAPACITY, 2 * expected))]
        self._lock = threading.Lock()

    @classmethod
    def from_database(cls, db: ClickHouse) -> KeyFilter:
        """Every key in `usage_event_keys` (their TTL keeps at least 35 days)."""
        with db.client() as client:
            hashes = client.query_np(f"SELECT {_KEY_HASH_SQL} FROM usage_event_keys")
        column = np.ascontiguousarray(hashes[:, 0], dtype=np.uint64) if len(hashes) else np.zeros(0, np.uint64)
        keys = cls(expected=len(column))
        keys._add_hashes(column)
        return keys

    @property
    def count(self) -> int:
        return sum(bloom.count for bloom in self._filters)

    def add(self, keys: Sequence[Key]) -> None:
        self._add_hashes(np.array([key_hash(tenant, event_id) for tenant, event_id in keys], dtype=np.uint64))

    def _add_hashes(self, hashes: npt.NDArray[np.uint64]) -> None:
        with self._lock:
            offset = 0
            while offset < len(hashes):
                bloom = self._filters[-1]
                room = bloom.capacity - bloom.count
                if room <= 0:
                    bloom = _Bloom(2 * bloom.capacity)
                    self._filters.append(bloom)
                    room = bloom.capacity
                chunk = hashes[offset : offset + room]
                bloom.add(chunk)
                offset += len(chunk)

    def maybe_stored(self, keys: Sequence[Key]) -> list[Key]:
        """The keys that may be stored; every other key certainly is not."""
        if not keys:
            return []
        hashes = np.array([key_hash(tenant, event_id) for tenant, event_id in keys], dtype=np.uint64)
        with self._lock:
            hits = np.zeros(len(keys), dtype=bool)
            for bloom in self._filters:
                hits |= bloom.maybe(hashes)
        return [key for key, hit in zip(keys, hits.tolist(), strict=True) if hit]
