"""A `UserStore` in Redis, so several scorer processes share users' histories, states and sticky prices.

Keys (all of one user share a hash tag, so they live in one cluster slot and a Lua script may touch
them together):

- `{p}:{u}:ev`        list of the user's recent events (JSON), capped with LTRIM
- `{p}:{u}:gen`       the user's history generation (INCR on every append or invalidation)
- `{p}:{u}:st:{model}`  the cached state for one model (name@version): 8-byte generation + encoded state
  (data only, never pickle: see `encode_state`; a blob that does not decode is a cache miss)
- `{p}:{u}:lp:{sess}` hash item_id -> last quoted price within the session, with a TTL

A state is written only if the generation it was computed from is still current (a Lua check-and-set),
and read together with the current generation (one MGET): a stale state is never served as fresh.

The quote and event routes use the `*_async` twins of their calls, served by
`scorer.redis_async` on the event loop (no blocked loop while Redis answers); everything else
(the background refresher, readiness, hydration) uses redis-py. Both go through one round trip per
call (commands packed by hiredis and sent at once) and share the circuit breaker below.

When Redis is unreachable every call raises `StoreUnavailable` quickly: after one failure the store
stops trying for `retry_after` seconds (a circuit breaker), so a dead Redis costs a quote microseconds,
not a connect timeout. redis-py's pool reconnects on its own once Redis is back. The error carries
why (`reason`: `store_auth` when Redis refuses the credentials, including a Redis that answers every
command with NOAUTH, `store_timeout`, `store_unavailable`), and so does every call the open breaker
refuses, so a degraded quote can say why for as long as the store is unusable. Calls time out after
`DEFAULT_TIMEOUT_S` (1 s; `PRICING_REDIS_TIMEOUT_S`): long enough that a busy two-core machine
serving 500 requests a second does not time out on a healthy Redis.

A key of ours that holds the wrong type (a list where the generation should be) or a value that does
not parse (a generation that is not an integer) is a miss, never a per-user outage: the call that
meets it deletes or resets it (`_REPAIR`, one atomic script; the generation restarts from a clock
value far above any counter, so no state cached before is taken as current), logs it, and carries on
with what remains. An event append redoes only the steps the bad key refused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import orjson
import pandas as pd
import redis
from hiredis import ReplyError, pack_command
from redis.backoff import NoBackoff
from redis.retry import Retry

from scorer.logs import RateLimitedLog
from scorer.redis_async import AsyncRedis, RedisAuthError
from scorer.state import STORE_AUTH, STORE_TIMEOUT, STORE_UNAVAILABLE, Event, QuoteRead

T = TypeVar("T")
log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

DEFAULT_TIMEOUT_S = 1.0  # socket and connect timeout of every Redis call (PRICING_REDIS_TIMEOUT_S)

_GEN = struct.Struct("<q")
_F64 = struct.Struct("<d")

# Write the state only if the user's generation is still the one it was computed from; -1 when
# the generation key is not one (the caller repairs it, and the state is not cached).
_PUT_STATE = """
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'table' and raw.err then
  return -1
end
local gen = tonumber(raw or '0')
if gen == nil then
  return -1
end
if gen == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""

# Whether KEYS[n] is absent or a generation INCR can bump and Lua compares exactly (digits, < 2^53).
_USABLE_GENERATION = """
local function usable_generation(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then
    return true
  end
  if t ~= 'string' then
    return false
  end
  local v = redis.call('GET', key)
  return string.match(v, '^%d+$') ~= nil and #v <= 16 and tonumber(v) < 9007199254740992
end
"""

# Delete a user's events key when it is not a list, reset the generation when it is not one
# (to ARGV[1], a clock value in microseconds: above every counter, so no cached state matches it).
# Returns what was repaired, e.g. {'events:string', 'generation:list'}.
_REPAIR = (
    _USABLE_GENERATION
    + """
local fixed = {}
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'list' then
  redis.call('DEL', KEYS[1])
  fixed[#fixed + 1] = 'events:' .. t
end
if not usable_generation(KEYS[2]) then
  t = redis.call('TYPE', KEYS[2])['ok']
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  fixed[#fixed + 1] = 'generation:' .. t
end
return fixed
"""
)
_REPAIR_SHA = hashlib.sha1(_REPAIR.encode()).hexdigest()


_PUT_STATE_SHA = hashlib.sha1(_PUT_STATE.encode()).hexdigest()

