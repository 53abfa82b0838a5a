"""The offer log under faults: full disks, partial writes, torn and corrupt lines, unknown ids.

Issue 10, items 3 and 4: an acknowledged line is written whole or not at all, a failed write never
glues onto the next record, and one tolerant reader (export, monitor, outcome lookup) skips what it
cannot use, counts it, and never scans the log for an unknown quote.
"""

from __future__ import annotations

import builtins
import errno
import os
import resource
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mlops.settings import Settings
from pricing import io as pio
from pricing import schema as S
from scorer.app import create_app
from scorer.offer_log import OUTCOMES_FILE, QUOTES_FILE, OfferLog, OfferLogError, export_offers
from scorer.testing import toy_catalog, toy_handle
from tasks.monitoring import monitor_report, read_live_offers


def _rows(quote_id: str, items: list[str], ts: str = "2026-01-01T00:00:00+00:00") -> list[dict]:
    return [
        {
            S.OFFER_ID: f"{quote_id}:{i}",
            "quote_id": quote_id,
            S.TS: ts,
            S.USER_ID: "u1",
            S.ITEM_ID: i,
            S.PRICE: 9.99,
            S.PROPENSITY: 0.95,
            S.POLICY: "toy@1",
            "purchase_probability": 0.2,
        }
        for i in items
    ]


def _outcome(quote_id: str, item: str, purchased: int = 1) -> dict:
    return {**_rows(quote_id, [item])[0], S.PURCHASED: purchased}


def _whole_lines(path: Path) -> list[dict]:
    """Every line of the file, parsed: fails on a partial or glued line."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} ends mid-line: {data[-60:]!r}"
    return [orjson.loads(line) for line in data.splitlines()]


class FullDisk:
    """`os.write` for one descriptor: writes half of what it is given, then fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fd: int) -> None:
        self.real = os.write
        self.fd = fd
        self.full = True
        self.calls = 0
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data: Any) -> int:
        if fd != self.fd or not self.full:
            return self.real(fd, data)
        self.calls += 1
        if self.calls == 1:
            return self.real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- item 3: a full disk loses no acknowledged line -----------------------------------------------


def test_a_full_disk_mid_write_leaves_only_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_rows("q1", ["a", "b"]))
    log.append_outcome(_outcome("q1", "a"))
    disk = FullDisk(monkeypatch, log._quotes._fd)
    with pytest.raises(OfferLogError, match="ENOSPC"):
        log.append_quotes(_rows("q2", ["a", "b", "c"]))
    assert disk.calls == 2  # half written, then the error: the rest was retried, not dropped
    assert "ENOSPC" in (log.last_error or "")
    assert [r[S.OFFER_ID] for r in _whole_lines(tmp_path / QUOTES_FILE)] == ["q1:a", "q1:b"]

    disk.full = False  # space returns
    log.append_quotes(_rows("q3", ["a"]))
    assert log.last_error is None
    assert [r[S.OFFER_ID] for r in _whole_lines(tmp_path / QUOTES_FILE)] == [
        "q1:a",
        "q1:b",
        "q3:a",
    ]
    assert [r[S.ITEM_ID] for r in log.find_quote("q1")] == ["a", "b"]
    assert log.find_quote("q2") == []  # never acknowledged
    assert [r[S.OFFER_ID] for r in log.find_quote("q3")] == ["q3:a"]
    log.close()


def test_a_full_disk_on_outcomes_is_never_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OfferLog(tmp_path)
    log.append_outcome(_outcome("q1", "a"))
    disk = FullDisk(monkeypatch, log._outcomes._fd)
    with pytest.raises(OfferLogError):
        log.append_outcome(_outcome("q2", "a"))
    disk.full = False
    log.append_outcome(_outcome("q3", "a"))
    assert [r[S.OFFER_ID] for r in _whole_lines(tmp_path / OUTCOMES_FILE)] == ["q1:a", "q3:a"]
    log.close()
    assert export_offers(tmp_path)[S.OFFER_ID].tolist() == ["q1:a", "q3:a"]


