"""Persistent state behind one small interface: SQLite embedded (default) or Redis (shared)."""

from gateway.store.base import Account, ApiKey, Store, open_store

__all__ = ["Account", "ApiKey", "Store", "open_store"]
