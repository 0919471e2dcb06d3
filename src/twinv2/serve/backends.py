"""Opening a life-cycle store by URL (the backends are imported only when chosen)."""

from __future__ import annotations

from twinv2.errors import ConfigError
from twinv2.serve.store import LifeCycleStore

__all__ = ["open_store"]


def open_store(url: str, cross_names: list[str], context: int) -> LifeCycleStore:
    """Open a store by URL: ``sqlite:///path/to/file.db`` (or a plain path) or ``redis://host:port/db``.

    Raises:
        ConfigError: an unknown scheme. StoreError: the store cannot be opened.
    """
    if url.startswith("redis://") or url.startswith("rediss://"):
        from twinv2.serve.redis_store import RedisStore

        return RedisStore(url, cross_names, context)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]  # sqlite:///abs/file.db -> /abs/file.db; sqlite://rel.db -> rel.db
        from twinv2.serve.sqlite_store import SqliteStore

        return SqliteStore(path or "twinv2-serve.db", cross_names, context)
    if "://" in url:
        raise ConfigError(f"--store {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")
    from twinv2.serve.sqlite_store import SqliteStore

    return SqliteStore(url, cross_names, context)