def test_a_file_size_limit_cuts_a_real_write_short(tmp_path: Path) -> None:
    """The kernel's own partial write (RLIMIT_FSIZE, like a 200 KB filesystem filling up)."""
    log = OfferLog(tmp_path, fsync="always")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    acked = []
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
        with pytest.raises(OfferLogError):
            for k in range(10_000):
                log.append_quotes(_rows(f"q{k}", ["a", "b", "c"]))
                acked.append(f"q{k}")
                log.append_outcome(_outcome(f"q{k}", "a"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert log.last_error is not None
    log.append_quotes(_rows("after", ["a"]))  # space returned
    log.append_outcome(_outcome("after", "a"))
    log.close()
    quoted = {r["quote_id"] for r in _whole_lines(tmp_path / QUOTES_FILE)}
    assert set(acked) | {"after"} <= quoted and len(quoted) <= len(acked) + 1
    outcomes = _whole_lines(tmp_path / OUTCOMES_FILE)
    assert outcomes[-1]["quote_id"] == "after"


def test_a_failed_cut_back_still_never_glues_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_rows("q1", ["a"]))
    disk = FullDisk(monkeypatch, log._quotes._fd)

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OfferLogError):
        log.append_quotes(_rows("q2", ["a"]))  # half a line stays behind
    disk.full = False
    log.append_quotes(_rows("q3", ["a"]))
    log.close()
    # the half record stays, alone on its line: skipped by readers, the next record intact
    lines = (tmp_path / QUOTES_FILE).read_bytes().splitlines()
    assert len(lines) == 3 and orjson.loads(lines[-1])["quote_id"] == "q3"
    pending = export_offers(tmp_path, include_pending=True)
    assert pending[S.OFFER_ID].tolist() == ["q1:a", "q3:a"]
    assert pending.attrs["skipped_lines"] == 1


def test_a_torn_tail_from_a_crash_is_not_glued_to_the_next_line(tmp_path: Path) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_rows("q1", ["a"]))
    log.close()
    with open(tmp_path / QUOTES_FILE, "ab") as f:
        f.write(b'{"offer_id": "q9:a", "quote_id": "q9", "ts"')  # kill -9 mid-write
    log = OfferLog(tmp_path)
    log.append_quotes(_rows("q2", ["a"]))
    assert [r[S.OFFER_ID] for r in log.find_quote("q2")] == ["q2:a"]
    assert log.find_quote("q9") == []
    log.close()
    assert export_offers(tmp_path, include_pending=True)[S.OFFER_ID].tolist() == ["q1:a", "q2:a"]


def _app(tmp_path: Path) -> Any:
    settings = Settings(
        offer_log_dir=tmp_path / "offers",
        admin_token="s3cret-s3cret-s3cret",
        alias_poll_seconds=0.0,
        exploration=0.0,
    )
    return create_app(settings, lambda: toy_handle("1"), seed=0)


def test_a_full_disk_answers_503_and_shows_on_readyz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(_app(tmp_path), raise_server_exceptions=False) as c:
        log = c.app.state.runtime.offer_log  # type: ignore[attr-defined]
        ok = c.post("/v1/quote", json={"user_id": "u1", "items": ["i0", "i1"]})
        assert ok.status_code == 200
        qid = ok.json()["quote_id"]

        disk = FullDisk(monkeypatch, log._quotes._fd)
        r = c.post("/v1/quote", json={"user_id": "u1", "items": ["i0", "i1"]})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] and "offer log unavailable" in r.json()["detail"]
        assert "ENOSPC" in r.json()["detail"]
        assert "ENOSPC" in c.get("/readyz").json()["offer_log_error"]

        disk.fd = log._outcomes._fd
        disk.calls = 0
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i0", "purchased": True})
        assert r.status_code == 503 and r.headers["retry-after"], r.text

        disk.full = False
        assert c.post("/v1/quote", json={"user_id": "u1", "items": ["i0"]}).status_code == 200
        r = c.post("/v1/outcomes", json={"quote_id": qid, "item_id": "i0", "purchased": True})
        assert r.status_code == 200
        assert c.get("/readyz").json()["offer_log_error"] is None
    offers_dir = tmp_path / "offers"
    assert len(_whole_lines(offers_dir / QUOTES_FILE)) == 3
    assert [r[S.OFFER_ID] for r in _whole_lines(offers_dir / OUTCOMES_FILE)] == [f"{qid}:i0"]


