"""A `UserStore` in Redis, so several scorer processes share users' histories, states and sticky prices.

Keys (all of one user share a hash tag, so they live in one cluster slot and a Lua script may touch
them together):

- `{p}:{u}:ev`        list of the user's recent events (JSON), capped with LTRIM
- `{p}:{u}:gen`       the user's history generation (INCR on every append or invalidation)
- `{p}:{u}:st:{model}`  the cached state for one model (name@version): 8-byte generation + encoded state
- `{p}:{u}:lp:{sess}` hash item_id -> last quoted price within the session, with a TTL

A state is written only if the generation it was computed from is still current (a Lua check-and-set),
and read together with the current generation (one MGET): a stale state is never served as fresh.

When Redis is unreachable every call raises `StoreUnavailable` quickly: after one failure the store
stops trying for `retry_after` seconds (a circuit breaker), so a dead Redis costs a quote microseconds,
not a connect timeout. redis-py's pool reconnects on its own once Redis is back.
"""

from __future__ import annotations

import pickle
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from scorer.state import Event

T = TypeVar("T")

_GEN = struct.Struct("<q")
_F64 = struct.Struct("<d")

# Write the state only if the user's generation is still the one it was computed from.
_PUT_STATE = """
local gen = tonumber(redis.call('GET', KEYS[1]) or '0')
if gen == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class StoreUnavailable(ConnectionError):
    """The online store cannot be reached; callers degrade (quotes) or answer 503 (events)."""


# --- state encoding ------------------------------------------------------------------------------


def _encode_array(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    dtype = a.dtype.str.encode()
    head = bytes([len(dtype)]) + dtype + bytes([a.ndim]) + struct.pack(f"<{a.ndim}q", *a.shape)
    return head + a.tobytes()


def _decode_array(buf: memoryview) -> np.ndarray:
    n = buf[0]
    dtype = np.dtype(bytes(buf[1 : 1 + n]).decode())
    pos = 1 + n
    ndim = buf[pos]
    shape = struct.unpack_from(f"<{ndim}q", buf, pos + 1)
    pos += 1 + 8 * ndim
    return np.frombuffer(buf[pos:], dtype=dtype).reshape(shape).copy()


def encode_state(state: Any) -> bytes:
    """Compact bytes for a user state: raw float64/array bytes when possible, pickle otherwise.

    Tags: `f` a float, `a` a numeric numpy array, `t` a torch tensor (stored as its numpy bytes),
    `p` anything else (opaque tuples, pandas objects) as pickle.
    """
    if isinstance(state, float | int | np.floating | np.integer) and not isinstance(state, bool):
        return b"f" + _F64.pack(float(state))
    if isinstance(state, np.ndarray) and state.dtype.kind in "fiub":
        return b"a" + _encode_array(state)
    if type(state).__module__ == "torch" and type(state).__name__ == "Tensor":
        return b"t" + _encode_array(state.detach().cpu().numpy())
    return b"p" + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def decode_state(data: bytes | memoryview) -> Any:
    """The inverse of `encode_state`."""
    buf = memoryview(data)
    tag = bytes(buf[:1])
    if tag == b"f":
        return _F64.unpack_from(buf, 1)[0]
    if tag == b"a":
        return _decode_array(buf[1:])
    if tag == b"t":
        import torch  # only a model that uses tensors gets here

        return torch.from_numpy(_decode_array(buf[1:]))
    if tag == b"p":
        return pickle.loads(buf[1:])  # noqa: S301 - our own Redis, written by our own scorer
    raise ValueError(f"unknown state encoding tag {tag!r}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)  # timestamps and other scalars the contract writes as text


def _fresh_state(gen: Any, blob: Any) -> Any | None:
    """The state in `blob` if it was computed from generation `gen` (the current one), else None."""
    if not isinstance(blob, bytes) or len(blob) < _GEN.size:
        return None
    if _GEN.unpack_from(blob)[0] != int(gen or 0):
        return None  # computed from a history that has moved on
    return decode_state(memoryview(blob)[_GEN.size :])


# --- the store -----------------------------------------------------------------------------------


class RedisUserStore:
    """The `UserStore` protocol over one Redis (thread-safe: redis-py's pool).

    Args:
        client: a `redis.Redis` (its timeouts and retries are what the store gets); see `from_url`.
        prefix: key prefix, so several deployments can share one Redis.
        max_user_events: how many recent events to keep per user.
        last_price_ttl: seconds a session's sticky prices live after the session's last quote.
        state_ttl: seconds a cached state and a history live after their last write.
        retry_after: seconds to fail fast after a connection error before trying Redis again.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "pricing",
        max_user_events: int = 200,
        last_price_ttl: int = 2 * 3600,
        state_ttl: int = 30 * 24 * 3600,
        retry_after: float = 0.5,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_user_events = max_user_events
        self.last_price_ttl = int(last_price_ttl)
        self.state_ttl = int(state_ttl)
        self.retry_after = retry_after
        self._put_state = client.register_script(_PUT_STATE)
        self._down_until = 0.0
        self._last_error: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, **kwargs: Any) -> RedisUserStore:
        """A store over `url` with short socket timeouts and a single immediate retry.

        The single retry makes the first command after a Redis restart reconnect transparently;
        redis-py's default (several retries with backoff) would stall a quote for seconds.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        return cls(client, **kwargs)

    # --- keys ------------------------------------------------------------------------------------
    def _k(self, user_id: str) -> str:
        # The length prefix makes the user part unambiguous whatever characters the id holds.
        return f"{self.prefix}:{{{len(user_id)}:{user_id}}}"

    # --- the circuit breaker ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable(f"redis unavailable (retrying shortly): {self._last_error}")
        try:
            out = fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after
                self._last_error = f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc
        if self._down_until:
            with self._lock:
                self._down_until, self._last_error = 0.0, None
        return out

    @property
    def last_error(self) -> str | None:
        """Why the store last failed, while it is considered down; None when healthy."""
        return self._last_error

    def ping(self) -> bool:
        """Check Redis now (bypassing the breaker); resets the breaker when Redis answers."""
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            with self._lock:
                self._down_until = time.monotonic() + self.retry_after
                self._last_error = f"{type(exc).__name__}: {exc}"
            return False
        with self._lock:
            self._down_until, self._last_error = 0.0, None
        return True

    # --- UserStore -------------------------------------------------------------------------------
    def append_events(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        k = self._k(user_id)
        blobs = [orjson.dumps(dict(e), default=_json_default) for e in events]

        def run() -> int:
            pipe = self.client.pipeline(transaction=True)
            if blobs:
                pipe.rpush(f"{k}:ev", *blobs)
            pipe.ltrim(f"{k}:ev", -self.max_user_events, -1)
            pipe.incr(f"{k}:gen")
            pipe.expire(f"{k}:ev", self.state_ttl)
            pipe.expire(f"{k}:gen", self.state_ttl)
            res = pipe.execute()
            return int(res[-3])

        return self._call(run)

    def get_events(self, user_id: str) -> tuple[list[Event], int]:
        k = self._k(user_id)

        def run() -> tuple[list[Event], int]:
            pipe = self.client.pipeline(transaction=True)  # one snapshot: events and generation
            pipe.lrange(f"{k}:ev", 0, -1)
            pipe.get(f"{k}:gen")
            raw, gen = pipe.execute()
            return [orjson.loads(b) for b in raw], int(gen or 0)

        return self._call(run)

    def get_state(self, user_id: str, model_version: str) -> Any | None:
        k = self._k(user_id)
        gen, blob = self._call(lambda: self.client.mget(f"{k}:gen", f"{k}:st:{model_version}"))
        return _fresh_state(gen, blob)

    def put_state(self, user_id: str, model_version: str, state: Any, generation: int) -> None:
        k = self._k(user_id)
        blob = _GEN.pack(int(generation)) + encode_state(state)
        self._call(
            lambda: self._put_state(
                keys=[f"{k}:gen", f"{k}:st:{model_version}"],
                args=[int(generation), blob, self.state_ttl],
            )
        )

    def get_state_and_last_prices(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> tuple[Any | None, list[float | None] | None]:
        """`get_state` and `get_last_prices` in one round trip (the quote path's only read)."""
        k = self._k(user_id)

        def run() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.mget(f"{k}:gen", f"{k}:st:{model_version}")
            if session_id is not None and item_ids:
                pipe.hmget(f"{k}:lp:{session_id}", list(item_ids))
            return pipe.execute()  # type: ignore[no-any-return]

        res = self._call(run)
        state = _fresh_state(*res[0])
        last = None
        if len(res) > 1:
            last = [None if v is None else float(v) for v in res[1]]
        return state, last

    def mark_stale(self, user_id: str) -> None:
        k = self._k(user_id)

        def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(f"{k}:gen")
            pipe.expire(f"{k}:gen", self.state_ttl)
            pipe.execute()

        self._call(run)

    def get_last_price(self, user_id: str, session_id: str, item_id: str) -> float | None:
        return self.get_last_prices(user_id, session_id, [item_id])[0]

    def get_last_prices(
        self, user_id: str, session_id: str, item_ids: Sequence[str]
    ) -> list[float | None]:
        if not item_ids:
            return []
        key = f"{self._k(user_id)}:lp:{session_id}"
        raw = self._call(lambda: self.client.hmget(key, list(item_ids)))
        return [None if v is None else float(v) for v in raw]

    def set_last_price(self, user_id: str, session_id: str, prices: Mapping[str, float]) -> None:
        if not prices:
            return
        key = f"{self._k(user_id)}:lp:{session_id}"
        mapping: dict[Any, Any] = {i: repr(float(p)) for i, p in prices.items()}

        def run() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.last_price_ttl)
            pipe.execute()

        self._call(run)

    def close(self) -> None:
        self.client.close()
