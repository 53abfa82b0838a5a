"""A low-CPU HTTP/1.1 load generator: prebuilt requests on raw non-blocking sockets, one epoll loop.

Open loop (default): request k is due at start + k / rate whatever happened to earlier ones, and its
latency is measured from that due time, so a stalled server shows up as latency instead of silently
lowering the offered load (no coordinated omission). A request that waits for a free connection
still counts from its due time. Closed loop (`--closed N`): N clients, each sending its next request
when the last one answered (a warm-up, or the most a slow server can do).

Failures count: a request answered with a status other than 200, cut off, or not answered within
`--timeout` is failed, and enters the percentiles at the timeout (the worst a caller would see).
The accounting (per-request records -> the summary) is `account`, a pure function of the records.

Requests come from a JSON-lines file, one `{"path": ..., "body": ...}` per line, sent in file order
and cycled; the file sets the traffic mix (the scorer benchmark interleaves 10% POST /v1/events).
Every request is encoded once before the clock starts; per request the loop only sends bytes,
reads until Content-Length is satisfied and records three numbers. The process reports its own CPU
time, so a reader can see what the generator took from the cores it shares with the server.

    python benchmarks/_loadgen.py --port 8000 --requests mix.jsonl --rate 500 --duration 5

Prints one JSON object; `--dump FILE.npy` also saves per request: due time (CLOCK_MONOTONIC s),
latency (s; the timeout for a timed-out one), HTTP status (0: no answer), and the request's path
index (0, 1, ... in order of first appearance), so another process can slice the run by time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import resource
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_HEAD_END = b"\r\n\r\n"


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """One keep-alive HTTP/1.1 POST with a JSON body, as bytes ready to send."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def response_size(buf: bytes | bytearray) -> tuple[int, int, bool] | None:
    """(total bytes, status, close) of the first response in `buf`, or None while incomplete.

    Handles Content-Length and chunked bodies (the scorer always sends a length).
    """
    end = buf.find(_HEAD_END)
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    close = b"\r\nconnection: close" in head
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        total = end + 4 + length
        return (total, status, close) if len(buf) >= total else None
    if b"\r\ntransfer-encoding: chunked" in head:
        stop = buf.find(b"\r\n0\r\n\r\n", end)
        if stop < 0:
            stop = buf.find(b"0\r\n\r\n", end + 4, end + 9)
            return (end + 9, status, close) if stop == end + 4 else None
        return stop + 7, status, close
    return end + 4, status, close


@dataclass
class Conn:
    """One keep-alive connection: at most one request in flight."""

    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    k: int = -1  # the request in flight, -1 when idle
    sent_at: float = 0.0


