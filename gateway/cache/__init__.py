"""The response cache: exact-match answers per account, stored in the configured store.

Entered from each route at one place (`ResponseCache.consult` before admission, `save` after a
miss); `gateway.cache.replay` turns a stored answer into the route's stream and a stream back
into a storable answer. docs/decisions/0019-cache-and-traces.md says why it works this way.
"""

from gateway.cache.service import HEADER, CachedAnswer, CacheStatus, Lookup, ResponseCache

__all__ = ["HEADER", "CacheStatus", "CachedAnswer", "Lookup", "ResponseCache"]
