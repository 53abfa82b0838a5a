"""A low-overhead HTTP/1.1 load generator (raw asyncio sockets, keep-alive), run as its own process.

Open loop (default): request k is due at start + k / rate whatever happened to earlier ones, and its
latency is measured from that due time, so a stalled server shows up as latency instead of silently
lowering the offered load (no coordinated omission). Closed loop (`--closed N`): N clients, each
sending its next request when the last one answered (the most a slow server can do).

    python benchmarks/_loadgen.py --port 8000 --bodies bodies.jsonl --rate 500 --duration 5

Prints one JSON object; `--dump FILE.npy` also saves (due time [CLOCK_MONOTONIC s], latency [s],
ok) per request, so another process can slice the run by wall-clock windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np


class Conn:
    """One keep-alive connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status


def build_requests(host: str, port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    bodies = [line.encode() for line in Path(args.bodies).read_text().splitlines() if line.strip()]
    reqs = build_requests(args.host, args.port, args.path, bodies)
    n_conns = args.closed or args.conns
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(n_conns):
        r, w = await asyncio.open_connection(args.host, args.port)
        pool.put_nowait(Conn(r, w))

    due_t: list[float] = []
    lat: list[float] = []
    ok: list[bool] = []
    max_requests = int(args.rate * args.duration) if not args.closed else args.max_requests

    async def one(k: int, due: float) -> None:
        conn = await pool.get()
        try:
            status = await asyncio.wait_for(conn.request(reqs[k % len(reqs)]), args.timeout)
            good = status == 200
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            good = False
            try:  # replace the broken connection
                conn.writer.close()
                r, w = await asyncio.open_connection(args.host, args.port)
                conn = Conn(r, w)
            except OSError:
                pass
        finally:
            pool.put_nowait(conn)
        due_t.append(due)
        lat.append(time.monotonic() - due)
        ok.append(good)

    start = time.monotonic()
    if args.closed:
        end = start + args.duration
        counter = iter(range(max_requests))

        async def client() -> None:
            for k in counter:
                if time.monotonic() > end:
                    return
                await one(k, time.monotonic())

        await asyncio.gather(*(client() for _ in range(args.closed)))
    else:
        tasks = []
        interval = 1.0 / args.rate
        for k in range(max_requests):
            due = start + k * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, due)))
        await asyncio.wait_for(asyncio.gather(*tasks), args.duration + 10 * args.timeout)
    elapsed = time.monotonic() - start
    while not pool.empty():
        pool.get_nowait().writer.close()

    lat_a, ok_a = np.asarray(lat), np.asarray(ok, bool)
    if args.dump:
        np.save(args.dump, np.stack([np.asarray(due_t), lat_a, ok_a.astype(float)], axis=1))
    good = lat_a[ok_a] * 1e3
    warm = int(
        len(lat_a) * args.warmup_share
    )  # the first requests pay connection and cache warm-up
    steady = np.sort(lat_a[warm:][ok_a[warm:]]) * 1e3
    return {
        "mode": "closed" if args.closed else "open",
        "offered_rps": float(args.rate) if not args.closed else float("nan"),
        "sent": len(lat_a),
        "ok": int(ok_a.sum()),
        "failed": int((~ok_a).sum()),
        "achieved_rps": round(float(ok_a.sum() / elapsed), 1),
        "p50_ms": round(float(np.percentile(steady, 50)), 3) if len(steady) else float("nan"),
        "p99_ms": round(float(np.percentile(steady, 99)), 3) if len(steady) else float("nan"),
        "max_ms": round(float(good.max()), 3) if len(good) else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/quote")
    ap.add_argument("--bodies", required=True, help="JSON request bodies, one per line (cycled)")
    ap.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds")
    ap.add_argument("--conns", type=int, default=64, help="open loop: connection pool size")
    ap.add_argument("--closed", type=int, default=0, help="closed loop with this many clients")
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    ap.add_argument("--warmup-share", type=float, default=0.05)
    ap.add_argument("--dump", default=None)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
