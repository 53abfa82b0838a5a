"""A small asyncio Redis client for the quote path's two round trips, so the event loop never waits.

The store's blocking client (redis-py) serves everything else. On the quote path a blocked event
loop is a stalled worker: while it waits for Redis it cannot parse, price or answer the requests
queued behind, and on a busy machine that wait is where latency comes from. This client sends
prebuilt commands (hiredis-packed) over one connection per event loop and parses replies with
hiredis as they arrive; concurrent quotes share the connection, their commands pipelined in order.

What it keeps from the blocking client: the URL's credentials and database (AUTH, SELECT on
connect), a timeout per request (on expiry the connection is dropped, so a late reply can never be
read as another request's), and one reconnect-and-retry when a connection turns out dead (a
restarted Redis). Errors are `ConnectionError` (`RedisAuthError` when the credentials are refused)
/ `TimeoutError`; the store turns them into `StoreUnavailable` behind the same circuit breaker.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Mapping
from typing import Any

import hiredis


class RedisAuthError(ConnectionError):
    """Redis refused the URL's credentials (AUTH answered with an error)."""

    reason = "store_auth"  # scorer.state.STORE_AUTH


class _Connection(asyncio.Protocol):
    """One Redis connection: requests go out in order and are answered in order (FIFO)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = hiredis.Reader()
        self.transport: Any = None  # asyncio's or uvloop's transport (uvloop's is its own class)
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            future, n, replies = waiting[0]
            replies.append(reply)
            if len(replies) == n:
                waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            future, _, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(type(error)(*error.args))

    def abort(self, error: Exception) -> None:
        """Drop the connection and fail everything in flight on it."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(error)

    async def request(self, packed: bytes, n: int, timeout: float) -> list[Any]:
        """Send `packed` (n commands) and return their n replies (error replies as instances)."""
        if self.closed or self.transport is None:
            raise ConnectionError("redis connection is closed")
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        self.waiting.append((future, n, []))
        self.transport.write(packed)
        timer = self.loop.call_later(
            timeout, self.abort, TimeoutError(f"redis did not answer within {timeout} s")
        )
        try:
            return await future
        finally:
            timer.cancel()


class AsyncRedis:
    """Connections per event loop to the Redis of a redis-py connection pool's settings."""

    def __init__(self, connection_kwargs: Mapping[str, Any], timeout: float) -> None:
        self.kwargs = dict(connection_kwargs)
        self.timeout = timeout
        self._conns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._connecting: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Future[_Connection]
        ] = weakref.WeakKeyDictionary()

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        kw = self.kwargs
        if kw.get("path"):
            connecting = loop.create_unix_connection(lambda: _Connection(loop), kw["path"])
        else:
            host, port = kw.get("host", "localhost"), int(kw.get("port", 6379))
            connecting = loop.create_connection(lambda: _Connection(loop), host, port)
        _, conn = await asyncio.wait_for(connecting, self.timeout)
        hello: list[tuple[Any, ...]] = []
        if kw.get("password"):
            user = kw.get("username")
            hello.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
        if int(kw.get("db") or 0):
            hello.append(("SELECT", int(kw["db"])))
        if hello:
            packed = b"".join(hiredis.pack_command(c) for c in hello)
            replies = await conn.request(packed, len(hello), self.timeout)
            for command, reply in zip(hello, replies, strict=True):
                if isinstance(reply, hiredis.ReplyError):
                    conn.abort(ConnectionError("closed"))
                    error = RedisAuthError if command[0] == "AUTH" else ConnectionError
                    raise error(f"redis refused the connection: {reply}")
        return conn

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(loop)
        if pending is None:
            pending = self._connecting[loop] = loop.create_future()
            try:
                conn = await self._connect(loop)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: the waiters (if any) get it too
                raise
            finally:
                del self._connecting[loop]
            self._conns[loop] = conn
            pending.set_result(conn)
            return conn
        return await asyncio.shield(pending)

    async def execute(self, packed: bytes, n: int) -> list[Any]:
        """Send n packed commands, return their replies; one retry on a connection found dead."""
        conn = await self._connection()
        try:
            return await conn.request(packed, n, self.timeout)
        except ConnectionError:
            if not conn.closed:
                raise
        conn = await self._connection()  # it was dead (Redis restarted): once more, afresh
        return await conn.request(packed, n, self.timeout)

    def close(self) -> None:
        """Close the connection of the running loop (call on that loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        conn = self._conns.pop(loop, None)
        if conn is not None and conn.transport is not None:
            conn.closed = True
            conn.transport.close()