class LoadGen:
    """The epoll loop; `run()` returns per-request arrays."""

    def __init__(self, args: argparse.Namespace, reqs: list[bytes], kinds: list[int]) -> None:
        self.args = args
        self.reqs = reqs
        self.kinds = kinds
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.idle: collections.deque[Conn] = collections.deque()
        self.backlog: collections.deque[int] = collections.deque()
        n = args.max_requests if args.closed else int(round(args.rate * args.duration))
        self.n = n
        self.due = np.zeros(n)
        self.lat = np.full(n, np.nan)
        self.status = np.zeros(n, np.int16)
        self.kind = np.array([kinds[k % len(kinds)] for k in range(n)], np.int8)
        self.send_lag = np.zeros(n)
        self.done = 0
        self.reconnects = 0

    def _connect(self) -> Conn:
        s = socket.create_connection((self.args.host, self.args.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn(s)
        self.conns[s.fileno()] = c
        self.ep.register(s.fileno(), select.EPOLLIN)
        return c

    def _drop(self, c: Conn) -> None:
        fd = c.sock.fileno()
        self.conns.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        c.sock.close()

    def _replace(self, c: Conn) -> None:
        """Close a broken or timed-out connection and put a fresh one in the idle pool."""
        self._drop(c)
        self.reconnects += 1
        with contextlib.suppress(OSError):  # the server is gone: the backlog times out
            self.idle.append(self._connect())

    def _finish(self, k: int, now: float, status: int) -> None:
        self.lat[k] = now - self.due[k]
        self.status[k] = status
        self.done += 1

    def _send(self, c: Conn, k: int, now: float) -> None:
        c.k, c.sent_at = k, now
        self.send_lag[k] = now - self.due[k]
        try:
            c.sock.send(self.reqs[k % len(self.reqs)])  # small: the kernel takes it whole
        except OSError:
            self._finish(k, now, 0)
            c.k = -1
            self._replace(c)

    def _dispatch(self, k: int, now: float) -> None:
        if self.idle:
            self._send(self.idle.popleft(), k, now)
        else:
            self.backlog.append(k)

    def _release(self, c: Conn, now: float) -> None:
        c.k = -1
        if self.backlog:
            self._send(c, self.backlog.popleft(), now)
        else:
            self.idle.append(c)

    def _on_readable(self, c: Conn, now: float) -> None:
        try:
            data = c.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the server closed the connection
            if c.k >= 0:
                self._finish(c.k, now, 0)
                c.k = -1
            self._replace(c)
            return
        c.buf += data
        parsed = response_size(c.buf)
        if parsed is None:
            return
        total, status, close = parsed
        del c.buf[:total]
        if c.k >= 0:
            self._finish(c.k, now, status)
        if close:
            c.k = -1
            self._replace(c)
        else:
            self._release(c, now)

    def _expire(self, now: float) -> None:
        """Fail requests older than the timeout (in flight or still waiting for a connection)."""
        limit = self.args.timeout
        for c in list(self.conns.values()):
            if c.k >= 0 and now - self.due[c.k] > limit:
                self.lat[c.k] = limit
                self.status[c.k] = 0
                self.done += 1
                c.k = -1
                self._replace(c)
        while self.backlog and now - self.due[self.backlog[0]] > limit:
            k = self.backlog.popleft()
            self.lat[k] = limit
            self.done += 1

    def run(self) -> tuple[float, float, float]:
        """Send everything and wait for the answers; returns (start, end, cpu seconds)."""
        for _ in range(self.args.closed or self.args.conns):
            self.idle.append(self._connect())
        cpu0 = cpu_seconds()
        start = time.monotonic()
        if self.args.closed:
            self._run_closed(start)
        else:
            self._run_open(start)
        end = time.monotonic()
        cpu = cpu_seconds() - cpu0
        for c in list(self.conns.values()):
            self._drop(c)
        return start, end, cpu

    def _poll(self, wait: float) -> None:
        events = self.ep.poll(max(0.0, wait))
        now = time.monotonic()
        for fd, _ in events:
            c = self.conns.get(fd)
            if c is not None:
                self._on_readable(c, now)

    def _run_open(self, start: float) -> None:
        interval = 1.0 / self.args.rate
        self.due[:] = start + np.arange(self.n) * interval
        nxt, last_expire = 0, start
        while nxt < self.n:
            now = time.monotonic()
            while nxt < self.n and self.due[nxt] <= now:
                self._dispatch(nxt, now)
                nxt += 1
            if now - last_expire > 0.01:
                self._expire(now)
                last_expire = now
            if nxt < self.n:
                self._poll(self.due[nxt] - time.monotonic())
        deadline = time.monotonic() + self.args.timeout + 1.0
        while self.done < self.n and time.monotonic() < deadline:
            self._poll(0.01)
            self._expire(time.monotonic())

    def _run_closed(self, start: float) -> None:
        end = start + self.args.duration
        nxt = 0
        while nxt < min(self.args.closed, self.n):
            self.due[nxt] = start
            self._dispatch(nxt, start)
            nxt += 1
        while self.done < nxt:
            self._poll(0.01)
            now = time.monotonic()
            self._expire(now)
            while self.idle and nxt < self.n and now < end:
                self.due[nxt] = now
                self._dispatch(nxt, now)
                nxt += 1
        self.n = nxt
        for name in ("due", "lat", "status", "kind", "send_lag"):
            setattr(self, name, getattr(self, name)[:nxt])


def _counts(status: np.ndarray) -> tuple[list[str], list[int]]:
    values, counts = np.unique(status, return_counts=True)
    return [str(v) for v in values], [int(c) for c in counts]


def percentiles(lat_ms: np.ndarray) -> dict[str, float]:
    if not len(lat_ms):
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    p50, p90, p99 = np.percentile(lat_ms, [50, 90, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
    }


def account(
    due: np.ndarray,
    lat: np.ndarray,
    status: np.ndarray,
    kind: np.ndarray,
    paths: list[str],
    *,
    timeout: float,
    start: float,
    end: float,
    rate: float | None = None,
    send_lag: np.ndarray | None = None,
    cpu: float = 0.0,
    conns: int = 0,
    reconnects: int = 0,
) -> dict[str, Any]:
    """The run as one JSON-able dict, from its per-request records alone (no sockets, no clock).

    One row per request, in send order: `due` the time it was scheduled (s, same clock as `start`
    and `end`), `lat` its latency from `due` (s; NaN: it never finished), `status` the HTTP status
    (0: no answer: cut off, refused or timed out), `kind` its index in `paths`. `rate` is the
    offered rate (None: closed loop).

    - ok: status 200; failed: every other request; timeouts: no answer or no latency (status 0 or
      NaN), a subset of failed.
    - Percentiles (overall and per path) are over every request sent, a failed one counted at the
      timeout whatever its own latency (the worst a caller would see).
    - achieved_rps: the OK requests over the span from `start` to the last OK answer (`end - start`
      when none was OK); failed requests add nothing.
    - events_share: the share of requests sent to /v1/events (0 without such a path).
    - loadgen_cpu_*: `cpu` (the generator's own CPU seconds) per wall second and per request.
    """
    n = len(due)
    ok = status == 200
    timed_out = np.isnan(lat) | (status == 0)
    lat = np.where(np.isnan(lat), timeout, lat)
    lat_ms = np.where(ok, lat, timeout) * 1e3  # a failure counts at the timeout
    done_at = due + lat
    span = float(done_at[ok].max() - start) if ok.any() else end - start
    lag = np.zeros(n) if send_lag is None else send_lag
    out: dict[str, Any] = {
        "mode": "closed" if rate is None else "open",
        "offered_rps": float(rate) if rate is not None else None,
        "duration_s": round(end - start, 3),
        "sent": int(n),
        "ok": int(ok.sum()),
        "failed": int((~ok).sum()),
        "timeouts": int(timed_out.sum()),
        "status_counts": dict(zip(*_counts(status), strict=True)),
        "achieved_rps": round(float(ok.sum()) / span, 1) if span > 0 else 0.0,
        **percentiles(lat_ms),
        "max_ms": round(float(lat_ms.max()), 3) if len(lat_ms) else float("nan"),
        "timeout_ms": timeout * 1e3,
        "by_path": {},
        "send_lag_p99_ms": round(float(np.percentile(lag, 99)) * 1e3, 3) if n else 0.0,
        "conns": conns,
        "reconnects": reconnects,
        "loadgen_cpu_s": round(cpu, 3),
        "loadgen_cpu_cores": round(cpu / max(end - start, 1e-9), 4),
        "loadgen_cpu_us_per_request": round(cpu / max(n, 1) * 1e6, 1),
    }
    for k, path in enumerate(paths):
        sel = kind == k
        out["by_path"][path] = {
            "sent": int(sel.sum()),
            "failed": int((~ok & sel).sum()),
            **percentiles(lat_ms[sel]),
        }
    out["events_share"] = (
        round(float(np.mean(kind == paths.index("/v1/events"))), 4)
        if "/v1/events" in paths and n
        else 0.0
    )
    return out


def summarize(
    gen: LoadGen, paths: list[str], start: float, end: float, cpu: float
) -> dict[str, Any]:
    """The run as one JSON-able dict: rates, failures, percentiles (overall and per path), CPU."""
    args = gen.args
    return account(
        gen.due,
        gen.lat,
        gen.status,
        gen.kind,
        paths,
        timeout=args.timeout,
        start=start,
        end=end,
        rate=None if args.closed else float(args.rate),
        send_lag=gen.send_lag,
        cpu=cpu,
        conns=len(gen.conns) if gen.conns else (args.closed or args.conns),
        reconnects=gen.reconnects,
    )


def load_requests(path: Path, host: str, port: int) -> tuple[list[bytes], list[int], list[str]]:
    """(encoded requests, path index of each, distinct paths) from a JSON-lines mix file."""
    reqs, kinds, paths = [], [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        p = rec["path"]
        if p not in paths:
            paths.append(p)
        body = rec["body"] if isinstance(rec["body"], str) else json.dumps(rec["body"])
        reqs.append(build_request(host, port, p, body.encode()))
        kinds.append(paths.index(p))
    if not reqs:
        raise SystemExit(f"no requests in {path}")
    return reqs, kinds, paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", required=True, help='JSON lines {"path", "body"}, cycled')
    ap.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of sending")
    ap.add_argument("--conns", type=int, default=32, help="open loop: connections (pre-opened)")
    ap.add_argument("--closed", type=int, default=0, help="closed loop with this many clients")
    ap.add_argument("--max-requests", type=int, default=200_000, help="closed loop: at most")
    ap.add_argument("--timeout", type=float, default=1.0, help="per request, seconds")
    ap.add_argument("--dump", default=None, help="save per-request arrays to this .npy")
    args = ap.parse_args()
    reqs, kinds, paths = load_requests(Path(args.requests), args.host, args.port)
    gen = LoadGen(args, reqs, kinds)
    start, end, cpu = gen.run()
    if args.dump:
        lat = np.where(np.isnan(gen.lat), args.timeout, gen.lat)
        np.save(
            args.dump,
            np.stack([gen.due, lat, gen.status.astype(float), gen.kind.astype(float)], axis=1),
        )
    print(json.dumps(summarize(gen, paths, start, end, cpu)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    try:
        main()
    except BrokenPipeError:  # the reader went away
        raise SystemExit(errno.EPIPE) from None
