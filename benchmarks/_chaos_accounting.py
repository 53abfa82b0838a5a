"""The chaos benchmark's accounting: pure functions of per-request records, fault windows and the
exported offer log (numpy only; no servers, no clock), so a unit test can check them on
constructed records.

A request record (one row per request, arrays of equal length): `due` (its scheduled time, s),
`lat` (s from `due`; the timeout for one never answered), `status` (HTTP status, 0: no answer),
`kind` (0 quote, 1 event, 2 outcome) and `degraded` (1: a 200 quote that said `degraded: true`,
0: a 200 quote that did not, -1: anything else).

- A request is *good* when it was answered 200 and, for a quote, not degraded.
- Recovery: the time from a fault's healing (or, for a killed worker, from the kill) to the due
  time of the first request of the first run of `streak` consecutive good requests (in due order)
  due at or after it; 0 when that run starts with the first request due after it (nothing failed
  once healed); None when no such run comes before the end of the records.
- Percentiles count a request that failed (any status but 200, or no answer) at the timeout, the
  worst a caller would see; `p99_ok_ms` is over the 200 answers alone.
- Lost acknowledgements: a quote answered 200 is lost when the export lacks any of the offers it
  quoted (`<quote_id>:<item_id>`, counted per quote id); an outcome answered 200 is lost when its
  offer is not among the export's reported outcomes, and mislabelled when it is with another label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

QUOTE, EVENT, OUTCOME = 0, 1, 2
KIND_NAMES = {QUOTE: "quote", EVENT: "event", OUTCOME: "outcome"}


def stream_plan(total_rps: float, events_share: float) -> tuple[float, float]:
    """(rate of the quote/event stream, share of events in it) for `total_rps` in all, of which
    `events_share` are events, when every quote is followed by one outcome.

    With a stream of s req/s holding a share p of events: quotes s(1 - p), outcomes as many, total
    s(2 - p), events sp. Solving sp / s(2 - p) = e gives p = 2e / (1 + e).
    """
    if not 0 <= events_share < 1:
        raise ValueError(f"events_share must be in [0, 1), got {events_share}")
    p = 2 * events_share / (1 + events_share)
    return total_rps / (2 - p), p


@dataclass(frozen=True)
class Records:
    """Per-request records (see the module docstring), in any order."""

    due: np.ndarray
    lat: np.ndarray
    status: np.ndarray
    kind: np.ndarray
    degraded: np.ndarray

    @classmethod
    def of(cls, **arrays: Any) -> Records:
        return cls(
            due=np.asarray(arrays["due"], float),
            lat=np.asarray(arrays["lat"], float),
            status=np.asarray(arrays["status"], int),
            kind=np.asarray(arrays["kind"], int),
            degraded=np.asarray(arrays["degraded"], int),
        )

    @property
    def good(self) -> np.ndarray:
        return (self.status == 200) & (self.degraded != 1)

    def select(self, mask: np.ndarray) -> Records:
        return Records(
            self.due[mask], self.lat[mask], self.status[mask], self.kind[mask], self.degraded[mask]
        )


def recovery_time(rec: Records, healed_at: float, streak: int) -> float | None:
    """Seconds from `healed_at` to the start of the first run of `streak` good requests due at or
    after it (see the module docstring); None when there is none."""
    if streak < 1:
        raise ValueError("streak must be at least 1")
    after = rec.due >= healed_at
    due = rec.due[after]
    order = np.argsort(due, kind="stable")
    due, good = due[order], rec.good[after][order]
    run = 0
    for i, ok in enumerate(good):
        run = run + 1 if ok else 0
        if run == streak:
            first = i - streak + 1
            return 0.0 if first == 0 else float(due[first] - healed_at)
    return None


def in_windows(due: np.ndarray, windows: Iterable[tuple[float, float]]) -> np.ndarray:
    """Whether each time falls in any half-open window [start, end)."""
    mask = np.zeros(len(due), bool)
    for lo, hi in windows:
        mask |= (due >= lo) & (due < hi)
    return mask


def _pct(values_ms: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values_ms, q)), 2) if len(values_ms) else None


def window_stats(rec: Records, timeout: float) -> dict[str, Any]:
    """Counts, failure and degraded shares and latency percentiles of a set of requests."""
    n = len(rec.due)
    ok = rec.status == 200
    quotes_ok = ok & (rec.kind == QUOTE)
    degraded = quotes_ok & (rec.degraded == 1)
    lat_ms = np.where(ok, rec.lat, timeout) * 1e3
    values, counts = np.unique(rec.status, return_counts=True)
    by_kind = {}
    for k, name in KIND_NAMES.items():
        sel = rec.kind == k
        by_kind[name] = {
            "sent": int(sel.sum()),
            "ok": int((ok & sel).sum()),
            "status_5xx": int((sel & (rec.status >= 500)).sum()),
            "no_answer": int((sel & (rec.status == 0)).sum()),
        }
    return {
        "requests": n,
        "ok": int(ok.sum()),
        "status_5xx": int((rec.status >= 500).sum()),
        "no_answer": int((rec.status == 0).sum()),
        "status_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "failed_share": round(float((~ok).mean()), 4) if n else None,
        "quotes_ok": int(quotes_ok.sum()),
        "quotes_degraded": int(degraded.sum()),
        # of the quotes answered 200, the share that said `degraded: true`
        "degraded_share": round(float(degraded.sum() / quotes_ok.sum()), 4)
        if quotes_ok.any()
        else None,
        # of all requests, the share that was not good (failed, or a degraded quote)
        "not_good_share": round(float((~rec.good).mean()), 4) if n else None,
        "p50_ms": _pct(lat_ms, 50),
        "p99_ms": _pct(lat_ms, 99),
        "p99_ok_ms": _pct(rec.lat[ok] * 1e3, 99),
        "by_kind": by_kind,
    }


def lost_acknowledgements(
    acked_quotes: Sequence[tuple[str, int]],
    acked_outcomes: Sequence[tuple[str, int]],
    quoted_offer_ids: Iterable[str],
    reported: Mapping[str, int],
    examples: int = 5,
) -> dict[str, Any]:
    """Acknowledged quotes and outcomes the exported log does not hold (see the module docstring).

    Args:
        acked_quotes: (quote_id, items quoted) of every quote answered 200.
        acked_outcomes: (offer_id, purchased 0/1) of every outcome answered 200.
        quoted_offer_ids: every offer id of the export with pending offers included.
        reported: offer id -> purchased of the export's reported outcomes.
    """
    per_quote = Counter(str(o).split(":", 1)[0] for o in quoted_offer_ids)
    lost_q = [q for q, n in acked_quotes if per_quote.get(q, 0) < n]
    lost_o = [o for o, _ in acked_outcomes if o not in reported]
    wrong = [o for o, p in acked_outcomes if o in reported and int(reported[o]) != int(p)]
    return {
        "acknowledged_quotes": len(acked_quotes),
        "acknowledged_outcomes": len(acked_outcomes),
        "lost_quotes": len(lost_q),
        "lost_outcomes": len(lost_o),
        "mislabelled_outcomes": len(wrong),
        "lost_examples": (lost_q + lost_o + wrong)[:examples],
    }


def timeline(
    rec: Records, t0: float, timeout: float, bucket_s: float = 1.0
) -> list[list[float | int]]:
    """Per `bucket_s` of due time from `t0`: [start s, sent, ok, 5xx, no answer, degraded quotes,
    p99 ms with failures at the timeout]; a compact view of the run."""
    if not len(rec.due):
        return []
    idx = np.floor((rec.due - t0) / bucket_s).astype(int)
    out: list[list[float | int]] = []
    for b in range(int(idx.min()), int(idx.max()) + 1):
        sel = idx == b
        if not sel.any():
            continue
        ok = rec.status[sel] == 200
        lat_ms = np.where(ok, rec.lat[sel], timeout) * 1e3
        out.append(
            [
                round(b * bucket_s, 3),
                int(sel.sum()),
                int(ok.sum()),
                int((rec.status[sel] >= 500).sum()),
                int((rec.status[sel] == 0).sum()),
                int((ok & (rec.degraded[sel] == 1)).sum()),
                round(float(np.percentile(lat_ms, 99)), 1),
            ]
        )
    return out
