"""Open-loop load for the chaos benchmark: quotes and events on a fixed schedule, and one outcome per
acknowledged quote, each request timed from its scheduled time.

The quote/event stream is a JSON-lines file (`{"path": ..., "body": ...}`, sent in file order and
cycled), request k due at start + k / `--stream-rate` whatever happened to earlier ones. Every quote
answered 200 schedules one `POST /v1/outcomes` for one of its items, due `--outcome-delay` seconds
after the quote was due (or at its answer, if that came later): so at a healthy server the offered
rate is the stream's plus its quotes', and a quote that failed has no outcome to report. Latency
counts from the due time (no coordinated omission); a request not answered within `--timeout`, or
cut off, has status 0 and counts at the timeout.

Not `_loadgen.py`: that generator sends prebuilt bytes and keeps no answer, and an outcome needs the
`quote_id` of its quote's answer. This one is asyncio (uvloop when installed) on raw streams,
`--conns` keep-alive connections, and reports its own CPU time.

    python benchmarks/_chaos_loadgen.py --port 8000 --stream mix.jsonl --stream-rate 165 \
        --duration 60 --out run.npz --acks acks.json

Prints `{"start": ...}` when the first request is due, then a summary when done (JSON lines).
`--out` (.npz): per request `due` (CLOCK_MONOTONIC s), `lat` (s), `status` (0: no answer), `kind`
(0 quote, 1 event, 2 outcome), `degraded` (quotes answered 200: 0/1, else -1), `version` (the
quote's model_version as an int, else -1). `--acks` (JSON): the acknowledged quotes
(`[quote_id, items quoted]`) and outcomes (`[offer_id, purchased]`), the run's start, end and CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import build_request  # noqa: E402

QUOTE, EVENT, OUTCOME = 0, 1, 2
PATH_KIND = {"/v1/quote": QUOTE, "/v1/events": EVENT, "/v1/outcomes": OUTCOME}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Conn:
    """One keep-alive connection (at most one request in flight)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def _exchange(conn: Conn, raw: bytes) -> tuple[int, bytes, bool]:
    """(status, body, server closes) of one request on `conn`."""
    conn.writer.write(raw)
    head = await conn.reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    length = 0
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        length = int(lower[i + 17 : j])
    body = await conn.reader.readexactly(length) if length else b""
    return status, body, b"\r\nconnection: close" in lower