# Append a user's hydration events only if the user has no history: one atomic step, so replicas
# starting together against one Redis never load a user twice. A generation key that is not one is
# reset first (as `_REPAIR` does).
_HYDRATE = (
    _USABLE_GENERATION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if not usable_generation(KEYS[2]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
)

# Error replies that mean the store is unusable as a whole, not that one key is bad.
_AUTH_ERRORS = ("NOAUTH", "WRONGPASS", "NOPERM")
_DOWN_ERRORS = ("LOADING", "MASTERDOWN", "BUSY", "CLUSTERDOWN", "TRYAGAIN", "MISCONF")


class StoreUnavailable(ConnectionError):
    """The online store cannot be used; callers degrade (quotes) or answer 503 (events).

    `reason` says why (`scorer.state`'s `STORE_AUTH`, `STORE_TIMEOUT`, `STORE_UNAVAILABLE`).
    """

    def __init__(self, message: str, reason: str = STORE_UNAVAILABLE) -> None:
        super().__init__(message)
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """Why a Redis call failed, as a degraded reason."""
    if isinstance(exc, StoreUnavailable):
        return exc.reason
    if isinstance(
        exc, redis.AuthenticationError | redis.exceptions.NoPermissionError | RedisAuthError
    ):
        return STORE_AUTH
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return STORE_TIMEOUT
    return STORE_UNAVAILABLE


def _refusal(replies: Sequence[Any]) -> StoreUnavailable | None:
    """The store-wide refusal among a round trip's error replies (NOAUTH, LOADING, ...), if any."""
    for reply in replies:
        if isinstance(reply, ReplyError | redis.ResponseError):
            # redis-py strips the code off its message and keeps it as `status_code`
            code = getattr(reply, "status_code", None) or str(reply).split(" ", 1)[0]
            if code in _AUTH_ERRORS:
                return StoreUnavailable(f"redis refused the command: {reply}", STORE_AUTH)
            if code in _DOWN_ERRORS:
                return StoreUnavailable(f"redis refused the command: {reply}")
    return None


def _bad_entry(reply: Any) -> bool:
    """Whether an error reply says one of the user's keys holds the wrong type or value."""
    if not isinstance(reply, Exception):
        return False
    text = str(reply)
    return "WRONGTYPE" in text or "not an integer" in text or "overflow" in text


# --- state encoding ------------------------------------------------------------------------------
#
# Data only: whatever is in Redis, decoding builds floats, numeric numpy arrays (or tensors), and
# tuples/lists/dicts/Series of those, never objects of a type the blob names. Anyone who can write to
# Redis can at worst make a user's state wrong (then `_fresh_state` treats an undecodable blob as a
# miss), not run code in the scorer. So: no pickle anywhere.

_MAX_NDIM = 8
_ARRAY_KINDS = "fiub"  # float, signed, unsigned, bool: plain bytes, no object or void dtypes


class StateDecodeError(ValueError):
    """A cached state blob that is not one `encode_state` writes (corrupt, foreign or hostile)."""


def _encode_array(a: np.ndarray) -> bytes:
    if a.dtype.kind not in _ARRAY_KINDS or a.ndim > _MAX_NDIM:
        raise TypeError(f"no data-only encoding for an array of dtype {a.dtype}, ndim {a.ndim}")
    a = np.ascontiguousarray(a)
    dtype = a.dtype.str.encode()
    head = bytes([len(dtype)]) + dtype + bytes([a.ndim]) + struct.pack(f"<{a.ndim}q", *a.shape)
    return head + a.tobytes()


def _decode_array(buf: memoryview) -> np.ndarray:
    """The inverse of `_encode_array`, checking every length before it trusts it."""
    n = buf[0]
    dtype = np.dtype(bytes(buf[1 : 1 + n]).decode("ascii"))
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
        raise StateDecodeError(f"array dtype {dtype} is not plain numeric")
    pos = 1 + n
    ndim = buf[pos]
    if ndim > _MAX_NDIM:
        raise StateDecodeError(f"array of {ndim} dimensions")
    shape = struct.unpack_from(f"<{ndim}q", buf, pos + 1)
    pos += 1 + 8 * ndim
    if any(d < 0 for d in shape) or len(buf) - pos != math.prod(shape) * dtype.itemsize:
        raise StateDecodeError(f"array of shape {shape} does not match its {len(buf) - pos} bytes")
    return np.frombuffer(buf[pos:], dtype=dtype).reshape(shape).copy()


def _is_tensor(x: Any) -> bool:
    return type(x).__module__ == "torch" and type(x).__name__ == "Tensor"


def _tensor(a: np.ndarray) -> Any:
    import torch  # only a model that uses tensors gets here

    return torch.from_numpy(a)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_SCALAR = (type(None), bool, int, float, str)


def _to_tree(x: Any) -> Any:
    """`x` as JSON: scalars as themselves, containers and arrays as `{"~": kind, ...}` nodes."""
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else {"~": "float", "v": repr(f)}  # JSON has no nan/inf
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.ndarray):
        return {"~": "nd", "v": _b64(_encode_array(x))}
    if _is_tensor(x):
        return {"~": "tensor", "v": _b64(_encode_array(x.detach().cpu().numpy()))}
    if isinstance(x, tuple):
        return {"~": "tuple", "v": [_to_tree(v) for v in x]}
    if isinstance(x, list):
        return {"~": "list", "v": [_to_tree(v) for v in x]}
    if isinstance(x, dict):
        if not all(isinstance(_to_tree(k), _SCALAR) for k in x):
            raise TypeError("no data-only encoding for a dict with non-scalar keys in a user state")
        return {"~": "dict", "v": [[_to_tree(k), _to_tree(v)] for k, v in x.items()]}
    if isinstance(x, pd.Series):
        return {
            "~": "series",
            "index": [_to_tree(k) for k in x.index],
            "v": _to_tree(x.to_numpy()),
            "name": _to_tree(x.name),
        }
    raise TypeError(f"no data-only encoding for a {type(x).__qualname__} in a user state")


