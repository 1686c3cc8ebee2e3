"""The budget store on Redis: every operation of :mod:`~asyncsynth.distributed.store` as
one Lua script, which Redis runs atomically, on its own clock (``TIME``).

A budget is two keys with the same hash tag (so a Redis Cluster keeps them on one
node): ``asyncsynth:{KEY}`` (a hash: epoch, learnt limit, and per rate budget its
theoretical arrival time, what was ever taken, its learnt shape) and
``asyncsynth:{KEY}:slots`` (a sorted set: member -> when its lease ends). A slot given
back is announced on the channel ``asyncsynth:{KEY}:free``, which waiting processes
follow. Both keys expire after :data:`~asyncsynth.distributed.store.KEY_TTL` idle.

Requests from many tasks are sent as one pipeline of ``EVALSHA`` calls (one round trip
for all of them). Only this module imports ``redis`` (the ``asyncsynth[redis]`` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Collection, Sequence
from typing import Any

import anyio

from ..engine.errors import ConfigError
from .backends import shown_url
from .store import KEY_TTL, Admitted, Op, StoreUnavailable

try:
    import redis.asyncio as aioredis
    from redis import exceptions as redis_errors
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - the extra is missing
    aioredis = None  # type: ignore[assignment]

SOCKET_TIMEOUT = 2.0
"""Seconds a Redis call may take before the store counts as unreachable."""
PREFIX = "asyncsynth:"

_SCRIPT = r"""
local h, z = KEYS[1], KEYS[2]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
local function num(x) return string.format('%.17g', x) end
local function budget(epoch)
  local e = redis.call('HGET', h, 'epoch')
  if not e then
    e = epoch
    redis.call('HSET', h, 'epoch', e)
  end
  redis.call('PEXPIRE', h, ttl)
  return e
end
local function shape(kind, burst, rate)
  local lr = tonumber(redis.call('HGET', h, kind .. '_r') or '')
  if lr and lr < rate then
    return tonumber(redis.call('HGET', h, kind .. '_b')), lr
  end
  return burst, rate
end
local function tat_of(kind, burst, rate)
  local tat = tonumber(redis.call('HGET', h, kind .. '_tat') or '')
  if not tat then tat = now + burst / rate end  -- a budget seen for the first time starts empty
  return tat
end
local function learnt()
  local v = redis.call('HMGET', h, 'learnt', 'learnt_v')
  return v[1] or '', tonumber(v[2] or '0')
end

if op == 'ping' then return 'pong' end
if op == 'epoch' then return redis.call('HGET', h, 'epoch') end

if op == 'admit' then
  local member, slots, lease = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local epoch = budget(ARGV[12])
  local held = 0
  if slots > 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    held = redis.call('ZCARD', z)
    if held >= slots and not redis.call('ZSCORE', z, member) then
      local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
      local l, v = learnt()
      return {0, '0', '0', '0', held, l, v, epoch, num(math.max(0, tonumber(first[2]) - now))}
    end
    redis.call('ZADD', z, now + lease, member)
    redis.call('PEXPIRE', z, ttl)
    held = redis.call('ZCARD', z)
  end
  local wait = 0
  local marks = {'0', '0'}
  for i, kind in ipairs({'r', 't'}) do
    local base = 6 + (i - 1) * 3
    local cost = tonumber(ARGV[base])
    local burst, rate = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
    if rate > 0 then
      local tat = tat_of(kind, burst, rate)
      burst, rate = shape(kind, burst, rate)
      tat = math.max(tat, now) + cost / rate
      redis.call('HSET', h, kind .. '_tat', num(tat))
      marks[i] = redis.call('HINCRBYFLOAT', h, kind .. '_n', cost)
      wait = math.max(wait, tat - now - burst / rate)
    end
  end
  local l, v = learnt()
  return {1, num(wait), marks[1], marks[2], held, l, v, epoch, '0'}
end

if op == 'release' then
  if redis.call('EXISTS', h) == 0 then return 0 end
  redis.call('PEXPIRE', h, ttl)
  local freed = redis.call('ZREM', z, ARGV[3])
  local refund, burst, rate = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  if refund ~= 0 and rate > 0 then
    local tat = tonumber(redis.call('HGET', h, 't_tat') or '')
    if tat then
      burst, rate = shape('t', burst, rate)
      redis.call('HSET', h, 't_tat', num(math.max(math.max(tat, now) - refund / rate, now)))
    end
  end
  if freed > 0 then redis.call('PUBLISH', h .. ':free', '1') end
  return freed
end

if op == 'renew' then
  local lease = tonumber(ARGV[3])
  local epoch = budget(ARGV[4])
  for i = 5, #ARGV do redis.call('ZADD', z, now + lease, ARGV[i]) end
  if #ARGV >= 5 then redis.call('PEXPIRE', z, ttl) end
  local l, v = learnt()
  return {epoch, l, v}
end

if op == 'share' then
  budget(ARGV[4])
  redis.call('HSET', h, 'learnt', ARGV[3])
  return redis.call('HINCRBY', h, 'learnt_v', 1)
end