class ChaosLoad:
    def __init__(self, args: argparse.Namespace, stream: list[tuple[int, bytes]]) -> None:
        self.args = args
        self.stream = stream
        self.pool: asyncio.Queue[Conn | None] = asyncio.Queue()
        for _ in range(args.conns):
            self.pool.put_nowait(None)  # connected on first use
        self.due: list[float] = []
        self.lat: list[float] = []
        self.status: list[int] = []
        self.kind: list[int] = []
        self.degraded: list[int] = []
        self.version: list[int] = []
        self.quotes: list[tuple[str, int]] = []
        self.outcomes: list[tuple[str, int]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random(args.seed)

    def _record(self, kind: int, due: float) -> int:
        self.due.append(due)
        self.lat.append(float("nan"))
        self.status.append(0)
        self.kind.append(kind)
        self.degraded.append(-1)
        self.version.append(-1)
        return len(self.due) - 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.args.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(reader, writer)

    async def _send(self, raw: bytes) -> tuple[int, bytes]:
        conn = await self.pool.get()
        keep = False
        try:
            if conn is None:
                conn = await self._connect()
            status, body, close = await _exchange(conn, raw)
            keep = not close
            return status, body
        finally:
            if not keep and conn is not None:
                conn.close()
            self.pool.put_nowait(conn if keep else None)

    async def request(self, k: int, raw: bytes) -> tuple[int, bytes] | None:
        """Send request k; its status and latency are recorded; (status, body) or None."""
        timeout = self.args.timeout
        left = self.due[k] + timeout - time.monotonic()
        try:
            status, body = await asyncio.wait_for(self._send(raw), max(left, 0.0))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            self.lat[k] = timeout
            return None
        self.lat[k] = min(time.monotonic() - self.due[k], timeout)
        self.status[k] = status
        return status, body

    async def quote(self, k: int, raw: bytes) -> None:
        got = await self.request(k, raw)
        if got is None or got[0] != 200:
            return
        try:
            answer = orjson.loads(got[1])
            quote_id, items = str(answer["quote_id"]), answer["items"]
            self.degraded[k] = int(bool(answer.get("degraded")))
            with contextlib.suppress(TypeError, ValueError):
                self.version[k] = int(answer.get("model_version"))
        except (ValueError, KeyError, TypeError):
            return  # not a quote: recorded as a 200 without an acknowledgement to check
        self.quotes.append((quote_id, len(items)))
        if items:
            item = items[self.rng.randrange(len(items))]["item_id"]
            purchased = self.rng.random() < self.args.purchase_share
            due = max(self.due[k] + self.args.outcome_delay, time.monotonic())
            self._spawn(self.outcome(due, quote_id, str(item), purchased))

    async def outcome(self, due: float, quote_id: str, item: str, purchased: bool) -> None:
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        k = self._record(OUTCOME, due)
        body = orjson.dumps({"quote_id": quote_id, "item_id": item, "purchased": purchased})
        got = await self.request(
            k, build_request("127.0.0.1", self.args.port, "/v1/outcomes", body)
        )
        if got is None or got[0] != 200:
            return
        try:
            offer_id = str(orjson.loads(got[1])["offer_id"])
        except (ValueError, KeyError, TypeError):
            return
        self.outcomes.append((offer_id, int(purchased)))

    async def plain(self, k: int, raw: bytes) -> None:
        await self.request(k, raw)

    async def run(self) -> tuple[float, float, float]:
        args = self.args
        n = int(round(args.stream_rate * args.duration))
        cpu0 = cpu_seconds()
        start = time.monotonic()
        print(json.dumps({"start": start}), flush=True)  # the caller's clock for its faults
        for j in range(n):
            due = start + j / args.stream_rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            kind, raw = self.stream[j % len(self.stream)]
            k = self._record(kind, due)
            self._spawn(self.quote(k, raw) if kind == QUOTE else self.plain(k, raw))
        while self.tasks:  # the answers, then the outcomes they scheduled
            await asyncio.wait(set(self.tasks))
        end = time.monotonic()
        cpu = cpu_seconds() - cpu0
        while not self.pool.empty():
            conn = self.pool.get_nowait()
            if conn is not None:
                conn.close()
        return start, end, cpu


def load_stream(path: Path, port: int) -> list[tuple[int, bytes]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            body = json.dumps(rec["body"]).encode()
            out.append(
                (PATH_KIND[rec["path"]], build_request("127.0.0.1", port, rec["path"], body))
            )
    if not out:
        raise SystemExit(f"no requests in {path}")
    return out


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    gen = ChaosLoad(args, load_stream(Path(args.stream), args.port))
    start, end, cpu = await gen.run()
    np.savez(
        args.out,
        due=np.array(gen.due),
        lat=np.array(gen.lat),
        status=np.array(gen.status, np.int16),
        kind=np.array(gen.kind, np.int8),
        degraded=np.array(gen.degraded, np.int8),
        version=np.array(gen.version, np.int32),
    )
    summary = {
        "start": start,
        "end": end,
        "cpu_s": cpu,
        "sent": len(gen.due),
        "stream_rate": args.stream_rate,
        "timeout_s": args.timeout,
        "conns": args.conns,
    }
    Path(args.acks).write_bytes(
        orjson.dumps({**summary, "quotes": gen.quotes, "outcomes": gen.outcomes})
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stream", required=True, help='JSON lines {"path", "body"}: quotes, events')
    ap.add_argument("--stream-rate", type=float, required=True, help="quotes + events per second")
    ap.add_argument("--duration", type=float, required=True, help="seconds of the stream")
    ap.add_argument("--outcome-delay", type=float, default=0.5, help="s after the quote was due")
    ap.add_argument("--purchase-share", type=float, default=0.1, help="outcomes that are buys")
    ap.add_argument("--timeout", type=float, default=2.0, help="per request, seconds")
    ap.add_argument("--conns", type=int, default=64, help="keep-alive connections at most")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="per-request records (.npz)")
    ap.add_argument("--acks", required=True, help="acknowledged quotes and outcomes (.json)")
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    print(json.dumps(runner(_main(args))), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