@functools.lru_cache(maxsize=256)
def _index(labels: tuple[Any, ...]) -> pd.Index:
    """One (immutable) Index per label tuple: states repeat a few, and building one from a list
    of strings costs a quarter of a millisecond on every decode."""
    return pd.Index(list(labels))


def _from_tree(t: Any) -> Any:
    """The inverse of `_to_tree`: builds only the types listed there."""
    if isinstance(t, _SCALAR):
        return t
    if not isinstance(t, dict) or not isinstance(t.get("~"), str):
        raise StateDecodeError(f"unexpected JSON node {type(t).__name__}")
    kind, v = t["~"], t.get("v")
    if kind == "float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if kind in ("nd", "tensor") and isinstance(v, str):
        a = _decode_array(memoryview(base64.b64decode(v, validate=True)))
        return a if kind == "nd" else _tensor(a)
    if kind in ("tuple", "list") and isinstance(v, list):
        items = [_from_tree(e) for e in v]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict" and isinstance(v, list):
        out = {}
        for pair in v:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], _SCALAR):
                raise StateDecodeError("malformed dict item")
            out[pair[0]] = _from_tree(pair[1])
        return out
    if kind == "series" and isinstance(t.get("index"), list):
        index = t["index"]
        values = _from_tree(v)
        name = t.get("name")
        if not all(isinstance(k, _SCALAR) for k in index) or not isinstance(name, _SCALAR):
            raise StateDecodeError("malformed series index or name")
        if not isinstance(values, np.ndarray) or values.shape != (len(index),):
            raise StateDecodeError("series values do not match its index")
        return pd.Series(values, index=_index(tuple(index)), name=name)
    raise StateDecodeError(f"unknown JSON node kind {kind!r}")


def encode_state(state: Any) -> bytes:
    """Compact, data-only bytes for a user state (a one-byte tag, then the payload).

    Tags: `f` a float (8 bytes), `a` a numeric numpy array and `t` a torch tensor (dtype, shape
    and raw bytes), `j` anything else built from those, tuples, lists, dicts and pandas Series
    (JSON; arrays inside as base64 of the same array bytes). Raises TypeError for other types.
    """
    if isinstance(state, float | np.floating):
        return b"f" + _F64.pack(float(state))
    if isinstance(state, np.ndarray) and state.dtype.kind in _ARRAY_KINDS:
        return b"a" + _encode_array(state)
    if _is_tensor(state):
        return b"t" + _encode_array(state.detach().cpu().numpy())
    return b"j" + orjson.dumps(_to_tree(state))


