"""The durable offer log: every quote and every outcome, appended as JSON lines.

`quotes.jsonl` holds one line per quoted (quote, item): the offer as made. `outcomes.jsonl` holds
one line per reported outcome: the full offer row plus `purchased`. `export_offers` joins them into
the contract's `offers` table, the training signal of the next run.

Writers. Each process writes its own pair of files: an `OfferLog` claims the lowest free writer
slot of its directory (an exclusive `flock` on `.writer-<n>.lock`, released by the kernel when the
process dies, even by kill -9) and writes `quotes.jsonl`/`outcomes.jsonl` for slot 0, or
`quotes.<n>.jsonl`/`outcomes.<n>.jsonl` for slot n. One process, one slot: the file names of a
single scorer are what they always were; replicas (uvicorn workers, pods on a shared volume) never
interleave in one file. Readers merge every writer's files.

Writing. Appends are acknowledged only once every byte is handed to the operating system (they
survive a crash or kill -9 of the scorer); the `fsync` mode decides whether the disk flush happens
before the acknowledgement or within a short interval after it (see `_Appender`). Quotes from the
event loop are group-committed: every append that arrives while the loop is busy is written with
one `os.write`, and each caller is answered only after that write returned (`append_quotes_async`),
so batching changes the number of system calls, not what an acknowledgement means. A failed write
(a full disk, a file size limit, an I/O error) is cut back to the start of its batch and raised as
`OfferLogError` to every caller in it, never acknowledged: the file holds only whole lines, and the
next append starts on a fresh line. `OfferLog.last_error` says what failed until an append succeeds
again.

Reading. One tolerant reader (`parse_row`, `read_log`) serves the export, the monitor flow and the
outcome lookup: bytes in, every line parsed on its own, only JSON objects with the required fields
kept, the rest counted as skipped. A log is written by a process that can die mid-line, on disks
that can fill up or rot, so one bad line must cost one line, never the whole read.

Lookup. `find_quote` answers from in-memory indexes of quote id -> byte spans, one per quotes file:
this process's own (filled as lines are appended) and the other writers' (filled by reading only
the bytes past what is indexed, when a lookup misses). So an outcome for a quote another replica
made is found in that replica's file, from the durable record the quote was acknowledged on, with
no extra work on the quote path. An unknown id costs dict misses, a directory listing and an
`fstat` per file, not a scan of the log.

Outcomes. The first outcome reported for an offer (a quote and an item) is the one that counts; a
label is never flipped. `append_outcome_once` takes a directory-wide lock (an exclusive `flock` on
`.outcomes.lock`, so every writer process on the directory waits its turn), brings an index of
every writer's outcomes file up to date (offer id -> where its first outcome is, reading only the
bytes past what is indexed) and then either writes the outcome (the offer had none), writes nothing
(the same label is already recorded: a retried report) or raises `OutcomeConflict` (a different
label is recorded). The export applies the same rule to whatever the files hold (logs written
before this check, or by writers the lock did not reach, such as hosts that share a volume without
shared locks): the first outcome per offer by `outcome_ts` wins; equal or missing timestamps go by
writer slot, then by line order. The index answers the same way when the files disagree.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from pricing import schema as S
from scorer.logs import RateLimitedLog

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)  # write and fsync failures: a line per kind every few seconds

QUOTES_FILE = "quotes.jsonl"
OUTCOMES_FILE = "outcomes.jsonl"
QUOTE_ID = "quote_id"
PREDICTED = "purchase_probability"  # the model's probability at quote time (live calibration)
OUTCOME_TS = "outcome_ts"  # when the outcome was reported (orders reports across writers)
OUTCOMES_LOCK = ".outcomes.lock"  # held while an outcome is checked and written (every writer)

_LINE_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE  # one JSON line per row


class OfferLogError(RuntimeError):
    """The offer log could not take (or give back) a record; nothing was acknowledged.

    The scorer answers 503 with `reason` and a Retry-After: the caller may retry once the operator
    has freed space (or the disk recovered).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutcomeConflict(Exception):
    """An outcome whose label contradicts the one already recorded for the offer (nothing written).

    The scorer answers 409: the first outcome of an offer stands.
    """

    def __init__(self, offer_id: str, recorded: int, reported: int) -> None:
        super().__init__(
            f"offer {offer_id} already has an outcome (purchased={bool(recorded)}); a report of "
            f"purchased={bool(reported)} is refused: the first outcome stands"
        )
        self.offer_id = offer_id
        self.recorded = recorded
        self.reported = reported


# --- the tolerant reader ---------------------------------------------------------------------------

# The log's timestamps must fit pandas' nanosecond range (export) and be plausible.
_TS_MIN = datetime(1970, 1, 1, tzinfo=UTC)
_TS_MAX = datetime(2262, 1, 1, tzinfo=UTC)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _optional_number(v: Any) -> bool:
    return v is None or _number(v)


def _label(v: Any) -> bool:
    return v is True or v is False or (type(v) is int and v in (0, 1))