if op == 'observe' then
  local kind = ARGV[3]
  local new_burst, new_rate = tonumber(ARGV[4]), tonumber(ARGV[5])
  local remaining, mark = tonumber(ARGV[6]), tonumber(ARGV[7])
  local burst, rate = tonumber(ARGV[8]), tonumber(ARGV[9])
  budget(ARGV[10])
  local tat = tat_of(kind, burst, rate)
  burst, rate = shape(kind, burst, rate)
  local level = burst - (math.max(tat, now) - now) * rate
  if new_rate > 0 and new_rate < rate then
    redis.call('HSET', h, kind .. '_b', num(new_burst), kind .. '_r', num(new_rate))
    burst, rate = new_burst, new_rate
    level = math.min(level, burst)
  end
  if remaining >= 0 then
    local taken = tonumber(redis.call('HGET', h, kind .. '_n') or '0')
    level = math.min(level, remaining - (taken - mark))
  end
  redis.call('HSET', h, kind .. '_tat', num(now + (burst - level) / rate))
  return 1
end

return redis.error_reply('asyncsynth: unknown budget operation ' .. tostring(op))
"""
_NO_SCRIPT = redis_errors.NoScriptError if aioredis is not None else ()
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
_TTL_MS = str(int(KEY_TTL * 1000))


def _keys(key: str) -> tuple[str, str]:
    head = f"{PREFIX}{{{key}}}"
    return head, f"{head}:slots"


def _args(op: Op) -> tuple[Any, ...]:
    """``EVALSHA`` arguments of an operation: the script, 2 keys, then ARGV."""
    name, *rest = op
    if name == "ping":
        return (_SHA, 2, *_keys("ping"), "ping")
    key, *values = rest
    return (_SHA, 2, *_keys(key), name, _TTL_MS, *(_arg(v) for v in values))


def _arg(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


def _decode(op: Op, reply: Any) -> Any:
    name = op[0]
    if name == "admit":
        granted, wait, r_mark, t_mark, held, learnt, version, epoch, retry = reply
        return Admitted(
            bool(granted),
            float(wait),
            float(r_mark),
            float(t_mark),
            int(held),
            float(learnt) if learnt else None,
            int(version),
            epoch.decode() if isinstance(epoch, bytes) else epoch,
            float(retry),
        )
    if name == "renew":
        epoch, learnt, version = reply
        return (
            epoch.decode() if isinstance(epoch, bytes) else epoch,
            float(learnt) if learnt else None,
            int(version),
        )
    if name == "epoch":
        return reply.decode() if isinstance(reply, bytes) else reply
    if name == "ping":
        return "pong"
    return int(reply)


class RedisStore:
    """Budgets on a Redis server (7 or newer; 6.2 works too), all processes sharing them."""

    def __init__(self, url: str) -> None:
        if aioredis is None:
            raise ConfigError(
                "engine.limits_backend: a Redis backend needs the redis extra: "
                "pip install 'asyncsynth[redis]'"
            )
        self.url = url
        self.where = shown_url(url)
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._pubsub: Any = None
        self._listening = anyio.Lock()

    async def call(self, ops: Sequence[Op]) -> list[Any]:
        """Run ``ops`` in one round trip; raises :class:`StoreUnavailable` if Redis is away."""
        try:
            replies = await self._pipeline(ops)
            missing = [i for i, r in enumerate(replies) if isinstance(r, _NO_SCRIPT)]
            if missing:  # a restarted server forgot the script: load it, run those again
                await self._client.script_load(_SCRIPT)
                again = await self._pipeline([ops[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise StoreUnavailable(_reason(exc)) from None
        except redis_errors.ResponseError as exc:
            if _loading(exc):
                raise StoreUnavailable(str(exc)) from None
            raise
        out = []
        for op, reply in zip(ops, replies, strict=True):
            if isinstance(reply, Exception):
                if _loading(reply):
                    raise StoreUnavailable(str(reply))
                raise reply
            out.append(_decode(op, reply))
        return out

    async def _pipeline(self, ops: Sequence[Op]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command("EVALSHA", *_args(op))
        return await pipe.execute(raise_on_error=False)

    async def wait_free(self, keys: Collection[str], timeout: float) -> bool:
        """Wait up to ``timeout`` s for a slot of one of ``keys`` to be given back anywhere."""
        channels = {f"{_keys(k)[0]}:free" for k in keys}
        async with self._listening:  # one reader of the subscription at a time
            return await self._wait_free(channels, timeout)

    async def _wait_free(self, channels: set[str], timeout: float) -> bool:
        try:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            pubsub = self._pubsub
            subscribed = {c.decode() if isinstance(c, bytes) else c for c in pubsub.channels}
            if new := channels - subscribed:
                await pubsub.subscribe(*new)
            ends = time.monotonic() + timeout
            while (left := ends - time.monotonic()) > 0:
                # None for a subscription's own answer (ignored) as for nothing at all
                message = await pubsub.get_message(timeout=left)
                if message is not None and message.get("type") == "message":
                    return True
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            await self._drop_pubsub()
            raise StoreUnavailable(_reason(exc)) from None
        return False

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def aclose(self) -> None:
        await self._drop_pubsub()
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _loading(exc: Exception) -> bool:
    """Redis answers LOADING while it reads its dump after a restart: not ready yet."""
    return "LOADING" in str(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.split(". ")[0] if len(text) > 160 else text
