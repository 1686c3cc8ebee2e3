"""Which shared-limits backend a URL names, checked at config load, opened by the engine.

``engine.limits_backend`` (or ``--limits-backend``) takes ``redis://HOST:PORT/DB``
(``rediss://`` with TLS, ``unix:///path/to/redis.sock?db=N``; a password as in
``redis://:PASSWORD@HOST:PORT/0``). The Ray executor names its own budgets actor with
``ray-actor://NAME``, for its workers only. Nothing here imports an extra: each store
imports its own when opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ..engine.errors import ConfigError
from ..engine.events import Listener, ignore

if TYPE_CHECKING:
    from .budgets import SharedLimits

REDIS_SCHEMES = ("redis", "rediss", "unix")
RAY_ACTOR_SCHEME = "ray-actor"


def check_backend_url(url: str, where: str) -> str:
    """Refuse, naming ``where``, what is not a Redis URL; the URL as it is otherwise."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL ({exc}): {shown_url(url)!r}") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            f"{where}: expected redis://HOST:PORT/DB (or rediss://, unix://), "
            f"got {shown_url(url)!r}"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ConfigError(f"{where}: the URL names no host: {shown_url(url)!r}")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ConfigError(f"{where}: the database must be a number, got {db!r}")
    return url


def shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<invalid URL>"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


async def open_backend(url: str, *, on_event: Listener = ignore, where: str = "") -> SharedLimits:
    """The :class:`SharedLimits` of ``url``, checked to answer now (else :class:`ConfigError`)."""
    from .budgets import SharedLimits, Store

    where = where or "engine.limits_backend"
    scheme = urlsplit(url).scheme
    store: Store
    if scheme == RAY_ACTOR_SCHEME:
        from .ray_run import ActorStore

        store = ActorStore(url.removeprefix(f"{RAY_ACTOR_SCHEME}://"))
    else:
        from .redis_store import RedisStore

        store = RedisStore(check_backend_url(url, where))
    return await SharedLimits(store, on_event=on_event).open(where)