# --- item 4: one tolerant reader ------------------------------------------------------------------

BAD_LINES = [
    b"\xff\xfe not utf-8\n",
    b"[1, 2, 3]\n",
    b'"a string"\n',
    b"null\n",
    b'{"offer_id": "x:a"}\n',  # missing fields
    orjson.dumps({**_outcome("bad-ts", "a"), S.TS: "yesterday"}) + b"\n",
    orjson.dumps({**_outcome("y9999", "a"), S.TS: "9999-01-01T00:00:00+00:00"}) + b"\n",
    orjson.dumps({**_outcome("str-price", "a"), S.PRICE: "cheap"}) + b"\n",
    b'{"offer_id": "nan:a", "price": NaN}\n',
    orjson.dumps({**_outcome("label", "a"), S.PURCHASED: "yes"}) + b"\n",
    b'{"offer_id": "torn:a", "quote_id": "torn", "ts": "2026-0',  # a torn last line
]


def _corrupt_log(tmp_path: Path) -> None:
    log = OfferLog(tmp_path)
    log.append_quotes(_rows("q1", ["a", "b"]))
    log.append_outcome(_outcome("q1", "a"))
    log.close()
    for name in (QUOTES_FILE, OUTCOMES_FILE):
        with open(tmp_path / name, "ab") as f:
            f.write(b"".join(BAD_LINES[:-1]))
    log = OfferLog(tmp_path)  # a later process keeps writing after the damage
    log.append_quotes(_rows("q2", ["a"]))
    log.append_outcome(_outcome("q2", "a", purchased=0))
    log.close()
    for name in (QUOTES_FILE, OUTCOMES_FILE):
        with open(tmp_path / name, "ab") as f:
            f.write(BAD_LINES[-1])


def test_export_skips_and_counts_what_it_cannot_use(tmp_path: Path) -> None:
    _corrupt_log(tmp_path)
    offers = export_offers(tmp_path)
    assert offers[S.OFFER_ID].tolist() == ["q1:a", "q2:a"]
    assert offers[S.PURCHASED].tolist() == [1, 0]
    assert list(offers.columns) == S.column_names(S.OFFERS)
    assert offers.attrs["skipped_lines"] == len(BAD_LINES)
    pending = export_offers(tmp_path, include_pending=True)
    # (a quote row needs no label: "label:a" is a valid quoted offer, pending)
    assert sorted(pending[S.OFFER_ID]) == ["label:a", "q1:a", "q1:b", "q2:a"]
    assert pending.attrs["skipped_lines"] == 2 * len(BAD_LINES) - 1


def test_find_quote_reads_past_corrupt_lines(tmp_path: Path) -> None:
    _corrupt_log(tmp_path)
    log = OfferLog(tmp_path)
    assert [r[S.ITEM_ID] for r in log.find_quote("q1")] == ["a", "b"]
    assert [r[S.ITEM_ID] for r in log.find_quote("q2")] == ["a"]
    assert log.find_quote("torn") == [] and log.find_quote("nope") == []
    log.close()


def test_outcomes_for_old_quotes_survive_a_corrupt_log(tmp_path: Path) -> None:
    _corrupt_log(tmp_path / "offers")
    with TestClient(_app(tmp_path)) as c:
        r = c.post("/v1/outcomes", json={"quote_id": "q1", "item_id": "b", "purchased": True})
        assert r.status_code == 200, r.text
        r = c.post("/v1/outcomes", json={"quote_id": "nope", "item_id": "a", "purchased": True})
        assert r.status_code == 404, r.text