def _timestamp(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        ts = datetime.fromisoformat(v)
    except ValueError:
        return False
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return _TS_MIN <= ts < _TS_MAX


Check = Callable[[Any], bool]

# What a row needs to be usable: a quote row to answer an outcome, an outcome row to train on.
_OFFER_FIELDS: dict[str, Check] = {
    S.OFFER_ID: _text,
    S.TS: _timestamp,
    S.USER_ID: _text,
    S.ITEM_ID: _text,
    S.PRICE: _number,
    S.PROPENSITY: _optional_number,
    S.POLICY: _text,
}
QUOTE_FIELDS: Mapping[str, Check] = {**_OFFER_FIELDS, QUOTE_ID: _text}
OUTCOME_FIELDS: Mapping[str, Check] = {**_OFFER_FIELDS, S.PURCHASED: _label}
_FIELDS_OF = {QUOTES_FILE: QUOTE_FIELDS, OUTCOMES_FILE: OUTCOME_FIELDS}


def parse_row(line: bytes, fields: Mapping[str, Check]) -> dict[str, Any] | None:
    """One log line as a row, or None when it is not a JSON object with valid `fields`.

    Never raises: invalid UTF-8, a torn line, a non-object value, a missing field or a wrong type
    all give None.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    for name, check in fields.items():
        if name not in obj or not check(obj[name]):
            return None
    return obj


def _lines(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a file, as bytes (no decoding: a bad byte spoils only its line)."""
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


@dataclass
class LogRows:
    """What `read_log` kept (column-wise, so a large log is not a list of dicts) and skipped."""

    columns: dict[str, list[Any]]
    kept: int = 0
    skipped: int = 0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


def read_log(
    path: Path, fields: Mapping[str, Check], extra: Sequence[str] = (), what: str = ""
) -> LogRows:
    """The valid rows of one log file, projected onto `fields` and `extra` (missing extras: None).

    A line that `parse_row` rejects is counted in `skipped` (and logged once per read), not raised:
    the export, the monitor flow and the outcome lookup all read the log this way.
    """
    names = [*fields, *(c for c in extra if c not in fields)]
    out = LogRows({c: [] for c in names})
    if not path.exists():
        return out
    cols = [out.columns[c] for c in names]
    for line in _lines(path):
        row = parse_row(line, fields)
        if row is None:
            out.skipped += 1
            continue
        out.kept += 1
        for name, col in zip(names, cols, strict=True):
            col.append(row.get(name))
    if out.skipped:
        log.warning(
            "offer log %s%s: skipped %d unreadable or incomplete lines (kept %d)",
            path,
            f" ({what})" if what else "",
            out.skipped,
            out.kept,
        )
    return out


# --- writing ---------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> int:
    """Write every byte of `data` (os.write may write less than asked); returns the count.

    Raises OSError with `.written` set to the bytes already written when a write fails.
    """
    view = memoryview(data)
    written = 0
    while written < len(data):
        try:
            n = os.write(fd, view[written:])
        except OSError as exc:
            exc.written = written  # type: ignore[attr-defined]
            raise
        if n <= 0:  # not expected from a regular file; never spin
            stalled = OSError(errno.EIO, "write returned no progress")
            stalled.written = written  # type: ignore[attr-defined]
            raise stalled
        written += n
    return written


WrittenAt = Callable[[int], None]


@dataclass
class _Pending:
    """One async append waiting for the next batched write."""

    data: bytes
    written_at: WrittenAt | None
    future: asyncio.Future[int]


class _Appender:
    """One append-only file.

    Every append reaches the operating system in full (a loop over `os.write` on an O_APPEND
    descriptor) before it is acknowledged, so it survives a crash or `kill -9` of the process. What
    it takes to survive a crash of the machine is the `fsync` mode:
    - "always": fsync before acknowledging (group commit: concurrent appenders share one fsync);
    - "interval": a background thread fsyncs every `interval_s`, bounding what a power loss can
      take to that window, and keeping the disk flush off the quote path.

    `append` writes one record from any thread. `append_async` group-commits on the event loop:
    records that arrive before the loop gets round to writing go out in one `os.write`, and every
    caller of that batch is answered after it returned. A failed write is truncated back to where
    it started (or, when that fails or another process wrote behind it, the next append starts
    with a newline), so a broken record never glues onto the next one; every caller of a failed
    batch gets the error.
    """

    def __init__(
        self,
        path: Path,
        fsync: str = "interval",
        interval_s: float = 0.05,
        on_truncate: Callable[[int], None] | None = None,
    ) -> None:
        if fsync not in ("always", "interval"):
            raise ValueError(f"fsync must be 'always' or 'interval', got {fsync!r}")
        self.path = path
        self.fsync = fsync
        self.last_error: str | None = None
        self._on_truncate = on_truncate
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A torn last line from an earlier crash must not swallow the first line we write.
        self._needs_newline = _ends_mid_line(path)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # writes (batches) so far; fsync progress is counted in these
        self._synced = 0
        self._pending: list[_Pending] = []  # async appends waiting for the next batch (loop only)
        self._flush_scheduled = False
        self.batches = 0  # batched writes done by `append_async` (for tests and /metrics)
        self.batched_records = 0
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_loop, args=(interval_s,), name=f"fsync-{path.name}", daemon=True
            )
            self._syncer.start()

    def _write(self, parts: Sequence[bytes]) -> tuple[int, int | None]:
        """Write `parts` as one record batch (caller holds `_write_lock`).

        Returns (this write's sequence number, file offset of the first part or None when another
        process appended in between and the offset is not known).

        Raises:
            OfferLogError: nothing of the batch is acknowledged; the file was cut back.
        """
        if self._closed.is_set():
            raise OfferLogError(f"offer log {self.path.name} is closed")
        prefix = b"\n" if self._needs_newline else b""
        payload = b"".join((prefix, *parts)) if prefix or len(parts) > 1 else parts[0]
        start: int | None = None
        try:
            start = os.lseek(self._fd, 0, os.SEEK_END)
            _write_all(self._fd, payload)
        except OSError as exc:
            self._recover(start, exc)
            raise OfferLogError(self.last_error or str(exc)) from exc
        try:
            end = os.lseek(self._fd, 0, os.SEEK_CUR)
        except OSError:
            end = -1  # written in full; only the direct indexing is skipped
        self._needs_newline = False
        self.last_error = None
        self._written += 1
        # With O_APPEND, the write landed at [end - len, end); `start` is exact unless another
        # process appended in between, and then the caller's index catches up by reading.
        exact = start is not None and end - len(payload) == start
        return self._written, (start + len(prefix) if exact and start is not None else None)

    def append(self, data: bytes, written_at: WrittenAt | None = None) -> None:
        """Append whole lines; `written_at(offset of the first line)` runs under the write lock.

        Raises:
            OfferLogError: the write (or, in "always" mode, the fsync) failed; the file was cut
                back to whole lines and nothing of this call is acknowledged.
        """
        if not data:
            return
        with self._write_lock:
            mine, offset = self._write((data,))
            if written_at is not None and offset is not None:
                written_at(offset)
        if self.fsync == "always":
            self._sync_or_raise(mine)

    async def append_async(self, data: bytes, written_at: WrittenAt | None = None) -> None:
        """`append`, group-committed with the other appends of this event loop.

        Returns once the batch holding `data` is with the operating system (and, in "always"
        mode, on disk). Call from the loop's thread only.

        Raises:
            OfferLogError: the batch's write (or fsync) failed; nothing of it is acknowledged.
        """
        if not data:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append(_Pending(data, written_at, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        mine = await future
        if self.fsync == "always":
            await loop.run_in_executor(None, self._sync_or_raise, mine)

    def _flush(self) -> None:
        """Write every pending async append in one batch and answer their callers.

        Runs as a loop callback: it must answer every caller whatever happens, or they wait
        forever, so any failure becomes an error for the whole batch.
        """
        batch, self._pending, self._flush_scheduled = self._pending, [], False
        if not batch:
            return
        try:
            with self._write_lock:
                mine, offset = self._write([p.data for p in batch])
                if offset is not None:
                    for p in batch:
                        if p.written_at is not None:
                            try:
                                p.written_at(offset)
                            except Exception:  # noqa: BLE001 - the lines are written; only indexing failed
                                log.exception("offer log %s: indexing a batch failed", self.path)
                        offset += len(p.data)
        except Exception as exc:  # noqa: BLE001 - never leave a caller waiting
            error = exc if isinstance(exc, OfferLogError) else OfferLogError(f"{exc!r}")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(OfferLogError(error.reason))
            return
        self.batches += 1
        self.batched_records += len(batch)
        for p in batch:
            if not p.future.done():  # (a caller that was cancelled meanwhile)
                p.future.set_result(mine)

    def _sync_or_raise(self, mine: int) -> None:
        try:
            self._sync_upto(mine)
        except OSError as exc:
            self.last_error = f"{self.path.name}: fsync failed: {_describe(exc)}"
            raise OfferLogError(self.last_error) from exc

    def _recover(self, start: int | None, exc: OSError) -> None:
        """After a failed write: cut the file back to `start`, or make the next append start a line."""
        written = int(getattr(exc, "written", 0))
        self.last_error = f"{self.path.name}: write failed: {_describe(exc)}"
        limited.error(
            "offer_log_write",
            "offer log %s: write failed, record not acknowledged: %s",
            self.path,
            exc,
        )
        if start is None or written == 0:
            return  # nothing of ours reached the file
        try:
            size = os.fstat(self._fd).st_size
            if size == start + written:  # only our partial bytes follow `start`
                os.ftruncate(self._fd, start)
                if self._on_truncate is not None:
                    self._on_truncate(start)
                return
        except OSError as trunc_exc:
            limited.error(
                "offer_log_cut_back",
                "offer log %s: could not cut back a failed write: %s",
                self.path,
                trunc_exc,
            )
        self._needs_newline = True

    def _sync_upto(self, mine: int) -> None:
        with self._sync_lock:
            if self._synced >= mine:  # an fsync that started after our write covered it
                return
            target = self._written
            os.fsync(self._fd)
            self._synced = target

    def _sync_loop(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            if self._written > self._synced:
                try:
                    self._sync_upto(self._written)
                except OSError as exc:  # keep trying; say so on /readyz meanwhile
                    self.last_error = f"{self.path.name}: fsync failed: {_describe(exc)}"
                    limited.error(
                        "offer_log_fsync", "offer log %s: fsync failed: %s", self.path, exc
                    )

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        with self._write_lock:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                log.error("offer log %s: final fsync failed: %s", self.path, exc)
            os.close(self._fd)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name + ' ' if name else ''}{exc.strerror or exc}".strip()


def _ends_mid_line(path: Path) -> bool:
    """True when a non-empty file does not end with a newline (a torn write before a crash)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


# --- writer slots and file names -------------------------------------------------------------------

_MAX_SLOTS = 4096
_SLOT_FILE_RE = re.compile(r"^(quotes|outcomes)(?:\.(\d+))?\.jsonl$")


def log_file_name(kind: str, slot: int) -> str:
    """`quotes.jsonl` / `outcomes.jsonl` for slot 0, `quotes.<n>.jsonl` / ... for slot n."""
    return f"{kind}.jsonl" if slot == 0 else f"{kind}.{slot}.jsonl"


def log_files(log_dir: str | Path, kind: str) -> list[Path]:
    """Every writer's `kind` ("quotes" or "outcomes") file in `log_dir`, in slot order."""
    found: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(log_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _SLOT_FILE_RE.match(entry.name)
        if m and m.group(1) == kind and entry.is_file():
            found.append((int(m.group(2) or 0), Path(entry.path)))
    return [p for _, p in sorted(found)]


def _claim_slot(log_dir: Path) -> tuple[int, int]:
    """(slot, descriptor holding its lock): the lowest slot no live process holds.

    The lock is an exclusive, non-blocking `flock` on `.writer-<n>.lock`; the kernel drops it when
    the descriptor closes or the process dies, so a restarted process takes its slot (and file)
    back, and two live processes never share one.
    """
    for slot in range(_MAX_SLOTS):
        fd = os.open(log_dir / f".writer-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except OSError:
            os.close(fd)
            raise
        return slot, fd
    raise OfferLogError(f"no free offer log writer slot in {log_dir} ({_MAX_SLOTS} in use)")


# --- the quote index -------------------------------------------------------------------------------

# Where a quote row names its quote: `"quote_id":"<id>"` as orjson writes it (fast path), or with
# spaces and escapes (foreign writers, odd ids). The first such key on a line counts.
_QUOTE_KEY = b'"quote_id"'
_QUOTE_VALUE_RE = re.compile(rb'\s*:\s*"((?:[^"\\\n]|\\.)*)"')
_SPAN_BITS = 24  # a span packs (start << 24) | length into one int: 16 MiB per span at most
_SPAN_MAX = (1 << _SPAN_BITS) - 1
_CHUNK = 8 << 20


def _key(quote_id: str) -> bytes:
    """The index key of a quote id: its JSON-escaped bytes, as they appear in the log."""
    return orjson.dumps(quote_id)[1:-1]


@dataclass
class _QuoteIndex:
    """quote id (JSON-escaped bytes) -> byte spans of its lines in one quotes file.

    About 100-150 bytes per quote. A span is one int, `(start << 24) | length`; a quote whose
    lines are not contiguous (another process interleaved, or it was logged twice) keeps a list.
    `upto` is the offset up to which the file is indexed; `generation` moves when the file was cut
    back, so a reader that started before does not index bytes that are gone.
    """

    spans: dict[bytes, int | list[int]] = field(default_factory=dict)
    upto: int = 0
    generation: int = 0

    def add(self, key: bytes, start: int, end: int) -> None:
        while end - start > _SPAN_MAX:  # (only a quote of ~50,000 items gets here)
            self.add(key, start, start + _SPAN_MAX)
            start += _SPAN_MAX
        packed = (start << _SPAN_BITS) | (end - start)
        old = self.spans.get(key)
        if old is None:
            self.spans[key] = packed
            return
        last = old[-1] if isinstance(old, list) else old
        last_start, last_len = last >> _SPAN_BITS, last & _SPAN_MAX
        if last_start + last_len == start and last_len + (end - start) <= _SPAN_MAX:
            merged = (last_start << _SPAN_BITS) | (last_len + end - start)
            if isinstance(old, list):
                old[-1] = merged
            else:
                self.spans[key] = merged
        elif isinstance(old, list):
            old.append(packed)
        else:
            self.spans[key] = [old, packed]

    def get(self, key: bytes) -> list[tuple[int, int]] | None:
        found = self.spans.get(key)
        if found is None:
            return None
        packed = found if isinstance(found, list) else [found]
        return [(p >> _SPAN_BITS, (p >> _SPAN_BITS) + (p & _SPAN_MAX)) for p in packed]


def _index_chunk(chunk: bytes, base: int) -> list[tuple[bytes, int, int]]:
    """(key, start, end) spans of quote rows in `chunk` (whole lines, at file offset `base`).

    Consecutive lines of one quote (how a quote is written: one append) make one span. Plain
    `bytes.find` rather than one regex over the chunk: about twice as fast on a large log.
    """
    found: list[tuple[bytes, int, int]] = []
    key, start, end = b"", -1, -1
    n, step = len(chunk), len(_QUOTE_KEY)
    find, rfind = chunk.find, chunk.rfind
    i = find(_QUOTE_KEY)
    while i >= 0:
        line_end = find(b"\n", i)
        line_end = n if line_end < 0 else line_end + 1
        v = i + step
        j = find(b'"', v + 2, line_end) if chunk[v : v + 2] == b':"' else -1
        if j >= 0 and find(b"\\", v + 2, j) < 0:
            k = chunk[v + 2 : j]
        else:
            m = _QUOTE_VALUE_RE.match(chunk, v, line_end)
            if m is None:  # "quote_id" inside some string, not a key: look further on the line
                i = find(_QUOTE_KEY, v)
                continue
            k = m.group(1)
        line_start = rfind(b"\n", 0, i) + 1
        if k == key and line_start == end:
            end = line_end
        else:
            if start >= 0:
                found.append((key, base + start, base + end))
            key, start, end = k, line_start, line_end
        i = find(_QUOTE_KEY, line_end)
    if start >= 0:
        found.append((key, base + start, base + end))
    return found


class _IndexedFile:
    """One quotes file and its quote-id index, caught up by reading only unindexed bytes.

    The writing process feeds its own file's index as it appends (`indexed_append`); any other
    file (another writer's, or lines on disk from before this process) is indexed by `catch_up`.
    """

    def __init__(self, path: Path, closing: threading.Event) -> None:
        self.path = path
        self.index = _QuoteIndex()
        self.lock = threading.Lock()
        self._catch_up_lock = threading.Lock()
        self._closing = closing
        self._fd: int | None = None

    def _read_fd(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return self._fd

    def indexed_append(self, offset: int, ids: Sequence[Any], lines: Sequence[bytes]) -> None:
        """Index lines this process just wrote at `offset` (skipped when earlier bytes are not
        indexed yet: the catch-up then reads these too)."""
        with self.lock:
            if offset != self.index.upto:
                return
            if isinstance(ids[0], str) and ids.count(ids[0]) == len(ids):  # one quote
                end = offset + sum(map(len, lines))
                self.index.add(_key(ids[0]), offset, end)
                self.index.upto = end
                return
            # One span per run of rows with the same quote id.
            pos = run_start = offset
            run_qid: Any = None
            for qid, line in zip(ids, lines, strict=True):
                if qid != run_qid:
                    if isinstance(run_qid, str):
                        self.index.add(_key(run_qid), run_start, pos)
                    run_qid, run_start = qid, pos
                pos += len(line)
            if isinstance(run_qid, str):
                self.index.add(_key(run_qid), run_start, pos)
            self.index.upto = pos

    def cut_back(self, offset: int) -> None:
        """A failed write was truncated at `offset`: forget any indexing past it."""
        with self.lock:
            self.index.generation += 1
            self.index.upto = min(self.index.upto, offset)

    def spans(self, key: bytes) -> list[tuple[int, int]] | None:
        with self.lock:
            return self.index.get(key)

    def catch_up(self) -> None:
        """Index the whole lines past `upto` (reads only the unindexed bytes)."""
        with self._catch_up_lock:
            fd = self._read_fd()
            if fd is None:
                return
            while not self._closing.is_set():
                with self.lock:
                    start, generation = self.index.upto, self.index.generation
                size = os.fstat(fd).st_size
                if size <= start:
                    return
                want = min(size - start, _CHUNK)
                chunk = os.pread(fd, want, start)
                cut = chunk.rfind(b"\n") + 1
                while cut == 0 and len(chunk) < size - start:  # a line longer than the chunk
                    want = min(size - start, 2 * len(chunk))
                    chunk = os.pread(fd, want, start)
                    cut = chunk.rfind(b"\n") + 1
                if cut == 0:
                    return  # only a line still being written (or torn) is left
                entries = _index_chunk(chunk[:cut], start)
                with self.lock:
                    if self.index.generation != generation or self.index.upto != start:
                        continue  # cut back, or an append indexed these bytes: read again
                    for key, s, e in entries:
                        self.index.add(key, s, e)
                    self.index.upto = start + cut

    def read_quote(self, quote_id: str, spans: list[tuple[int, int]]) -> list[dict[str, Any]]:
        fd = self._read_fd()
        if fd is None:
            return []
        rows = []
        try:
            for start, end in spans:
                data = os.pread(fd, end - start, start)
                for line in data.split(b"\n"):
                    row = parse_row(line, QUOTE_FIELDS) if line.strip() else None
                    if row is not None and row[QUOTE_ID] == quote_id:
                        rows.append(row)
        except OSError as exc:
            raise OfferLogError(f"{self.path.name}: read failed: {_describe(exc)}") from exc
        return rows

    def close(self) -> None:
        with self._catch_up_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _outcome_ts(row: Mapping[str, Any]) -> str:
    """When an outcome was reported, as the export orders reports ("" when the row has none)."""
    ts = row.get(OUTCOME_TS)
    return ts if isinstance(ts, str) else ""


class _OutcomeFile:
    """One outcomes file and its index: offer id -> the earliest outcome of that offer in the file.

    An entry packs `(line offset << 1) | label` into one int. "Earliest" is the export's order:
    the smallest `outcome_ts`, then the first line. Caught up by reading only the bytes past `upto`
    (the whole file once, at startup, off the request path).
    """

    def __init__(self, path: Path, slot: int) -> None:
        self.path = path
        self.slot = slot
        self.index: dict[str, int] = {}
        self.upto = 0
        self.lock = threading.Lock()
        self._fd: int | None = None

    def _read_fd(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return self._fd

    def catch_up(self) -> None:
        """Index the whole lines past `upto`."""
        with self.lock:
            fd = self._read_fd()
            if fd is None:
                return
            size = os.fstat(fd).st_size
            if size < self.upto:  # the file was cut short under us (not by a writer): start over
                self.index.clear()
                self.upto = 0
            while self.upto < size:
                chunk = os.pread(fd, min(size - self.upto, _CHUNK), self.upto)
                cut = chunk.rfind(b"\n") + 1
                while cut == 0 and len(chunk) < size - self.upto:  # a line longer than the chunk
                    chunk = os.pread(fd, min(size - self.upto, 2 * len(chunk)), self.upto)
                    cut = chunk.rfind(b"\n") + 1
                if cut == 0:
                    return  # only a torn last line is left
                self._index_lines(chunk[:cut], self.upto)
                self.upto += cut

    def _index_lines(self, chunk: bytes, base: int) -> None:
        pos = 0
        for line in chunk.split(b"\n")[:-1]:
            offset, pos = base + pos, pos + len(line) + 1
            row = parse_row(line, OUTCOME_FIELDS) if line.strip() else None
            if row is None:
                continue
            offer_id = row[S.OFFER_ID]
            packed = (offset << 1) | int(row[S.PURCHASED])
            old = self.index.get(offer_id)
            if old is None or _outcome_ts(row) < self.reported_at(old):
                self.index[offer_id] = packed

    def get(self, offer_id: str) -> int | None:
        with self.lock:
            return self.index.get(offer_id)

    def reported_at(self, packed: int) -> str:
        """The `outcome_ts` of an indexed line (read back: only needed when reports disagree)."""
        fd = self._read_fd()
        if fd is None:
            return ""
        offset, want = packed >> 1, 4096
        while True:
            data = os.pread(fd, want, offset)
            end = data.find(b"\n")
            if end >= 0 or len(data) < want:
                break
            want *= 2
        row = parse_row(data[: end if end >= 0 else len(data)], OUTCOME_FIELDS)
        return _outcome_ts(row) if row is not None else ""

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _quote_lines(rows: Sequence[Mapping[str, Any]]) -> tuple[list[bytes], list[Any]]:
    return [orjson.dumps(r, option=_LINE_OPTS) for r in rows], [r.get(QUOTE_ID) for r in rows]


class OfferLog:
    """Append-only quote and outcome logs under `log_dir` (created when missing).

    This instance writes the files of the writer slot it claims (`slot`, see the module
    docstring) and reads every writer's files.
    """

    def __init__(
        self, log_dir: str | Path, fsync: str = "interval", fsync_interval_s: float = 0.05
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.slot, self._slot_fd = _claim_slot(self.log_dir)
        self._closing = threading.Event()
        try:
            self.quotes_path = self.log_dir / log_file_name("quotes", self.slot)
            self.outcomes_path = self.log_dir / log_file_name("outcomes", self.slot)
            self._own = _IndexedFile(self.quotes_path, self._closing)
            self._quotes = _Appender(self.quotes_path, fsync, fsync_interval_s, self._own.cut_back)
            self._outcomes = _Appender(self.outcomes_path, fsync, fsync_interval_s)
            self._outcomes_lock_fd = os.open(
                self.log_dir / OUTCOMES_LOCK, os.O_RDWR | os.O_CREAT, 0o644
            )
        except BaseException:
            os.close(self._slot_fd)
            raise
        self._others: dict[Path, _IndexedFile] = {}
        self._others_lock = threading.Lock()
        self._outcome_files: dict[Path, _OutcomeFile] = {
            self.outcomes_path: _OutcomeFile(self.outcomes_path, self.slot)
        }
        self._outcome_lock = threading.Lock()  # this process's threads (the flock is per process)
        # Index what is already on disk off the startup path; a lookup meanwhile waits for it.
        self._indexer = threading.Thread(
            target=self._catch_up_logged, name="offer-log-index", daemon=True
        )
        self._indexer.start()

    @property
    def last_error(self) -> str | None:
        """Why the last append failed, until one succeeds again (None: the log is healthy)."""
        errors = [e for e in (self._quotes.last_error, self._outcomes.last_error) if e]
        return "; ".join(errors) or None

    @property
    def batch_stats(self) -> tuple[int, int]:
        """(batched writes, records in them) of the group-committed quote appends so far."""
        return self._quotes.batches, self._quotes.batched_records

    def append_quotes(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Durably append offer rows (no `purchased`), one per quoted item, and index them.

        Raises:
            OfferLogError: nothing was logged (disk full, I/O error); answer 503, never acknowledge.
        """
        if not rows:
            return
        lines, ids = _quote_lines(rows)
        self._quotes.append(
            b"".join(lines), lambda offset: self._own.indexed_append(offset, ids, lines)
        )

    async def append_quotes_async(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """`append_quotes` from the event loop, group-committed with concurrent quotes.

        Returns once the batch holding these rows is with the operating system, exactly the
        guarantee `append_quotes` gives.

        Raises:
            OfferLogError: nothing of the batch was logged; answer 503, never acknowledge.
        """
        if not rows:
            return
        lines, ids = _quote_lines(rows)
        await self._quotes.append_async(
            b"".join(lines), lambda offset: self._own.indexed_append(offset, ids, lines)
        )

    def append_outcome(self, row: Mapping[str, Any]) -> None:
        """Durably append one offer row with its `purchased` label, unchecked (the scorer uses
        `append_outcome_once`; the export keeps the first outcome of an offer either way).

        Raises:
            OfferLogError: nothing was logged; answer 503, never acknowledge.
        """
        self._outcomes.append(orjson.dumps(row, option=_LINE_OPTS))

    def append_outcome_once(self, row: Mapping[str, Any]) -> bool:
        """Append the offer's outcome unless one is recorded (by any writer of the directory).

        Returns True when written, False when the same label was already recorded (nothing
        written: a retried report).

        Raises:
            OutcomeConflict: a different label is recorded; nothing written.
            OfferLogError: the log could not be read or written; nothing acknowledged.
        """
        offer_id, label = str(row[S.OFFER_ID]), int(row[S.PURCHASED])
        with self._outcome_lock:
            try:
                fcntl.flock(self._outcomes_lock_fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise OfferLogError(f"{OUTCOMES_LOCK}: lock failed: {_describe(exc)}") from exc
            try:
                recorded = self.recorded_outcome(offer_id)
                if recorded == label:
                    return False
                if recorded is not None:
                    raise OutcomeConflict(offer_id, recorded, label)
                self._outcomes.append(orjson.dumps(row, option=_LINE_OPTS))
                return True
            finally:
                fcntl.flock(self._outcomes_lock_fd, fcntl.LOCK_UN)

    def recorded_outcome(self, offer_id: str) -> int | None:
        """The label of the offer's first outcome in any writer's file (None: no outcome yet).

        Reads only what the writers appended since the last look. When the files disagree (logs
        written without the check), the earliest report wins, as in `export_offers`.

        Raises:
            OfferLogError: an outcomes file could not be read.
        """
        found: list[tuple[str, int, int]] = []  # (reported at, slot, packed entry)
        files = self._outcome_files_now()
        try:
            for f in files:
                f.catch_up()
            entries = [(f, f.get(offer_id)) for f in files]
            hits = [(f, e) for f, e in entries if e is not None]
            if not hits:
                return None
            if len({e & 1 for _, e in hits}) == 1:
                return hits[0][1] & 1
            found = [(f.reported_at(e), f.slot, e) for f, e in hits]
        except OSError as exc:
            raise OfferLogError(f"outcomes: read failed: {_describe(exc)}") from exc
        return min(found)[2] & 1

    def _outcome_files_now(self) -> list[_OutcomeFile]:
        """Every writer's outcomes file, in slot order (the directory is listed again each call)."""
        with self._others_lock:
            for path in log_files(self.log_dir, "outcomes"):
                if path not in self._outcome_files:
                    slot = _SLOT_FILE_RE.match(path.name)
                    self._outcome_files[path] = _OutcomeFile(
                        path, int(slot.group(2) or 0) if slot else 0
                    )
            return sorted(self._outcome_files.values(), key=lambda f: f.slot)

    def _other_files(self) -> list[_IndexedFile]:
        """The other writers' quotes files (the directory is listed again each call)."""
        with self._others_lock:
            for path in log_files(self.log_dir, "quotes"):
                if path != self.quotes_path and path not in self._others:
                    self._others[path] = _IndexedFile(path, self._closing)
            return list(self._others.values())

    def find_quote(self, quote_id: str) -> list[dict[str, Any]]:
        """The logged rows of one quote ([] when unknown), through the indexes: no scan of the log.

        Looks in this writer's file first, then in the other writers' (a replica's quote).
        """
        key = _key(quote_id)
        spans = self._own.spans(key)
        if spans is None:
            self._own.catch_up()  # lines from before this process (or the startup index)
            spans = self._own.spans(key)
        if spans is not None:
            return self._own.read_quote(quote_id, spans)
        for other in self._other_files():
            spans = other.spans(key)
            if spans is None:
                other.catch_up()
                spans = other.spans(key)
            if spans is not None:
                return other.read_quote(quote_id, spans)
        return []

    def _catch_up_logged(self) -> None:
        try:
            self._own.catch_up()
            for other in self._other_files():
                other.catch_up()
            for outcomes in self._outcome_files_now():
                if self._closing.is_set():
                    return
                outcomes.catch_up()
        except Exception:  # noqa: BLE001 - lookups retry the catch-up and report their own errors
            log.exception("offer log: indexing %s failed", self.log_dir)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._indexer.join(timeout=5)
        self._quotes.close()
        self._outcomes.close()
        self._own.close()
        for other in self._others.values():
            other.close()
        for outcomes in self._outcome_files.values():
            outcomes.close()
        os.close(self._outcomes_lock_fd)
        os.close(self._slot_fd)  # releases the writer slot


# --- the export ------------------------------------------------------------------------------------

OFFER_COLUMNS: tuple[str, ...] = tuple(S.column_names(S.OFFERS))


def read_logs(
    log_dir: str | Path, kind: str, fields: Mapping[str, Check], extra: Sequence[str] = ()
) -> tuple[LogRows, int]:
    """Every writer's `kind` file of `log_dir`, read by `read_log` and concatenated in slot
    order; also returns how many files held rows."""
    names = [*fields, *(c for c in extra if c not in fields)]
    out = LogRows({c: [] for c in names})
    files = 0
    for path in log_files(log_dir, kind):
        part = read_log(path, fields, extra, what=kind)
        for name in names:
            out.columns[name].extend(part.columns[name])
        out.kept += part.kept
        out.skipped += part.skipped
        files += part.kept > 0
    return out, files


def read_outcomes(log_dir: str | Path, extra: Sequence[str] = ()) -> LogRows:
    """The valid outcome rows of a log directory, every writer's file (the monitor flow's and the
    export's reader)."""
    return read_logs(log_dir, "outcomes", OUTCOME_FIELDS, extra)[0]


def first_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per offer: its first outcome by `outcome_ts` (equal or missing timestamps: the
    earlier writer slot, then the earlier line), so a later report never flips a label.

    `outcomes` are rows as `read_logs` returns them (writers in slot order, each in line order),
    with an `outcome_ts` column.
    """
    when = np.array([v if isinstance(v, str) else "" for v in outcomes[OUTCOME_TS]], dtype=str)
    ordered = outcomes.iloc[np.argsort(when, kind="stable")] if len(outcomes) else outcomes
    return ordered.drop_duplicates(S.OFFER_ID, keep="first")


def export_offers(log_dir: str | Path, include_pending: bool = False) -> pd.DataFrame:
    """The contract `offers` table from the logs: one row per offer with a reported outcome.

    Merges every writer's files (one pair per scorer process); an offer reported more than once
    keeps its first outcome (`first_outcomes`). Lines that are not valid offer rows
    (torn, invalid bytes, missing fields, bad timestamps) are skipped and counted:
    `df.attrs["skipped_lines"]` (also logged as a warning).

    Args:
        log_dir: the scorer's offer log directory.
        include_pending: also emit quoted offers with no outcome yet, as not purchased (only right
            once the outcome window has closed).
    """
    read, _ = read_logs(log_dir, "outcomes", OUTCOME_FIELDS, extra=[OUTCOME_TS])
    skipped = read.skipped
    outcomes = first_outcomes(read.frame()).drop(columns=[OUTCOME_TS])
    if include_pending:
        quoted, _ = read_logs(log_dir, "quotes", QUOTE_FIELDS)
        skipped += quoted.skipped
        quotes = quoted.frame().drop_duplicates(S.OFFER_ID, keep="last")
        pending = quotes[~quotes[S.OFFER_ID].isin(outcomes[S.OFFER_ID])].copy()
        pending[S.PURCHASED] = 0
        outcomes = pd.concat([outcomes, pending], ignore_index=True)
    out = outcomes[list(OFFER_COLUMNS)].reset_index(drop=True)
    ts = pd.to_datetime(out[S.TS], utc=True, format="ISO8601", errors="coerce")
    bad_ts = ts.isna()
    if bad_ts.any():  # valid for Python's parser, not for pandas'
        skipped += int(bad_ts.sum())
        out, ts = out[~bad_ts], ts[~bad_ts]
    out = out.assign(**{S.TS: ts})
    for col in (S.OFFER_ID, S.USER_ID, S.ITEM_ID, S.POLICY):
        out[col] = out[col].astype(str)
    out[S.PRICE] = out[S.PRICE].astype(float)
    out[S.PURCHASED] = out[S.PURCHASED].astype(int)
    out[S.PROPENSITY] = pd.to_numeric(out[S.PROPENSITY], errors="coerce").astype(float)
    out = out.sort_values([S.TS, S.OFFER_ID], kind="stable").reset_index(drop=True)
    out.attrs["skipped_lines"] = skipped
    return out
