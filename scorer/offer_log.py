"""The durable offer log: every quote and every outcome, appended as JSON lines.

`quotes.jsonl` holds one line per quoted (quote, item): the offer as made. `outcomes.jsonl` holds
one line per reported outcome: the full offer row plus `purchased`. `export_offers` joins them into
the contract's `offers` table, the training signal of the next run.

Appends are acknowledged only once handed to the operating system (they survive a kill -9 of the
scorer); the `fsync` mode decides whether the disk flush happens before the acknowledgement or
within a short interval after it (see `_Appender`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from pricing import schema as S

QUOTES_FILE = "quotes.jsonl"
OUTCOMES_FILE = "outcomes.jsonl"
QUOTE_ID = "quote_id"


_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


class _Appender:
    """One append-only file.

    Every append reaches the operating system (one `write` on an O_APPEND descriptor) before it is
    acknowledged, so it survives a crash or `kill -9` of the process. What it takes to survive a
    crash of the machine is the `fsync` mode:
    - "always": fsync before acknowledging (group commit: concurrent appenders share one fsync);
    - "interval": a background thread fsyncs every `interval_s`, bounding what a power loss can
      take to that window, and keeping the disk flush off the quote path.
    """

    def __init__(self, path: Path, fsync: str = "interval", interval_s: float = 0.05) -> None:
        if fsync not in ("always", "interval"):
            raise ValueError(f"fsync must be 'always' or 'interval', got {fsync!r}")
        self.path = path
        self.fsync = fsync
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0
        self._synced = 0
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_loop, args=(interval_s,), name=f"fsync-{path.name}", daemon=True
            )
            self._syncer.start()

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(orjson.dumps(r, option=_ORJSON_OPTS) + b"\n" for r in records)
        with self._write_lock:
            os.write(self._fd, data)
            self._written += 1
            mine = self._written
        if self.fsync == "always":
            self._sync_upto(mine)

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
                self._sync_upto(self._written)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._syncer is not None:
            self._syncer.join(timeout=5)
        with self._write_lock:
            os.fsync(self._fd)
            os.close(self._fd)


class OfferLog:
    """Append-only quote and outcome logs under `log_dir` (created when missing)."""

    def __init__(
        self, log_dir: str | Path, fsync: str = "interval", fsync_interval_s: float = 0.05
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._quotes = _Appender(self.log_dir / QUOTES_FILE, fsync, fsync_interval_s)
        self._outcomes = _Appender(self.log_dir / OUTCOMES_FILE, fsync, fsync_interval_s)

    def append_quotes(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Durably append offer rows (no `purchased`), one per quoted item."""
        self._quotes.append(rows)

    def append_outcome(self, row: Mapping[str, Any]) -> None:
        """Durably append one offer row with its `purchased` label."""
        self._outcomes.append([row])

    def find_quote(self, quote_id: str) -> list[dict[str, Any]]:
        """The logged rows of one quote, scanning the quote log (the slow path for old quotes)."""
        needle = f'"{QUOTE_ID}":{json.dumps(quote_id)}'
        rows = []
        with open(self.log_dir / QUOTES_FILE, encoding="utf-8") as f:
            for line in f:
                if needle in line:
                    row = json.loads(line)
                    if row.get(QUOTE_ID) == quote_id:
                        rows.append(row)
        return rows

    def close(self) -> None:
        self._quotes.close()
        self._outcomes.close()


OFFER_COLUMNS: tuple[str, ...] = tuple(S.column_names(S.OFFERS))


def _read_jsonl(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=list(OFFER_COLUMNS))
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a crash: not acknowledged
                    continue
    return pd.DataFrame(rows)


def export_offers(log_dir: str | Path, include_pending: bool = False) -> pd.DataFrame:
    """The contract `offers` table from the logs: one row per offer with a reported outcome.

    Args:
        log_dir: the scorer's offer log directory.
        include_pending: also emit quoted offers with no outcome yet, as not purchased (only right
            once the outcome window has closed).
    """
    outcomes = _read_jsonl(Path(log_dir) / OUTCOMES_FILE)
    if len(outcomes):
        # A repeated report for the same offer replaces the earlier one.
        outcomes = outcomes.drop_duplicates(S.OFFER_ID, keep="last")
    if include_pending:
        quotes = _read_jsonl(Path(log_dir) / QUOTES_FILE)
        if len(quotes):
            pending = quotes[~quotes[S.OFFER_ID].isin(outcomes.get(S.OFFER_ID, []))].copy()
            pending[S.PURCHASED] = 0
            outcomes = pd.concat([outcomes, pending], ignore_index=True)
    for col in OFFER_COLUMNS:
        if col not in outcomes.columns:
            outcomes[col] = None
    out = outcomes[list(OFFER_COLUMNS)].reset_index(drop=True)
    out[S.TS] = pd.to_datetime(out[S.TS], utc=True, format="ISO8601")
    for col in (S.OFFER_ID, S.USER_ID, S.ITEM_ID, S.POLICY):
        out[col] = out[col].astype(str)
    out[S.PRICE] = out[S.PRICE].astype(float)
    out[S.PURCHASED] = out[S.PURCHASED].astype(int)
    out[S.PROPENSITY] = pd.to_numeric(out[S.PROPENSITY], errors="coerce").astype(float)
    return out.sort_values([S.TS, S.OFFER_ID], kind="stable").reset_index(drop=True)
