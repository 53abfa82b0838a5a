"""Small helpers the scorer benchmark shares: a blocking keep-alive HTTP client on a raw socket, and
CPU accounting of processes from /proc.

The client exists for measurements that send one request at a time and time each answer (the
freshness trials, the reload calls): a raw socket keeps the client's own cost to a few tens of
microseconds, so the figure is the server's, not an HTTP library's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from _loadgen import build_request, response_size

_TICKS = os.sysconf("SC_CLK_TCK")


class RawClient:
    """One keep-alive connection to 127.0.0.1:`port`; `post`/`get` return (status, JSON body)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = s
        return self.sock

    def request(self, raw: bytes) -> tuple[int, Any]:
        s = self._connect()
        try:
            s.sendall(raw)
            buf = bytearray()
            while True:
                parsed = response_size(buf)
                if parsed is not None:
                    break
                data = s.recv(1 << 16)
                if not data:
                    raise ConnectionError("the server closed the connection")
                buf += data
        except OSError:
            self.close()
            raise
        total, status, close = parsed
        end = buf.find(b"\r\n\r\n") + 4
        body = bytes(buf[end:total])
        if close:
            self.close()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, body.decode(errors="replace")

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = build_request("127.0.0.1", self.port, path, json.dumps(body).encode())
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
            head, _, rest = raw.partition(b"\r\n")
            raw = head + b"\r\n" + extra + rest
        return self.request(raw)

    def get(self, path: str) -> tuple[int, Any]:
        raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode()
        return self.request(raw)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall seconds) from /proc/stat, all cores summed."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in parts]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / _TICKS, time.monotonic()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