def decode_state(data: bytes | memoryview) -> Any:
    """The inverse of `encode_state`; raises `StateDecodeError` (a ValueError) on a foreign blob.

    Blobs of the old pickle format (tag `p`) are refused like any other foreign blob: the scorer
    recomputes those states once and overwrites them.
    """
    buf = memoryview(data)
    tag = bytes(buf[:1])
    try:
        if tag == b"f" and len(buf) == 1 + _F64.size:
            return _F64.unpack_from(buf, 1)[0]
        if tag == b"a":
            return _decode_array(buf[1:])
        if tag == b"t":
            return _tensor(_decode_array(buf[1:]))
        if tag == b"j":
            return _from_tree(orjson.loads(buf[1:]))
    except StateDecodeError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, struct.error, RecursionError) as exc:
        raise StateDecodeError(f"malformed state ({tag!r}): {type(exc).__name__}: {exc}") from exc
    raise StateDecodeError(f"unknown state encoding (tag {tag!r}, {len(buf)} bytes)")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)  # timestamps and other scalars the contract writes as text


def _parse_generation(gen: Any) -> int | None:
    """A stored generation as an int (0 when missing); None when it is not a number."""
    try:
        return int(gen or 0)
    except (TypeError, ValueError):
        return None


def _generation(gen: Any) -> int:
    """A stored generation as an int (0 when missing or not a number)."""
    return _parse_generation(gen) or 0


def _fresh_state(gen: Any, blob: Any, where: str = "") -> Any | None:
    """The state in `blob` if it was computed from generation `gen` (the current one), else None.

    A blob that does not decode (corrupt, foreign, hostile) is a miss, with one warning: the caller
    recomputes the state and overwrites it. Nothing in it is ever executed. A generation that is
    not a number is a miss too (the recomputation repairs it).
    """
    if not isinstance(blob, bytes) or len(blob) < _GEN.size:
        return None
    current = _parse_generation(gen)
    if current is None:
        return None
    try:
        if _GEN.unpack_from(blob)[0] != current:
            return None  # computed from a history that has moved on
        return decode_state(memoryview(blob)[_GEN.size :])
    except Exception as exc:  # noqa: BLE001 - whatever is in Redis, a bad blob is only a miss
        limited.warning(
            "bad_state", "ignoring an undecodable cached user state %s: %.200s", where, exc
        )
        return None


def _prices(raw: Sequence[Any]) -> list[float | None]:
    """Sticky prices as stored (text); an unparsable one counts as absent (no bound)."""
    out: list[float | None] = []
    for v in raw:
        try:
            out.append(None if v is None else float(v))
        except ValueError:
            limited.warning("bad_price", "ignoring an unparsable sticky price %r", v[:32])
            out.append(None)
    return out