def test_the_monitor_reads_a_log_with_a_half_line(tmp_path: Path) -> None:
    _corrupt_log(tmp_path / "offers")
    live = read_live_offers(tmp_path / "offers")
    assert live[S.OFFER_ID].tolist() == ["q1:a", "q2:a"]
    assert live.attrs["skipped_lines"] == len(BAD_LINES)
    catalog = toy_catalog(5)
    catalog[S.ITEM_ID] = ["a", "b", "c", "d", "e"]
    pio.write_table(catalog, tmp_path / "data", S.ITEMS)
    train = pd.DataFrame([_outcome(f"t{k}", "a", k % 2) for k in range(10)])
    train[S.TS] = pd.to_datetime(train[S.TS], utc=True)
    pio.write_table(train[S.column_names(S.OFFERS)], tmp_path / "data", S.OFFERS)
    report = monitor_report(tmp_path / "data", tmp_path / "offers")
    assert report["live_offers"] == 2
    assert report["offer_log_skipped_lines"] == len(BAD_LINES)
    assert report["live_n"] == 2.0


def test_an_unknown_quote_id_does_not_read_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = OfferLog(tmp_path)
    for k in range(2000):
        log.append_quotes(_rows(f"q{k}", ["a", "b", "c"]))
    log.close()
    log = OfferLog(tmp_path)  # indexes what is on disk once, off the request path
    assert len(log.find_quote("q1999")) == 3
    reads: list[str] = []
    real_open, real_pread, real_read = builtins.open, os.pread, os.read

    def spy(name: str, real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "open", spy("open", real_open))
    monkeypatch.setattr(os, "pread", spy("pread", real_pread))
    monkeypatch.setattr(os, "read", spy("read", real_read))
    for k in range(100):
        assert log.find_quote(f"unknown-{k}") == []
    assert reads == []
    assert len(log.find_quote("q7")) == 3
    assert reads == ["pread"]  # a known quote: one read of its own lines
    monkeypatch.undo()
    log.close()


def test_the_index_catches_up_on_lines_another_writer_appended(tmp_path: Path) -> None:
    mine, other = OfferLog(tmp_path), OfferLog(tmp_path)
    mine.append_quotes(_rows("q1", ["a"]))
    other.append_quotes(_rows("q2", ["a", "b"]))
    mine.append_quotes(_rows("q3", ["a"]))
    assert [r[S.OFFER_ID] for r in mine.find_quote("q2")] == ["q2:a", "q2:b"]
    assert [r[S.OFFER_ID] for r in mine.find_quote("q3")] == ["q3:a"]
    assert [r[S.OFFER_ID] for r in other.find_quote("q1")] == ["q1:a"]
    mine.close()
    other.close()


def test_quote_ids_that_need_escaping_are_found(tmp_path: Path) -> None:
    log = OfferLog(tmp_path)
    odd = 'q"\\é\u2028'
    log.append_quotes(_rows(odd, ["a"]))
    log.close()
    log = OfferLog(tmp_path)  # found through the on-disk index, not the append path
    assert [r["quote_id"] for r in log.find_quote(odd)] == [odd]
    log.close()


def test_the_monitor_and_the_experiment_keep_the_first_outcome_as_the_export_does(
    tmp_path: Path,
) -> None:
    """Readers other than the export see the same label: the first report of an offer."""
    from tasks.experiment import read_experiment_offers

    log = tmp_path / "offers"
    log.mkdir()
    quotes = _rows("q1", ["a"])
    first = {**_outcome("q1", "a", 1), "outcome_ts": "2026-01-01T00:00:01+00:00"}
    flipped = {**_outcome("q1", "a", 0), "outcome_ts": "2026-01-01T00:00:02+00:00"}
    (log / QUOTES_FILE).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in quotes))
    # in report order, then with the later report first in the file (order by time, not line)
    for lines in ((first, flipped), (flipped, first)):
        (log / OUTCOMES_FILE).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
        assert export_offers(log)[S.PURCHASED].tolist() == [1]
        assert read_live_offers(log)[S.PURCHASED].tolist() == [1]
        assert read_experiment_offers(log)[S.PURCHASED].tolist() == [1]
