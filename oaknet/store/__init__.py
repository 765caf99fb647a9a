"""The store port and its adapters; ``open_store(url)`` picks the adapter from the URL."""

from __future__ import annotations

from oaknet.store.base import DELETE, PUT, Change, Reader, Store, StoreBusy, StoreError, Tx

__all__ = [
    "DELETE",
    "PUT",
    "Change",
    "Reader",
    "Store",
    "StoreBusy",
    "StoreError",
    "Tx",
    "open_store",
]


def open_store(url: str, busy_timeout: float = 10.0, lease: float = 30.0) -> Store:
    """The store at ``url``: ``sqlite:///file.db``, ``mongodb://host/db`` or ``mongomock://x``."""
    if url.startswith("sqlite:"):
        from oaknet.store.sqlite import SQLiteStore

        path = url[len("sqlite:") :]
        if path.startswith("//"):
            # sqlite:///abs.db and sqlite:////abs.db both name /abs.db; sqlite:rel.db is relative.
            path = "/" + path.lstrip("/")
        if not path:
            raise StoreError("sqlite URL names no file")
        return SQLiteStore(path, busy_timeout=busy_timeout)
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from oaknet.store.mongo import MongoStore

        return MongoStore(url, busy_timeout=busy_timeout, lease=lease)
    raise StoreError(f"unsupported store URL scheme: {url.split(':', 1)[0]}")