def _events(raw: Sequence[bytes], where: str) -> list[Event]:
    """A user's events as stored (JSON objects); an entry that is not one is dropped, logged."""
    out: list[Event] = []
    for b in raw:
        try:
            e = orjson.loads(b)
        except orjson.JSONDecodeError:
            e = None
        if isinstance(e, dict):
            out.append(e)
        else:
            limited.warning("bad_event", "dropping a malformed event in %s:ev: %r", where, b[:64])
    return out


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
        self._hydrate = client.register_script(_HYDRATE)
        self._repair = client.register_script(_REPAIR)
        self._down_until = 0.0
        self._last_error: str | None = None
        self._last_reason: str | None = None
        self._lock = threading.Lock()
        self._unencodable: set[type] = set()
        self._async: AsyncRedis | None = None

    @classmethod
    def from_url(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any
    ) -> RedisUserStore:
        """A store over `url` with bounded socket timeouts and a single immediate retry.

        `url` carries the credentials, e.g. `redis://:PASSWORD@redis:6379/0` (`requirepass`) or
        `redis://USER:PASSWORD@host:6379/0` (an ACL user); percent-encode special characters.

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
    def _trip(self, exc: BaseException) -> StoreUnavailable:
        """Open the breaker for `retry_after` seconds; the error to raise, with its reason."""
        reason = _reason(exc)
        with self._lock:
            self._down_until = time.monotonic() + self.retry_after
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._last_reason = reason
        if isinstance(exc, StoreUnavailable):
            return exc
        return StoreUnavailable(f"redis unavailable: {exc}", reason)

    def _closed(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until, self._last_error, self._last_reason = 0.0, None, None

    def _refuse_while_down(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable(
                f"redis unavailable (retrying shortly): {self._last_error}",
                self._last_reason or STORE_UNAVAILABLE,
            )

    def _call(self, fn: Callable[[], T]) -> T:
        self._refuse_while_down()
        try:
            out = fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise self._trip(exc) from exc
        self._closed()
        return out

    @property
    def last_error(self) -> str | None:
        """Why the store last failed, while it is considered down; None when healthy."""
        return self._last_error

    @property
    def failure_reason(self) -> str | None:
        """The degraded reason of the last failure, while the store is considered down."""
        return self._last_reason

    def ping(self) -> bool:
        """Check Redis now (bypassing the breaker); resets the breaker when Redis answers."""
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._trip(exc)
            return False
        self._closed()
        return True

    # --- one round trip, no pipeline object ------------------------------------------------------
    def _run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` in one write on a pooled connection and read their replies.

        What `pipeline(transaction=False).execute()` does, without building the pipeline and with
        hiredis packing the commands (a third of the client CPU on the quote path). A reply that is an error comes back as the
        `redis.ResponseError` instance. A broken connection (Redis restarted) is reconnected and
        the commands sent once more, like the client's single retry; a timeout is not retried.
        """
        packed = b"".join(map(pack_command, commands))
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            for attempt in (0, 1):
                try:
                    conn.send_packed_command([packed], check_health=False)
                    replies: list[Any] = []
                    for _ in commands:
                        try:
                            replies.append(conn.read_response())
                        except redis.ResponseError as exc:
                            replies.append(exc)
                    break
                except redis.TimeoutError:
                    conn.disconnect()  # a late reply must not be read as the next command's
                    raise
                except (redis.ConnectionError, OSError):
                    conn.disconnect()
                    if attempt:
                        raise
        finally:
            pool.release(conn)
        refusal = _refusal(replies)
        if refusal is not None:
            raise refusal  # NOPERM: the whole store is refused, not one key
        return replies

    # --- UserStore -------------------------------------------------------------------------------
    def _append_commands(
        self, user_id: str, events: Sequence[Mapping[str, Any]]
    ) -> list[tuple[Any, ...]]:
        k = self._k(user_id)
        blobs = [orjson.dumps(dict(e), default=_json_default) for e in events]
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        if blobs:
            commands.append(("RPUSH", f"{k}:ev", *blobs))
        commands += [
            ("LTRIM", f"{k}:ev", -self.max_user_events, -1),
            ("INCR", f"{k}:gen"),
            ("EXPIRE", f"{k}:ev", self.state_ttl),
            ("EXPIRE", f"{k}:gen", self.state_ttl),
            ("EXEC",),
        ]
        return commands

    @staticmethod
    def _exec_result(replies: list[Any]) -> list[Any]:
        result = replies[-1]
        if not isinstance(result, list):
            raise StoreUnavailable(f"redis refused the events transaction: {result!r}")
        return result

    @staticmethod
    def _appended(result: list[Any]) -> int:
        for reply in result:
            if isinstance(reply, Exception):
                raise StoreUnavailable(f"redis refused the events: {reply}")
        return int(result[-3])

    def _redo_events(
        self, result: list[Any], events: Sequence[Mapping[str, Any]]
    ) -> Sequence[Mapping[str, Any]]:
        """The events a repaired append must still push: none when the first try pushed them
        (only the generation was refused), all of them when the events key refused them."""
        return [] if events and not isinstance(result[0], Exception) else events

    def append_events(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        commands = self._append_commands(user_id, events)
        result = self._exec_result(self._call(lambda: self._run(*commands)))
        if any(map(_bad_entry, result)):
            self.repair_user(user_id)
            redo = self._append_commands(user_id, self._redo_events(result, events))
            result = self._exec_result(self._call(lambda: self._run(*redo)))
        return self._appended(result)

    async def append_events_async(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        """`append_events` without blocking the event loop."""
        result = self._exec_result(await self._acall(self._append_commands(user_id, events)))
        if any(map(_bad_entry, result)):
            await self.repair_user_async(user_id)
            redo = self._append_commands(user_id, self._redo_events(result, events))
            result = self._exec_result(await self._acall(redo))
        return self._appended(result)

    # --- bad entries ---------------------------------------------------------------------------------
    def _repair_args(self, user_id: str) -> tuple[list[str], list[Any]]:
        k = self._k(user_id)
        return [f"{k}:ev", f"{k}:gen"], [time.time_ns() // 1000, self.state_ttl]

    def _repaired(self, user_id: str, fixed: Any) -> None:
        if isinstance(fixed, Exception):
            raise StoreUnavailable(f"redis refused the repair of a bad entry: {fixed}")
        if fixed:
            what = ", ".join(f.decode() if isinstance(f, bytes) else str(f) for f in fixed)
            limited.warning(
                "bad_entry",
                "replaced a bad user store entry of %s (%s): rebuilt from the events that remain",
                self._k(user_id),
                what,
            )

    def repair_user(self, user_id: str) -> None:
        """Delete the user's events key if it is not a list, reset its generation if it is not
        one (`_REPAIR`); logs what it replaced."""
        keys, args = self._repair_args(user_id)
        self._repaired(user_id, self._call(lambda: self._repair(keys=keys, args=args)))

    async def repair_user_async(self, user_id: str) -> None:
        """`repair_user` without blocking the event loop."""
        keys, args = self._repair_args(user_id)
        call = (2, *keys, *args)
        replies = await self._acall([("EVALSHA", _REPAIR_SHA, *call)])
        if isinstance(replies[0], Exception) and "NOSCRIPT" in str(replies[0]):
            replies = await self._acall([("EVAL", _REPAIR, *call)])
        self._repaired(user_id, replies[0])

    def hydrate_user(self, user_id: str, events: Sequence[Mapping[str, Any]]) -> bool:
        if not events:
            return False
        k = self._k(user_id)
        blobs = [orjson.dumps(dict(e), default=_json_default) for e in events]
        fresh = time.time_ns() // 1000  # a generation for a key that holds none (see _REPAIR)
        done = self._call(
            lambda: self._hydrate(
                keys=[f"{k}:ev", f"{k}:gen"],
                args=[self.max_user_events, self.state_ttl, fresh, *blobs],
            )
        )
        return bool(done)

    def _quote_read_commands(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        k = self._k(user_id)
        commands: list[tuple[Any, ...]] = [
            ("MGET", f"{k}:gen", f"{k}:st:{model_version}"),
            ("EXISTS", f"{k}:ev"),
        ]
        if session_id is not None and item_ids:
            commands.append(("HMGET", f"{k}:lp:{session_id}", *item_ids))
        return commands

    def _quote_read(
        self,
        replies: list[Any],
        user_id: str,
        model_version: str,
        session_id: str | None,
        n_items: int,
    ) -> QuoteRead:
        pair = replies[0]
        gen, blob = pair if isinstance(pair, list) else (None, None)
        last: list[float | None] | None = None
        if session_id is not None:
            raw = replies[2] if len(replies) > 2 else []
            last = _prices(raw) if isinstance(raw, list) else [None] * n_items
        where = f"{self._k(user_id)}:st:{model_version}"
        return QuoteRead(_fresh_state(gen, blob, where), _generation(gen), last, replies[1] == 1)

    def read_for_quote(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> QuoteRead:
        """The quote path's only read, one round trip: generation, cached state, last prices."""
        commands = self._quote_read_commands(user_id, model_version, session_id, item_ids)
        replies = self._call(lambda: self._run(*commands))
        return self._quote_read(replies, user_id, model_version, session_id, len(item_ids))

    async def read_for_quote_async(
        self, user_id: str, model_version: str, session_id: str | None, item_ids: Sequence[str]
    ) -> QuoteRead:
        """`read_for_quote` without blocking the event loop (scorer.redis_async)."""
        commands = self._quote_read_commands(user_id, model_version, session_id, item_ids)
        replies = await self._acall(commands)
        return self._quote_read(replies, user_id, model_version, session_id, len(item_ids))

    def _history_commands(
        self, user_id: str, session_id: str | None, item_ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        k = self._k(user_id)
        commands: list[tuple[Any, ...]] = [
            ("MULTI",),
            ("LRANGE", f"{k}:ev", 0, -1),
            ("GET", f"{k}:gen"),
            ("EXEC",),
        ]
        if session_id is not None and item_ids:
            commands.append(("HMGET", f"{k}:lp:{session_id}", *item_ids))
        return commands

    def _history(
        self, replies: list[Any], user_id: str, session_id: str | None, n_items: int
    ) -> tuple[list[Event], int, list[float | None] | None]:
        snapshot = replies[3]
        raw, gen = snapshot if isinstance(snapshot, list) else ([], None)
        events = _events(raw, self._k(user_id)) if isinstance(raw, list) else []
        last: list[float | None] | None = None
        if session_id is not None:
            lp = replies[4] if len(replies) > 4 else []
            last = _prices(lp) if isinstance(lp, list) else [None] * n_items
        return events, _generation(gen), last

    def read_history_for_quote(
        self, user_id: str, session_id: str | None, item_ids: Sequence[str]
    ) -> tuple[list[Event], int, list[float | None] | None]:
        """Events, generation and last prices in one round trip (events and generation from one
        snapshot)."""
        commands = self._history_commands(user_id, session_id, item_ids)
        replies = self._call(lambda: self._run(*commands))
        return self._history(replies, user_id, session_id, len(item_ids))

    async def read_history_for_quote_async(
        self, user_id: str, session_id: str | None, item_ids: Sequence[str]
    ) -> tuple[list[Event], int, list[float | None] | None]:
        """`read_history_for_quote` without blocking the event loop."""
        replies = await self._acall(self._history_commands(user_id, session_id, item_ids))
        return self._history(replies, user_id, session_id, len(item_ids))

    async def read_state_and_history_async(
        self, user_id: str, model_version: str
    ) -> tuple[Any | None, int, list[Event]]:
        """(cached state if current, generation, events) from one snapshot, one round trip: what
        recomputing a user's state on the event loop needs."""
        k = self._k(user_id)
        key = f"{k}:st:{model_version}"
        commands = [("MULTI",), ("MGET", f"{k}:gen", key), ("LRANGE", f"{k}:ev", 0, -1), ("EXEC",)]
        for attempt in (0, 1):
            snapshot = (await self._acall(commands))[3]
            if not isinstance(snapshot, list) or len(snapshot) != 2:
                raise StoreUnavailable(f"redis refused the history read: {snapshot!r}")
            pair, raw = snapshot
            gen, blob = pair if isinstance(pair, list) else (None, None)
            bad = _bad_entry(raw) or _parse_generation(gen) is None
            if not bad or attempt:
                break
            await self.repair_user_async(user_id)  # then read what remains
        events = _events(raw, k) if isinstance(raw, list) else []
        return _fresh_state(gen, blob, key), _generation(gen), events

    async def put_state_async(
        self, user_id: str, model_version: str, state: Any, generation: int
    ) -> None:
        """`put_state` without blocking the event loop (the same check-and-set script)."""
        k = self._k(user_id)
        try:
            blob = _GEN.pack(int(generation)) + encode_state(state)
        except TypeError as exc:
            if type(state) not in self._unencodable:
                self._unencodable.add(type(state))
                log.warning("not caching user states of model %s: %s", model_version, exc)
            return
        keys_args = (
            2,
            f"{k}:gen",
            f"{k}:st:{model_version}",
            int(generation),
            blob,
            self.state_ttl,
        )
        replies = await self._acall([("EVALSHA", _PUT_STATE_SHA, *keys_args)])
        if isinstance(replies[0], Exception) and "NOSCRIPT" in str(replies[0]):
            replies = await self._acall([("EVAL", _PUT_STATE, *keys_args)])  # first use, or flushed
        if isinstance(replies[0], Exception):
            raise StoreUnavailable(f"redis refused the state: {replies[0]}")
        if replies[0] == -1:  # the generation key is not one: repaired; the state is not cached
            await self.repair_user_async(user_id)

    def get_events(self, user_id: str) -> tuple[list[Event], int]:
        k = self._k(user_id)
        # one snapshot: events and generation
        commands = [("MULTI",), ("LRANGE", f"{k}:ev", 0, -1), ("GET", f"{k}:gen"), ("EXEC",)]
        for attempt in (0, 1):
            snapshot = self._call(lambda: self._run(*commands))[3]
            if not isinstance(snapshot, list) or len(snapshot) != 2:
                raise StoreUnavailable(f"redis refused the history read: {snapshot!r}")
            raw, gen = snapshot
            bad = _bad_entry(raw) or _bad_entry(gen) or _parse_generation(gen) is None
            if not bad or attempt:
                break
            self.repair_user(user_id)
        events = _events(raw, k) if isinstance(raw, list) else []
        return events, _generation(gen if not isinstance(gen, Exception) else None)

    def get_state(self, user_id: str, model_version: str) -> Any | None:
        k = self._k(user_id)
        key = f"{k}:st:{model_version}"
        gen, blob = self._call(lambda: self.client.mget(f"{k}:gen", key))
        return _fresh_state(gen, blob, key)

    def put_state(self, user_id: str, model_version: str, state: Any, generation: int) -> None:
        """Cache `state` if `generation` is still current; a state type with no data-only
        encoding is not cached (logged once per type): the scorer then recomputes it when needed."""
        k = self._k(user_id)
        try:
            blob = _GEN.pack(int(generation)) + encode_state(state)
        except TypeError as exc:
            if type(state) not in self._unencodable:
                self._unencodable.add(type(state))
                log.warning("not caching user states of model %s: %s", model_version, exc)
            return
        done = self._call(
            lambda: self._put_state(
                keys=[f"{k}:gen", f"{k}:st:{model_version}"],
                args=[int(generation), blob, self.state_ttl],
            )
        )
        if done == -1:  # the generation key is not one: repaired; the state is not cached
            self.repair_user(user_id)

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
        gen, blob = res[0]
        state = _fresh_state(gen, blob, f"{k}:st:{model_version}")
        last = _prices(res[1]) if len(res) > 1 else None
        return state, last

    def mark_stale(self, user_id: str) -> None:
        k = self._k(user_id)
        commands = [("INCR", f"{k}:gen"), ("EXPIRE", f"{k}:gen", self.state_ttl)]
        replies = self._call(lambda: self._run(*commands))
        if _bad_entry(replies[0]):
            self.repair_user(user_id)  # a fresh generation: every cached state is stale
        elif isinstance(replies[0], Exception):
            raise StoreUnavailable(f"redis refused the generation: {replies[0]}")

    def get_last_price(self, user_id: str, session_id: str, item_id: str) -> float | None:
        return self.get_last_prices(user_id, session_id, [item_id])[0]

    def get_last_prices(
        self, user_id: str, session_id: str, item_ids: Sequence[str]
    ) -> list[float | None]:
        if not item_ids:
            return []
        key = f"{self._k(user_id)}:lp:{session_id}"
        return _prices(self._call(lambda: self.client.hmget(key, list(item_ids))))

    def _sticky_commands(
        self, user_id: str, session_id: str, prices: Mapping[str, float]
    ) -> list[tuple[Any, ...]]:
        key = f"{self._k(user_id)}:lp:{session_id}"
        fields: list[Any] = []
        for item_id, price in prices.items():
            fields += (item_id, repr(float(price)))
        return [("HSET", key, *fields), ("EXPIRE", key, self.last_price_ttl)]

    def _sticky_repair(self, user_id: str, session_id: str, reply: Any) -> list[tuple[Any, ...]]:
        """The command that clears a session's sticky-price key of the wrong type (logged)."""
        key = f"{self._k(user_id)}:lp:{session_id}"
        limited.warning(
            "bad_entry",
            "replaced a bad user store entry %s (%.100s): sticky prices restart",
            key,
            reply,
        )
        return [("DEL", key)]

    def set_last_price(self, user_id: str, session_id: str, prices: Mapping[str, float]) -> None:
        if not prices:
            return
        commands = self._sticky_commands(user_id, session_id, prices)
        replies = self._call(lambda: self._run(*commands))
        if _bad_entry(replies[0]):
            redo = self._sticky_repair(user_id, session_id, replies[0]) + commands
            replies = self._call(lambda: self._run(*redo))[1:]
        if isinstance(replies[0], Exception):
            raise StoreUnavailable(f"redis refused the sticky prices: {replies[0]}")

    async def set_last_price_async(
        self, user_id: str, session_id: str, prices: Mapping[str, float]
    ) -> None:
        """`set_last_price` without blocking the event loop."""
        if not prices:
            return
        commands = self._sticky_commands(user_id, session_id, prices)
        replies = await self._acall(commands)
        if _bad_entry(replies[0]):
            redo = self._sticky_repair(user_id, session_id, replies[0]) + commands
            replies = (await self._acall(redo))[1:]
        if isinstance(replies[0], Exception):
            raise StoreUnavailable(f"redis refused the sticky prices: {replies[0]}")

    # --- the event loop's client -------------------------------------------------------------------
    async def _acall(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """One round trip on the event loop's connection, behind the same circuit breaker.

        A reply that refuses the whole store (NOAUTH: a Redis with a password the URL lacks;
        LOADING, ...) opens the breaker like a connection error, with its reason.
        """
        self._refuse_while_down()
        if self._async is None:
            kwargs = self.client.connection_pool.connection_kwargs
            timeout = kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S
            self._async = AsyncRedis(kwargs, float(timeout))
        packed = b"".join(map(pack_command, commands))
        try:
            out = await self._async.execute(packed, len(commands))
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise self._trip(exc) from exc
        refusal = _refusal(out)
        if refusal is not None:
            raise self._trip(refusal)
        self._closed()
        return out

    async def aclose(self) -> None:
        """Close the running event loop's connection (at app shutdown)."""
        if self._async is not None:
            self._async.close()

    def close(self) -> None:
        self.client.close()
